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
import argparse
import os
import time
from pathlib import Path

from utils import paths
from utils.cli import run

STAGE = "0202tvm_optim"
QUICK_IMAGES = 1000


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, default=paths.QAT_MODEL,
                        help="int8 TorchScript, or fp32 state_dict/TorchScript of MnistModel or QMnistModel")
    parser.add_argument("--kind", choices=["auto", "int8", "fp32"], default="auto",
                        help="what --model must be (auto: whatever it is)")
    parser.add_argument("--out", type=Path, default=paths.MLF_TAR, help="the Model Library Format tar to write")
    parser.add_argument("--images", type=int, default=10000,
                        help="MNIST test images to verify on (all 10 000 by default)")
    parser.add_argument("--build-dir", type=Path, default=None,
                        help="where host builds are cached (default build/host-lib)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image subset when --images < 10000")
    parser.add_argument("--quick", action="store_true",
                        help=f"tests: verify on {QUICK_IMAGES} images unless --images says otherwise")
    args = parser.parse_args(argv)
    if args.quick and args.images == parser.get_default("images"):
        args.images = QUICK_IMAGES
    if not 1 <= args.images <= 10000:
        parser.error("--images must be between 1 and 10000")
    return args


def main(argv=None):
    started = time.perf_counter()
    args = parse_args(argv)
    from utils.aot.stage import compile_and_verify
    figures = compile_and_verify(args.model, args.kind, args.out, args.images, args.seed,
                                 args.build_dir, quick=args.quick, started=started, optim=True)
    figures["load_average"] = round(os.getloadavg()[0], 2)
    from utils.reports import write_report
    write_report(STAGE, figures)
    report = write_report(STAGE, figures, section=figures["kind"])
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    run(main)
