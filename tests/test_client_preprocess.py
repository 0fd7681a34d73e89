"""utils.preprocess: drawings and image files become MNIST-like 28×28 uint8 digits."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from utils.data import mnist_arrays
from utils.preprocess import PreprocessError, load_image_file, to_mnist


def ink_box(image):
    rows = np.flatnonzero(image.any(axis=1))
    cols = np.flatnonzero(image.any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def center_of_mass(image):
    image = image.astype(np.float64)
    rows, cols = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    return (image * rows).sum() / image.sum(), (image * cols).sum() / image.sum()


def drawn_seven(size=280, ink=255, paper=0, width=18, offset=(0, 0)):
    """A '7' drawn like the UI's canvas does: thick round strokes, off centre."""
    image = Image.new("L", (size, size), paper)
    draw = ImageDraw.Draw(image)
    dx, dy = offset
    points = [(60 + dx, 50 + dy), (200 + dx, 50 + dy), (110 + dx, 250 + dy)]
    draw.line(points, fill=ink, width=width, joint="curve")
    for x, y in points:
        draw.ellipse((x - width // 2, y - width // 2, x + width // 2, y + width // 2), fill=ink)
    return image


@pytest.fixture(scope="module")
def test_digits():
    images, labels = mnist_arrays(train=False)
    return images[:60], labels[:60]


def test_mnist_geometry_for_a_drawing():
    digit = to_mnist(drawn_seven(offset=(40, -30)))
    assert digit.dtype == np.uint8 and digit.shape == (28, 28)
    assert max(ink_box(digit)) == 20
    row, col = center_of_mass(digit)
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5
    assert digit.max() == 255
    # background is exactly zero, like MNIST
    assert digit[0].max() == 0 and digit[:, 0].max() == 0


def test_position_on_the_canvas_does_not_matter():
    a = to_mnist(drawn_seven(offset=(-40, -20)))
    b = to_mnist(drawn_seven(offset=(50, 20)))
    assert np.abs(a.astype(int) - b).max() <= 1


def test_polarity_and_transparency_are_detected():
    white_ink = to_mnist(drawn_seven(ink=255, paper=0))
    black_ink = to_mnist(drawn_seven(ink=0, paper=255))
    assert np.array_equal(white_ink, black_ink)
    # a dark stroke on a transparent sheet (what many drawing apps save)
    alpha = np.asarray(drawn_seven(ink=255, paper=0))
    rgba = np.zeros((280, 280, 4), np.uint8)
    rgba[..., 3] = alpha
    assert np.abs(to_mnist(rgba).astype(int) - white_ink).max() <= 1
    # blue ink on white paper, as a colour photo would have
    rgb = np.full((280, 280, 3), 255, np.uint8)
    rgb[alpha > 0] = (20, 40, 160)
    assert np.abs(to_mnist(rgb).astype(int) - white_ink).max() <= 2


def test_aspect_ratio_is_kept():
    bar = np.zeros((280, 280), np.uint8)
    bar[130:150, 40:240] = 255  # 200 wide, 20 tall
    digit = to_mnist(bar)
    height, width = ink_box(digit)
    assert width == 20 and height in (2, 3)


def test_mnist_digits_survive_a_photo_like_round_trip(tmp_path, test_digits):
    """Upscale MNIST digits 10×, print them dark on grey noisy paper, save as JPEG, read back."""
    images, _ = test_digits
    rng = np.random.default_rng(0)
    correlations = []
    for index, original in enumerate(images):
        big = np.asarray(Image.fromarray(original).resize((280, 280), Image.Resampling.BILINEAR),
                         np.float32)
        paper = 200 + rng.normal(0, 6, big.shape)
        photo = np.clip(paper - big * (170 / 255), 0, 255).astype(np.uint8)
        path = tmp_path / f"digit{index}.jpg"
        Image.fromarray(photo).save(path, quality=85)
        digit = load_image_file(path)
        assert max(ink_box(digit)) in (19, 20)
        row, col = center_of_mass(digit)
        assert abs(row - 14) <= 0.75 and abs(col - 14) <= 0.75
        correlations.append(np.corrcoef(digit.ravel(), original.ravel())[0, 1])
    # thin '1's lose correlation to a one-pixel shift; the average stays high
    assert np.mean(correlations) > 0.9, np.mean(correlations)


def test_png_file_equals_the_array(tmp_path):
    image = drawn_seven(ink=0, paper=255)
    image.save(tmp_path / "seven.png")
    assert np.array_equal(load_image_file(tmp_path / "seven.png"), to_mnist(image))


def test_blank_and_unreadable_inputs_give_one_line_errors(tmp_path):
    with pytest.raises(PreprocessError, match="blank"):
        to_mnist(np.zeros((280, 280), np.uint8))
    with pytest.raises(PreprocessError, match="blank"):
        to_mnist(np.full((50, 50, 3), 255, np.uint8))
    fake = tmp_path / "notes.png"
    fake.write_text("this is not a picture\n")
    with pytest.raises(PreprocessError) as info:
        load_image_file(fake)
    assert "notes.png" in str(info.value) and "\n" not in str(info.value)
    truncated = tmp_path / "cut.png"
    drawn_seven().save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(PreprocessError) as info:
        load_image_file(truncated)
    assert "cut.png" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(PreprocessError, match="not found"):
        load_image_file(tmp_path / "missing.jpg")


@pytest.mark.parametrize("side", [10000, 15000])
def test_images_past_pillows_pixel_limit_are_refused(tmp_path, side):
    """Past Image.MAX_IMAGE_PIXELS Pillow warns (10000²) and past twice it raises (15000²);
    both are one line here, before gigabytes of float copies. 1-bit PNGs: small on disk."""
    huge = tmp_path / "huge.png"
    Image.new("1", (side, side)).save(huge)
    with pytest.raises(PreprocessError, match=r"huge\.png has more than [\d,]+ pixels.*"
                                              r"scale it down"):
        load_image_file(huge)
