"""Which networks the zoo holds, and how each gets its int8 weights."""
from dataclasses import dataclass

from utils import paths
from utils.model import MnistModel
from utils.qmodel import QMnistModel
from utils.zoo.models import (DSCNN, FCAutoencoder, MnistResidual, MnistSeparable,
                              MobileNetV1, ResNet8)

MNIST_SHAPE = (1, 1, 28, 28)
# where `python3 -m utils.zoo` keeps its weights (--quick: under QUICK_DIR), for every user
WEIGHTS_DIR = paths.WEIGHTS_DIR / "zoo"
QUICK_DIR = paths.BUILD_DIR / "zoo-quick"
QUICK_WEIGHTS_DIR = QUICK_DIR / "weights"


@dataclass(frozen=True)
class Entry:
    name: str
    network: type
    recipe: str            # "stage" (a stage script's file, else the zoo trains it), "qat", "ptq"
    inputs: str            # what it is verified on: "mnist" or "synthetic"
    input_shape: tuple
    stage_file: object = None   # the stage's int8 TorchScript the zoo reuses when present
    about: str = ""


ZOO = [
    Entry("lenet5", QMnistModel, "stage", "mnist", MNIST_SHAPE, paths.QAT_MODEL,
          "LeNet-5 (utils.qmodel), QAT as 0103 does"),
    Entry("mnist_cnn", MnistModel, "stage", "mnist", MNIST_SHAPE,
          paths.WEIGHTS_DIR / "mnist_cnn_quant_scripted_int8.pth",
          "PyTorch examples/mnist CNN (utils.model), PTQ as 0102 does"),
    Entry("mnist_separable", MnistSeparable, "qat", "mnist", MnistSeparable.input_shape,
          about="depthwise-separable, Hardswish, global average pooling"),
    Entry("mnist_residual", MnistResidual, "qat", "mnist", MnistResidual.input_shape,
          about="residual add_relu and add, two branches joined by cat"),
    Entry("ds_cnn", DSCNN, "ptq", "synthetic", DSCNN.input_shape,
          about="MLPerf Tiny keyword spotting DS-CNN, 49x10x1 → 12"),
    Entry("resnet8", ResNet8, "ptq", "synthetic", ResNet8.input_shape,
          about="MLPerf Tiny image classification ResNet-8, 32x32x3 → 10"),
    Entry("mobilenet_v1_025", MobileNetV1, "ptq", "synthetic", MobileNetV1.input_shape,
          about="MLPerf Tiny visual wake words MobileNetV1 0.25, 96x96x3 → 2"),
    Entry("fc_autoencoder", FCAutoencoder, "ptq", "synthetic", FCAutoencoder.input_shape,
          about="MLPerf Tiny anomaly detection FC autoencoder, 640 → 640"),
]
BY_NAME = {entry.name: entry for entry in ZOO}
MLPERF = ["ds_cnn", "resnet8", "mobilenet_v1_025", "fc_autoencoder"]

