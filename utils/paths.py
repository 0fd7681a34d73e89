"""Where the project keeps its files; every stage and test takes paths from here."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "data"
WEIGHTS_DIR = ROOT / "weights"
# Tests point this elsewhere (TINYML_REPORTS_DIR) so quick runs never overwrite real figures.
REPORTS_DIR = Path(os.environ.get("TINYML_REPORTS_DIR", ROOT / "reports"))
BUILD_DIR = ROOT / "build"
MLF_TAR = ROOT / "pkg" / "mnistCNN" / "mnistCNN.tar"
FP32_MODEL = WEIGHTS_DIR / "mnist_cnn.pth"
PTQ_MODEL = WEIGHTS_DIR / "mnist_cnn_quant.pth"
QAT_MODEL = WEIGHTS_DIR / "qmnist_lenet5_scripted_int8.pth"
# the float LeNet-5 that 0103 trains before QAT (the fp32 variant of the benchmark)
LENET5_FP32_MODEL = WEIGHTS_DIR / "qmnist_lenet5_fp32.pth"
