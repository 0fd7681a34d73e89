"""Benchmark the model libraries on the emulated Cortex-M7: instructions per inference
(exact, by a QEMU TCG plugin), instructions per MAC, an estimate of the M7's cycles and ms at
216 MHz (llvm-mca per executed block), library flash, arena + stack peak, bit-exactness with
the host build and with 0201, a per-layer breakdown, and the published TFLM / MLPerf figures.

--models: each model (lenet5, dscnn, resnet8, mbv1, ad, or any zoo name; `mlperf` for the four
MLPerf Tiny ones) with 0201 and 0202, under `models` in reports/bench.json (a backend that
refuses a model is an error row). --variants: LeNet-5 as fp32/int8 x the two backends, under
`variants`. Writes reports/bench.json, bench.md/.png (the variants) and bench_models.md/.png
(the models); docs/img/ changes only when someone copies a run's chart there. Exit status 1
when a variant asked for is not measured, 0201 cannot run a model, or 0202 crashes on one.
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
ALL_MODELS = "lenet5,dscnn,resnet8,mbv1,ad"
QUICK_MODELS = "lenet5,ad"


def parse_args(argv):
    # deferred: utils.bench imports TVM and torch, seconds that --help need not wait for
    from utils.bench import DEFAULT_BUILD_DIR, OPT_LEVELS, VARIANTS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"LeNet-5 variants, comma-separated, of {', '.join(VARIANTS)}, or none "
                             f"(--quick: {','.join(QUICK_VARIANTS)})")
    parser.add_argument("--models", default=ALL_MODELS,
                        help=f"models, each with 0201 and 0202, comma-separated: lenet5, dscnn, resnet8, "
                             f"mbv1, ad, any zoo name, mlperf (the four MLPerf Tiny ones) or none; "
                             f"their weights: `python3 -m utils.zoo` (--quick: {QUICK_MODELS})")
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
    parser.add_argument("--zoo", default=None,
                        help="the same as --models (its earlier name)")
    parser.add_argument("--zoo-images", "--model-images", dest="zoo_images", type=int, default=10,
                        help="inputs per model of --models (--quick: 1)")
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
    args.variants = [v for v in args.variants.split(",") if v and v != "none"]
    from utils.bench import model_key  # deferred, as above
    from utils.bench_peers import MODELS
    from utils.zoo.catalog import BY_NAME, MLPERF
    if args.zoo is not None:
        args.models = args.zoo
    elif args.quick and "--models" not in given:
        args.models = QUICK_MODELS
    names = [n for n in args.models.split(",") if n and n != "none"]
    names = [m for n in names for m in (MLPERF if n == "mlperf" else [n])]
    unknown_models = [n for n in names if n not in MODELS and n not in BY_NAME]
    if unknown_models:
        parser.error(f"--models: unknown {', '.join(unknown_models)}; choose from {', '.join(MODELS)}, "
                     f"mlperf, {', '.join(BY_NAME)}")
    args.models = list(dict.fromkeys(model_key(n) for n in names))
    if not args.variants and not args.models:
        parser.error("nothing to run: give --variants or --models")
    if args.quick and "--zoo-images" not in given:
        args.zoo_images = 1
    if not 1 <= args.zoo_images <= 100:
        parser.error("--zoo-images must be between 1 and 100")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
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
    from utils.bench import run_bench, run_models_bench  # deferred, as in parse_args
    from utils.zoo.catalog import QUICK_WEIGHTS_DIR, WEIGHTS_DIR
    args.reports_dir.mkdir(parents=True, exist_ok=True)  # checked before the long work
    status = 0
    if args.variants:
        report = run_bench(args.variants, args.images, args.opt_levels, args.int8_model, args.fp32_model,
                           args.build_dir, args.reports_dir, quick=args.quick)
        failed = [name for name in args.variants if report["variants"][name].get("status") != "ok"]
        if failed:
            print(f"bench: {len(failed)} of {len(args.variants)} variant(s) not measured: {', '.join(failed)} "
                  f"(error rows in the report)", file=sys.stderr)
            status = 1
    if args.models:
        report = run_models_bench(args.models, args.zoo_images, args.opt_levels, args.build_dir / "zoo",
                                  args.reports_dir, QUICK_WEIGHTS_DIR if args.quick else WEIGHTS_DIR,
                                  args.int8_model, quick=args.quick)
        # 0201 must run every model; 0202 may refuse one (a StageError), never crash
        rows = {name: report["models"][name]["variants"] for name in args.models}
        failed = [name for name, r in rows.items() if r["int8_no_optim"]["status"] != "ok"]
        crashed = [name for name, r in rows.items()
                   if r["int8_optim"]["status"] != "ok" and not r["int8_optim"].get("refused")]
        if failed:
            print(f"bench: model(s) not measured with 0201: {', '.join(failed)}", file=sys.stderr)
            status = 1
        if crashed:
            print(f"bench: 0202 failed (not a refusal) on: {', '.join(crashed)} (error rows in the report)",
                  file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(run(main))
