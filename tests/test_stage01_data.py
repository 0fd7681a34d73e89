"""MNIST as the stages see it: the known labels and counts, the pixel/255 contract, no network."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from utils import data
from utils.paths import ROOT
from utils.train import images_to_tensor, mnist_loader, subset_indices


def test_known_labels_and_test_histogram():
    train_x, train_y = data.mnist_arrays(True)
    test_x, test_y = data.mnist_arrays(False)
    assert train_x.shape == (60000, 28, 28) and train_x.dtype == np.uint8
    assert test_x.shape == (10000, 28, 28) and test_x.dtype == np.uint8
    assert list(train_y[:5]) == [5, 0, 4, 1, 9]
    assert list(test_y[:5]) == [7, 2, 1, 0, 4]
    assert list(np.bincount(test_y, minlength=10)) == data.EXPECTED_TEST_COUNTS
    assert np.bincount(train_y, minlength=10).sum() == 60000
    # real images: dark background, bright strokes, the full 0..255 range used
    assert train_x.min() == 0 and train_x.max() == 255
    assert 0.10 < train_x.mean() / 255 < 0.16


def test_loader_gives_torchvision_tensors():
    """Our in-memory loader gives exactly what torchvision's MNIST + ToTensor gives."""
    dataset = data.mnist_dataset(train=False)
    x_tv, y_tv = dataset[0]
    x, y = next(iter(mnist_loader(False, batch_size=4)))
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x[0], x_tv) and int(y[0]) == y_tv == 7
    images, _ = data.mnist_arrays(False)
    assert torch.equal(images_to_tensor(images[:4]), x)


def test_quick_subset_is_fixed_and_sorted():
    a = subset_indices(10000, 2000, seed=1)
    assert np.array_equal(a, subset_indices(10000, 2000, seed=1))
    assert len(np.unique(a)) == 2000 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, subset_indices(10000, 2000, seed=2))
    assert np.array_equal(subset_indices(10, None), np.arange(10))


def test_no_network_after_setup():
    """With every socket connection refused, fetch() finds the cache and MNIST loads."""
    code = """
import socket
def refuse(*args, **kwargs):
    raise OSError("network used after set-up")
socket.socket.connect = refuse
socket.create_connection = refuse
from utils import data
assert data.fetch() == "cached", data.fetch()
from torchvision.datasets import MNIST
train = MNIST(str(data.DATA_DIR), train=True, download=False)
test = MNIST(str(data.DATA_DIR), train=False, download=False)
assert len(train) == 60000 and len(test) == 10000
assert int(test.targets[0]) == 7
data.check()
print("offline ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "offline ok" in proc.stdout


def test_missing_dataset_names_the_fetch_command(tmp_path):
    with pytest.raises(data.DatasetMissing, match=r"python -m utils\.data"):
        data.mnist_arrays(False, root=tmp_path)
