"""The zoo's networks in PyTorch, ready for torch.ao eager int8: QuantStub/DeQuantStub around
the body, FloatFunctional for every add and cat, conv → BatchNorm → activation triples that
`fusable_groups` hands to torch's fuser.

The MLPerf Tiny ones copy the layers and sizes of github:mlcommons/tiny benchmark/training/*
(Keras), so `count_macs` gives the reference models' MACs (REFERENCE_MACS). Keras 'same'
padding becomes explicit PyTorch padding; where TF pads asymmetrically (stride 2 on an even
input, or an even kernel) PyTorch cannot, so we pad symmetrically by the larger side: same
output size and MACs, the window grid shifted by one input row/column (see `same_padding`).
"""
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import DeQuantStub, QuantStub


# The MACs of the MLPerf Tiny reference models (conv: output elements x in/groups x kh x kw,
# dense: in x out; pooling, BatchNorm and activations not counted).
REFERENCE_MACS = {
    "ds_cnn": 2_656_768,
    "resnet8": 12_501_632,
    "mobilenet_v1_025": 7_489_664,
    "fc_autoencoder": 264_192,
}


def same_padding(kernel: int) -> int:
    """PyTorch padding (both sides) with TF 'same''s output size ceil(in / stride), for the odd
    square kernels of the zoo (an even kernel is given explicitly, see DSCNN).

    TF pads pad_total = (out - 1) * stride + kernel - in, the smaller half before. At stride 1
    that is kernel - 1, split evenly: identical. At stride 2 on an even input a 3x3 has
    pad_total 1, which TF puts below/right only; PyTorch pads 1 on both sides, gets the same
    output size (the extra row after the input is never reached), and its windows start one
    row (column) earlier. A 1x1 at stride 2 has no padding in either."""
    if kernel % 2 != 1:
        raise ValueError(f"same_padding takes odd kernels, got {kernel}")
    return kernel // 2


class ConvBn(nn.Sequential):
    """Conv2d → BatchNorm2d → activation (or none), named for the fuser: conv, bn, act."""

    def __init__(self, cin, cout, kernel, stride=1, padding=None, groups=1, act=nn.ReLU):
        layers = [("conv", nn.Conv2d(cin, cout, kernel, stride,
                                     same_padding(kernel) if padding is None else padding,
                                     groups=groups)),
                  ("bn", nn.BatchNorm2d(cout))]
        if act is not None:
            layers.append(("act", act()))
        super().__init__(OrderedDict(layers))


class LinearBn(nn.Sequential):
    """Linear → BatchNorm1d → ReLU (the autoencoder's Dense → BatchNormalization → relu)."""

    def __init__(self, cin, cout):
        super().__init__(OrderedDict([("fc", nn.Linear(cin, cout)), ("bn", nn.BatchNorm1d(cout)),
                               ("act", nn.ReLU())]))


def separable(cin, cout, stride=1, act=nn.ReLU):
    """Keras DepthwiseConv2D(3x3) → BN → act, Conv2D(1x1) → BN → act."""
    return nn.Sequential(ConvBn(cin, cin, 3, stride, groups=cin, act=act), ConvBn(cin, cout, 1, act=act))


def fusable_groups(model):
    """torch.ao fuse_modules groups, as two lists applied one after the other: torch fuses
    conv+bn(+relu) and linear+bn, linear+relu, but has no linear+bn+relu pattern, so the
    second pass puts the ReLU into the Linear that already holds the BatchNorm."""
    first, second = [], []
    for name, module in model.named_modules():
        if isinstance(module, (ConvBn, LinearBn)):
            head = "conv" if isinstance(module, ConvBn) else "fc"
            act = getattr(module, "act", None)
            if isinstance(module, LinearBn):
                first.append([f"{name}.fc", f"{name}.bn"])
                second.append([f"{name}.fc", f"{name}.act"])
            elif isinstance(act, nn.ReLU):
                first.append([f"{name}.{head}", f"{name}.bn", f"{name}.act"])
            else:  # Hardswish or none: torch has no conv+bn+hardswish module
                first.append([f"{name}.{head}", f"{name}.bn"])
    return [group for group in (first, second) if group]


