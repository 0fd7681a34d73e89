"""Shape ops between quantized layers: flatten, the x.view(x.size(0), -1) idiom, reshape,
transpose/permute, squeeze/unsqueeze, Dropout and Identity passed through; PyTorch == golden
== the compiled library, bit for bit."""
import torch
import torch.nn as nn
import torch.ao.quantization as tq

from tests.fixtures_layers import check_bit_exact, quantized_script


class ShapeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv = nn.Conv2d(3, 6, 5)                  # 5x5 input → [1, 6, 1, 1]
        self.drop, self.ident = nn.Dropout(0.3), nn.Identity()
        self.fc = nn.Linear(6, 6)
        self.fc2 = nn.Linear(6, 5)

    def forward(self, x):
        x = self.drop(self.conv(self.quant(x)))
        x = x.view(x.size(0), -1)                       # [1, 6], sizes from shape arithmetic
        x = self.ident(self.fc(x))
        x = x.reshape(x.size(0), 2, 3).transpose(1, 2)  # [1, 3, 2]
        x = x.permute(0, 2, 1).unsqueeze(0).squeeze(0)  # [1, 2, 3]
        x = x.reshape(x.size(0), x.size(1) * x.size(2))
        return self.dequant(self.fc2(x))


def test_shape_ops(tmp_path):
    path = quantized_script(ShapeNet(), (1, 3, 5, 5), tmp_path / "shapes.pth")
    _, layers, _ = check_bit_exact(path)
    kinds = [type(layer).__name__ for layer in layers]
    assert kinds.count("Permute") == 2 and kinds.count("Reshape") >= 3
    assert "Dropout" not in kinds and "Identity" not in kinds


class PermutedChannels(nn.Module):
    """A transpose that moves data (not only a view): channels and width swapped before a conv."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv = nn.Conv2d(4, 3, 3)
        self.fc = nn.Linear(3 * 5 * 4, 2)

    def forward(self, x):                               # [1, 6, 7, 4]
        x = self.quant(x).transpose(1, 3)               # [1, 4, 7, 6]
        x = self.conv(x)                                # [1, 3, 5, 4]
        return self.dequant(self.fc(torch.flatten(x, 1)))


def test_transpose_that_moves_data(tmp_path):
    path = quantized_script(PermutedChannels(), (1, 6, 7, 4), tmp_path / "perm.pth")
    check_bit_exact(path)


class Block(nn.Module):
    """A user's container: conv-bn-relu, called twice with different inputs."""

    def __init__(self, channels):
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.stem = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU())
        self.block = Block(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 5 * 5, 3))

    def forward(self, x):
        x = self.stem(self.quant(x))
        x = self.block(self.block(x))
        return self.dequant(self.head(x))


def test_nested_containers_are_walked(tmp_path):
    path = quantized_script(Nested(), (1, 2, 7, 7), tmp_path / "nested.pth",
                            fuse=[("stem.0", "stem.1"), ("block.conv", "block.bn", "block.relu")])
    _, layers, _ = check_bit_exact(path)
    names = [getattr(layer, "name", "") for layer in layers]
    assert names.count("block.conv") == 2 and "stem.0" in names and "head.1" in names


class ShuffleBlock(nn.Module):
    """ShuffleNet's moves: chunk the channels, convolve one half, join them with cat and
    shuffle the channels (view into groups, transpose, view back); narrow and split too."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.cat = nn.quantized.FloatFunctional()
        self.fc = nn.Linear(6 * 5 * 6, 3)

    def forward(self, x):
        x = self.stem(self.quant(x))
        left, right = x.chunk(2, dim=1)
        x = self.cat.cat([left, self.branch(right)], 1)
        b, c, h, w = x.size()
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
        first, second = torch.split(x, [5, 3], dim=1)
        x = torch.narrow(first, 1, 1, 4)[:, :, :, 1:]
        x = torch.flatten(torch.cat([x, second[:, :2, :, 1:]], 1), 1)
        return self.dequant(self.fc(x))


def test_channel_split_shuffle_and_slices(tmp_path):
    path = quantized_script(ShuffleBlock(), (1, 3, 5, 7), tmp_path / "shuffle.pth")
    _, layers, _ = check_bit_exact(path)
    assert [type(layer).__name__ for layer in layers].count("Slice") >= 6
