"""Turn a drawing or a photo of a digit into what the board expects: a 28×28 uint8 MNIST image.

MNIST's own recipe (LeCun et al.): the digit's bounding box is scaled to fit 20×20 keeping its
aspect ratio (with anti-aliasing, so grey edges), then placed in a 28×28 field so that its centre
of mass sits at the centre. Measured on the MNIST test set: every digit's ink box is 20 pixels on
its longer side and the centre of mass is at (14.0, 14.0) in pixel-index coordinates with a
spread of ±0.29, i.e. an integer shift — that is what `center_by_mass` reproduces.

Ink is bright (255) on a dark background (0), as in MNIST. Inputs of any polarity are accepted:
a light background (paper, a white canvas) is detected from the image border and inverted.
"""
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.cli import one_line

SIZE = 28
BOX = 20
CENTER = 14.0
# Pixels at or under this fraction of the brightest ink are background (JPEG ringing, faint
# smudges): they neither grow the bounding box nor pull the centre of mass.
NOISE_FRACTION = 0.1
# ...and so are pixels within this many standard deviations of the paper's own grain,
# measured on the border (a photo of paper is never flat).
NOISE_SIGMAS = 5.0


class PreprocessError(ValueError):
    """An image that cannot become a digit; the message is one line for the user."""


def to_gray(image) -> np.ndarray:
    """Any PIL image or array (H×W, H×W×3, H×W×4) → float32 H×W in 0..255.

    Transparent pixels count as background: they are composited over the colour of the
    opaque ones' opposite, i.e. over white (drawings on a transparent sheet are dark ink).
    """
    if isinstance(image, Image.Image):
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
        elif image.mode not in ("L", "RGB", "F", "I", "I;16"):
            image = image.convert("RGB")
        array = np.asarray(image)
    else:
        array = np.asarray(image)
    array = array.astype(np.float32)
    if array.ndim not in (2, 3):
        raise PreprocessError(f"expected a 2-D grey or 3-D colour image, got shape {array.shape}")
    if array.ndim == 3:
        channels = array.shape[2]
        if channels == 4 or channels == 2:
            alpha = array[..., -1:] / 255.0
            color = array[..., :-1]
            array = color * alpha + 255.0 * (1.0 - alpha)
            channels -= 1
        if channels == 3:
            # ITU-R 601 luma, as PIL's convert("L")
            array = array[..., 0] * 0.299 + array[..., 1] * 0.587 + array[..., 2] * 0.114
        elif channels == 1:
            array = array[..., 0]
        else:
            raise PreprocessError(f"cannot read an image with {array.shape[2]} channels")
    if array.size and array.max() > 255.0:  # 16-bit greyscale files
        array = array * (255.0 / 65535.0)
    return array


def border_pixels(gray: np.ndarray) -> np.ndarray:
    """The two outermost rings of pixels: where a centred digit's paper shows."""
    return np.concatenate([gray[:2, :].ravel(), gray[-2:, :].ravel(),
                           gray[:, :2].ravel(), gray[:, -2:].ravel()])


def background_level(gray: np.ndarray) -> float:
    """The background's brightness, taken as the median of the border."""
    return float(np.median(border_pixels(gray)))


def ink_image(gray: np.ndarray) -> np.ndarray:
    """Bright ink on a zero background, 0..255 float, whatever the input's polarity."""
    if background_level(gray) > 127.5:
        gray = 255.0 - gray
    border = border_pixels(gray)
    background = float(np.median(border))
    grain = 1.4826 * float(np.median(np.abs(border - background)))  # robust sigma
    ink = gray - background
    peak = float(ink.max()) if ink.size else 0.0
    if peak <= NOISE_SIGMAS * grain or peak <= 0.0:
        raise PreprocessError("the image is blank: no ink to recognise")
    ink[ink <= max(NOISE_FRACTION * peak, NOISE_SIGMAS * grain)] = 0.0
    return np.clip(ink * (255.0 / peak), 0.0, 255.0)


def bounding_box(ink: np.ndarray):
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def fit_box(ink: np.ndarray, box: int = BOX) -> np.ndarray:
    """Crop to the ink's bounding box and scale it so its longer side is `box` pixels."""
    top, bottom, left, right = bounding_box(ink)
    crop = ink[top:bottom, left:right]
    height, width = crop.shape
    scale = box / max(height, width)
    new_h = max(1, min(box, int(round(height * scale))))
    new_w = max(1, min(box, int(round(width * scale))))
    # Lanczos on a float image: anti-aliased edges like MNIST's, no clipping inside the filter
    resized = Image.fromarray(crop.astype(np.float32), mode="F").resize(
        (new_w, new_h), Image.Resampling.BILINEAR)
    out = np.clip(np.asarray(resized), 0.0, 255.0)
    peak = out.max()
    return out * (255.0 / peak) if peak > 0 else out


def center_by_mass(digit: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Place `digit` in a size×size field with its centre of mass at pixel (14, 14)."""
    height, width = digit.shape
    total = digit.sum()
    rows, cols = np.mgrid[0:height, 0:width]
    com_row = (digit * rows).sum() / total
    com_col = (digit * cols).sum() / total
    top = int(round(CENTER - com_row))
    left = int(round(CENTER - com_col))
    # keep the whole digit inside the field (a very lopsided stroke could push it out)
    top = min(max(top, 0), size - height)
    left = min(max(left, 0), size - width)
    field = np.zeros((size, size), np.float32)
    field[top:top + height, left:left + width] = digit
    return field


def to_mnist(image) -> np.ndarray:
    """A PIL image or an array of any polarity → uint8 [28, 28], ink 255 on background 0."""
    gray = to_gray(image)
    if gray.shape[0] < 2 or gray.shape[1] < 2:
        raise PreprocessError(f"the image is too small ({gray.shape[1]}×{gray.shape[0]} pixels)")
    ink = ink_image(gray)
    field = center_by_mass(fit_box(ink))
    return np.rint(field).astype(np.uint8)


def load_image_file(path) -> np.ndarray:
    """Read a PNG/JPEG (anything Pillow reads) and convert it like MNIST.

    Raises PreprocessError with a one-line message for a missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise PreprocessError(f"image file not found: {path}")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; either way the float copies
            # of such an image take gigabytes, for a digit that needs a few hundred pixels
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return to_mnist(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PreprocessError(f"{path} has more than {Image.MAX_IMAGE_PIXELS:,} pixels, too many "
                              f"to read safely; scale it down (a digit needs a few hundred "
                              f"pixels a side)") from None
    except UnidentifiedImageError:
        raise PreprocessError(f"not an image Pillow can read: {path}") from None
    except PreprocessError as exc:
        raise PreprocessError(f"{path}: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise PreprocessError(f"cannot read image {path}: {one_line(exc)}") from None