# ----------------------------------------------------------------------------- MLPerf Tiny

class DSCNN(nn.Module):
    """Keyword spotting, keyword_spotting/keras_model.py 'ds_cnn': 49x10 MFCC → 12 classes."""
    input_shape = (1, 1, 49, 10)

    def __init__(self, filters=64, classes=12):
        super().__init__()
        self.quant = QuantStub()
        # Conv2D(64, (10,4), strides 2, 'same') on 49x10: TF pads rows 4 above / 5 below and
        # columns 1 / 1 → 25x5; symmetric (5, 1) gives 25x5 too, its windows one row higher.
        self.conv1 = ConvBn(1, filters, (10, 4), 2, padding=(5, 1))
        self.drop1 = nn.Dropout(0.2)
        self.blocks = nn.Sequential(*[separable(filters, filters) for _ in range(4)])
        self.drop2 = nn.Dropout(0.4)
        # AveragePooling2D(pool_size=(int(49/2), int(10/2))) = 24x5 over the 25x5 map, valid
        # padding: one 1x1 output that leaves out the last row, as the reference does.
        self.pool = nn.AvgPool2d((24, 5))
        self.fc = nn.Linear(filters, classes)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.drop1(self.conv1(self.quant(x)))
        x = self.pool(self.drop2(self.blocks(x)))
        x = self.dequant(self.fc(torch.flatten(x, 1)))
        return F.softmax(x, dim=1)


class ResidualStack(nn.Module):
    """One stack of resnet_v1_eembc: two 3x3 convs, the identity or a 1x1 stride-2 conv (no
    BatchNorm, as in the reference) beside them, add, ReLU."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = ConvBn(cin, cout, 3, stride)
        self.conv2 = ConvBn(cout, cout, 3, act=None)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride) if stride != 1 else nn.Identity()
        self.add = FloatFunctional()

    def forward(self, x):
        return self.add.add_relu(self.shortcut(x), self.conv2(self.conv1(x)))


class ResNet8(nn.Module):
    """Image classification, image_classification/keras_model.py resnet_v1_eembc with 16
    filters, as the file had them before the count became an argument (mlcommons/tiny 9adec29,
    default 26 since); 16 is the reference ResNet-8's MACs: 32x32x3 → 10 classes."""
    input_shape = (1, 3, 32, 32)

    def __init__(self, filters=16, classes=10):
        super().__init__()
        self.quant = QuantStub()
        self.stem = ConvBn(3, filters, 3)
        self.stacks = nn.Sequential(ResidualStack(filters, filters, 1),
                                    ResidualStack(filters, 2 * filters, 2),
                                    ResidualStack(2 * filters, 4 * filters, 2))
        self.pool = nn.AvgPool2d(8)
        self.fc = nn.Linear(4 * filters, classes)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.pool(self.stacks(self.stem(self.quant(x))))
        x = self.dequant(self.fc(torch.flatten(x, 1)))
        return F.softmax(x, dim=1)


# (out channels, stride) of the 13 depthwise-separable layers of mobilenet_v1 at alpha 0.25
MOBILENET_V1_025 = [(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2)] + [(128, 1)] * 5 + [(256, 2), (256, 1)]


class MobileNetV1(nn.Module):
    """Visual wake words, visual_wake_words/vww_model.py mobilenet_v1 (alpha 0.25, ReLU as
    the reference has, not Keras's ReLU6): 96x96x3 → 2 classes."""
    input_shape = (1, 3, 96, 96)

    def __init__(self, filters=8, classes=2):
        super().__init__()
        self.quant = QuantStub()
        self.stem = ConvBn(3, filters, 3, 2)
        layers, cin = [], filters
        for cout, stride in MOBILENET_V1_025:
            layers.append(separable(cin, cout, stride))
            cin = cout
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(3)
        self.fc = nn.Linear(cin, classes)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.pool(self.blocks(self.stem(self.quant(x))))
        x = self.dequant(self.fc(torch.flatten(x, 1)))
        return F.softmax(x, dim=1)


