"""Stage 0202: compile the model like 0201 with the Cortex-M backend: fast and small int8
inference, bit-identical to 0201's library.

int8 (0103 / 0102): groups of layers become hand-scheduled TIR kernels (convolution, ReLU
and max-pool fused, the max taken on the int32 sums before one requantization) whose inner
tiles call DSP micro-kernels (__smlad and friends, ACLE) through T.call_extern, with a plain-C
fallback for targets without the DSP extension; utils/aot/backends/cortex_m says which.
Weights stay int8; the library asks for -O2 (metadata.json cflags). fp32: 0201's path with
Relax rewrites and TIR schedule rules for the Cortex-M's scalar FPU.

The stage verifies the library against PyTorch as 0201 does, and against 0201's own library
of the same model on the same images (the same bits), then writes the tar (the one the
firmware builds, by default) and reports/0202tvm_optim.json. Speed and size on the emulated
Cortex-M7: bench/bench.py.
"""
from utils.cli import run

STAGE = "0202tvm_optim"


def main(argv=None):
    # deferred so that --help and argument errors answer without importing TVM and torch
    from utils.aot.backends.cortex_m import CORTEX_M
    from utils.aot.stage import run_stage
    return run_stage(STAGE, argv, __doc__.split("\n\n")[0], CORTEX_M)


if __name__ == "__main__":
    run(main)
