"""Stage 0202: compile the model like 0201, with schedules written for the Cortex-M: fast
and small int8 inference, bit-identical to 0201's library.

int8 (0103 / 0102): each layer group is one hand-scheduled TIR kernel: the input quantized
straight into the padded channels-last buffer conv1 reads; conv + bias + ReLU + 2x2 max-pool
fused (the max taken on the int32 sums, then one requantization); the fully connected layers
and the dequantization in one kernel. Tiles of 2 pixels x 2 channels (convolutions) and 4
channels (fully connected) call DSP micro-kernels (__uxtb16/__sxtb16 + __smlad, ACLE) through
T.call_extern, with a plain-C fallback for targets without the DSP extension. Activations
stay uint8 and weights int8; the library asks for -O2 (metadata.json cflags).
fp32: 0201's path with extra TIR schedule rules (utils/aot/optim/schedule.py).

The stage verifies the library against PyTorch as 0201 does, and against 0201's own library
of the same model on the same images (int8: the same bits), then writes the tar (the one the
firmware builds, by default) and reports/0202tvm_optim.json. Speed and size on the emulated
Cortex-M7: bench/bench.py.
"""
from utils.cli import run

STAGE = "0202tvm_optim"


def main(argv=None):
    from utils.aot.stage import run_stage
    return run_stage(STAGE, argv, __doc__.split("\n\n")[0], optim=True)


if __name__ == "__main__":
    run(main)
