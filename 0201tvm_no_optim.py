"""Stage 0201: compile the model with Apache TVM 0.27 into a standalone C library with
microTVM's AOT API (tvmgen_default_run), packed in Model Library Format — and prove it
bit-exact with PyTorch on the MNIST test set.

int8 TorchScript (0103 / 0102) → layer records (utils/aot/layers) → Relax → TIR kernels
with the generic backend's MCU schedule (no workspace) → C, plus our AOT glue on one static
arena → MLF tar. fp32 models go through torch.export and TVM's frontend.

The stage then compiles the tar's C with the host gcc, runs the test images through it and
compares with PyTorch (int8: uint8 logits identical on every image; fp32: |diff| <= 1e-4;
both: same digit), cross-compiles it for the Cortex-M7 (sizes, `nm -u`), and writes
reports/0201tvm_no_optim.json. The tar is put in place only when all of that passes.
"""
from utils.cli import run

STAGE = "0201tvm_no_optim"


def main(argv=None):
    # deferred so that --help and argument errors answer without importing TVM and torch
    from utils.aot.backends.generic import GENERIC
    from utils.aot.stage import run_stage
    return run_stage(STAGE, argv, __doc__.split("\n\n")[0], GENERIC)


if __name__ == "__main__":
    run(main)