class FCAutoencoder(nn.Module):
    """Anomaly detection, anomaly_detection/keras_model.py: 640 log-mel values → 640, no
    final activation (the output is the dequantized reconstruction)."""
    input_shape = (1, 640)

    def __init__(self, dims=(640, 128, 128, 128, 128, 8, 128, 128, 128, 128)):
        super().__init__()
        self.quant = QuantStub()
        self.body = nn.Sequential(*[LinearBn(a, b) for a, b in zip(dims, dims[1:])])
        self.out = nn.Linear(dims[-1], dims[0])
        self.dequant = DeQuantStub()

    def forward(self, x):
        return self.dequant(self.out(self.body(self.quant(x))))


# ----------------------------------------------------------------------------- MNIST

class MnistSeparable(nn.Module):
    """Depthwise-separable MNIST network: a 3x3 stem, four separable layers with Hardswish
    (two of them at stride 2), global average pooling, one Linear. 28x28 → 10 log-probabilities."""
    input_shape = (1, 1, 28, 28)

    def __init__(self, width=24):
        super().__init__()
        self.quant = QuantStub()
        self.stem = ConvBn(1, width, 3)
        self.blocks = nn.Sequential(separable(width, 2 * width, 2, nn.Hardswish),
                                    separable(2 * width, 2 * width, 1, nn.Hardswish),
                                    separable(2 * width, 4 * width, 2, nn.Hardswish),
                                    separable(4 * width, 4 * width, 1, nn.Hardswish))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, 10)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.pool(self.blocks(self.stem(self.quant(x))))
        x = self.dequant(self.fc(torch.flatten(x, 1)))
        return F.log_softmax(x, dim=1)


class MnistResidual(nn.Module):
    """Residual MNIST network: stem and max-pool, a block joined by add_relu, two branches
    (1x1 and 3x3) joined by cat, a stride-2 conv, a block joined by a plain add and a ReLU,
    one Linear. 28x28 → 10 log-probabilities."""
    input_shape = (1, 1, 28, 28)

    def __init__(self, width=16):
        super().__init__()
        self.quant = QuantStub()
        self.stem = ConvBn(1, width, 3)
        self.pool = nn.MaxPool2d(2)
        self.res1 = nn.Sequential(ConvBn(width, width, 3), ConvBn(width, width, 3, act=None))
        self.add1 = FloatFunctional()
        self.branch1 = ConvBn(width, width, 1)
        self.branch3 = ConvBn(width, width, 3)
        self.cat = FloatFunctional()
        self.down = ConvBn(2 * width, 2 * width, 3, 2)
        self.res2 = nn.Sequential(ConvBn(2 * width, 2 * width, 3), ConvBn(2 * width, 2 * width, 3, act=None))
        self.add2 = FloatFunctional()
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2 * width * 7 * 7, 10)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.pool(self.stem(self.quant(x)))
        x = self.add1.add_relu(x, self.res1(x))
        x = self.cat.cat([self.branch1(x), self.branch3(x)], dim=1)
        x = self.down(x)
        x = self.relu(self.add2.add(x, self.res2(x)))
        x = self.dequant(self.fc(torch.flatten(x, 1)))
        return F.log_softmax(x, dim=1)


# ----------------------------------------------------------------------------- MACs

def count_macs(model: nn.Module, input_shape=None) -> int:
    """Multiply-accumulates of one forward pass of a float model: every Conv1d/Conv2d adds
    output elements x (in channels / groups) x kernel size, every Linear in x out (per row).
    Runs the model once on zeros, in eval mode, with forward hooks."""
    shape = input_shape or model.input_shape
    total = [0]

    def conv(module, _inputs, output):
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        total[0] += output.numel() * (module.in_channels // module.groups) * kernel

    def linear(module, _inputs, output):
        total[0] += (output.numel() // module.out_features) * module.in_features * module.out_features

    hooks = []
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            hooks.append(module.register_forward_hook(conv))
        elif isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(linear))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(shape))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return total[0]
