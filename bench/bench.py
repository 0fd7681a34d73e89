"""Benchmark the model library on the emulated Cortex-M7: instructions per inference
(exact, by a QEMU TCG plugin), instructions per MAC, library flash, arena + stack peak, and
bit-exactness with the host build, for fp32/int8 x the generic/Cortex-M backends at gcc -Os
and -O2.

Instructions on the emulator stand in for cycles on the board. Writes reports/bench.json,
bench.md and bench.png (docs/img/bench.png, the README's chart, changes only when someone
copies a run's chart there). A variant that cannot be built is an error row; the others are
still measured, and the exit status is 1.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils import paths  # noqa: E402
from utils.cli import run  # noqa: E402

QUICK_IMAGES = 3
QUICK_VARIANTS = ["int8_no_optim", "int8_optim"]
QUICK_OPT_LEVELS = ["-O2"]


def parse_args(argv):
    # deferred: utils.bench imports TVM and torch, seconds that --help need not wait for
    from utils.bench import DEFAULT_BUILD_DIR, OPT_LEVELS, VARIANTS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)} "
                             f"(--quick: {','.join(QUICK_VARIANTS)})")
    parser.add_argument("--images", type=int, default=100,
                        help=f"MNIST test images (the first N of the test set; --quick: {QUICK_IMAGES})")
    parser.add_argument("--opt-levels", default=",".join(o.lstrip("-") for o in OPT_LEVELS),
                        help=f"gcc opt levels for the library, comma-separated, without the dash "
                             f"(or --opt-levels=-Os,-O2); the one with fewer instructions is reported "
                             f"(--quick: {','.join(o.lstrip('-') for o in QUICK_OPT_LEVELS)})")
    parser.add_argument("--int8-model", type=Path, default=paths.QAT_MODEL,
                        help="int8 TorchScript LeNet-5 (0103mnist_QAT.py)")
    parser.add_argument("--fp32-model", type=Path, default=paths.LENET5_FP32_MODEL,
                        help="float LeNet-5 state_dict (0103mnist_QAT.py writes it beside the int8 one)")
    parser.add_argument("--build-dir", type=Path, default=argparse.SUPPRESS,
                        help=f"builds (default: {DEFAULT_BUILD_DIR}; --quick: build/quick/bench)")
    parser.add_argument("--reports-dir", type=Path, default=argparse.SUPPRESS,
                        help=f"where bench.json/.md/.png go (default: {paths.REPORTS_DIR}; "
                             f"--quick: build/quick/reports)")
    parser.add_argument("--zoo", default="",
                        help="zoo models to run too, comma-separated, or 'mlperf' for the MLPerf Tiny ones "
                             "(their weights: `python3 -m utils.zoo`); rows under `models` in bench.json")
    parser.add_argument("--zoo-images", type=int, default=10,
                        help="inputs per zoo model (--quick: 1)")
    parser.add_argument("--quick", action="store_true",
                        help="CI: few images, one opt level, int8 variants, outputs under build/quick/ "
                             "(the values given explicitly still win)")
    args = parser.parse_args(argv)
    given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
    if args.quick:
        if "--variants" not in given:
            args.variants = ",".join(QUICK_VARIANTS)
        if "--images" not in given:
            args.images = QUICK_IMAGES
        if "--opt-levels" not in given:
            args.opt_levels = ",".join(QUICK_OPT_LEVELS)
    args.variants = [v for v in args.variants.split(",") if v]
    from utils.zoo.catalog import BY_NAME, MLPERF  # deferred, as above
    zoo = [n for n in args.zoo.split(",") if n]
    args.zoo = [m for n in zoo for m in (MLPERF if n == "mlperf" else [n])]
    unknown_zoo = [n for n in args.zoo if n not in BY_NAME]
    if unknown_zoo:
        parser.error(f"--zoo: unknown {', '.join(unknown_zoo)}; choose from mlperf, {', '.join(BY_NAME)}")
    if args.quick and "--zoo-images" not in given:
        args.zoo_images = 1
    if not 1 <= args.zoo_images <= 100:
        parser.error("--zoo-images must be between 1 and 100")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"--variants: unknown {', '.join(unknown) or '(none given)'}; choose from "
                     f"{', '.join(VARIANTS)}")
    args.opt_levels = [o if o.startswith("-") else "-" + o for o in args.opt_levels.split(",") if o]
    bad = [o for o in args.opt_levels if o not in ("-O0", "-O1", "-O2", "-O3", "-Os", "-Oz", "-Ofast")]
    if bad or not args.opt_levels:
        parser.error(f"--opt-levels: {', '.join(bad) or '(none given)'} is not a gcc opt level like -Os,-O2")
    if not 1 <= args.images <= 10000:
        parser.error("--images must be between 1 and 10000")
    quick_dir = paths.BUILD_DIR / "quick"
    args.build_dir = getattr(args, "build_dir", None) or (quick_dir / "bench" if args.quick else DEFAULT_BUILD_DIR)
    args.reports_dir = getattr(args, "reports_dir", None) or (quick_dir / "reports" if args.quick else paths.REPORTS_DIR)
    return args


def main(argv=None):
    args = parse_args(argv)
    from utils.bench import run_bench, run_zoo_bench  # deferred, as in parse_args
    from utils.zoo.catalog import QUICK_WEIGHTS_DIR, WEIGHTS_DIR
    report = run_bench(args.variants, args.images, args.opt_levels, args.int8_model, args.fp32_model,
                       args.build_dir, args.reports_dir, quick=args.quick)
    if args.zoo:
        report = run_zoo_bench(args.zoo, args.zoo_images, args.opt_levels, args.build_dir / "zoo",
                               args.reports_dir, QUICK_WEIGHTS_DIR if args.quick else WEIGHTS_DIR,
                               quick=args.quick)
        # the generic backend must run every zoo model; the Cortex-M one may refuse some
        failed = [name for name in args.zoo if report["models"][name]["variants"]["int8_no_optim"]["status"] != "ok"]
        if failed:
            print(f"bench: zoo model(s) not measured with the generic backend: {', '.join(failed)}",
                  file=sys.stderr)
            return 1
    failed = [name for name in args.variants if report["variants"][name].get("status") != "ok"]
    if failed:
        print(f"bench: {len(failed)} of {len(args.variants)} variant(s) not measured: {', '.join(failed)} "
              f"(error rows in the report)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
