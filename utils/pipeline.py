"""The main job: the whole pipeline end to end on a stand-in board, one summary at the end.

    python3 -m utils.pipeline            # QAT → TVM (0201, 0202) → firmware → 2 qemu-m7 → 10 000 images
    python3 -m utils.pipeline --quick    # the same path on small budgets, in about 2 minutes
    python3 -m utils.pipeline --flow pt2e    # QAT through torch.export + torchao PT2E → .pt2 → ...

Validation runs on --standins N stand-ins at once (default 2, one per core of a small
machine): 0401 shares the images out between them and reports each board's line.

Each step is the stage's own command line, run as a child process, so the pipeline proves
the commands a user types. Figures come back through reports/*.json. The quick variant keeps
its models, tar and reports under build/quick/ (build/quick-pt2e/ for --flow pt2e) so it
never overwrites the real ones. When 0202's Cortex-M kernels cannot run a model (they refuse
per-channel weights, which the pt2e flow's quantizer makes), the firmware keeps 0201's library
and the job says so in one line.
"""
import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from utils import data, paths
from utils.cli import StageError, run
from utils.reports import read_report, write_report
from utils.standin import StandIn
from utils.targets.registry import DEFAULT_TARGET, TARGETS

PY = sys.executable
# each flow's int8 LeNet-5, as 0103 names it in weights/
MODEL_FILES = {"eager": paths.QAT_MODEL.name, "pt2e": "qmnist_lenet5_int8.pt2"}
# how 0202 begins the one line it exits with when its kernels cannot run a model
# (utils/aot/backends/cortex_m): a model to deploy with 0201's library, not a failure
REFUSAL = "0202 cannot optimize"


def _step(title, argv, env):
    print(f"\n=== {title}: {' '.join(str(a) for a in argv)}", flush=True)
    started = time.monotonic()
    result = subprocess.run([PY, *map(str, argv)], cwd=paths.ROOT, env=env)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise StageError(f"step '{title}' failed (exit {result.returncode}); its output is above")
    print(f"=== {title}: done in {seconds:.0f} s", flush=True)
    return seconds


def _step_or_refusal(title, argv, env, refusal):
    """_step for a stage that may refuse the model: (seconds, None) when it ran, (seconds,
    its one-line reason) when it exited with a line that starts with `refusal`."""
    print(f"\n=== {title}: {' '.join(str(a) for a in argv)}", flush=True)
    started = time.monotonic()
    result = subprocess.run([PY, *map(str, argv)], cwd=paths.ROOT, env=env, stderr=subprocess.PIPE, text=True)
    seconds = time.monotonic() - started
    refused = [line for line in result.stderr.splitlines() if line.removeprefix("error: ").startswith(refusal)]
    if result.returncode == 0 or not refused:
        sys.stderr.write(result.stderr)
        if result.returncode != 0:
            raise StageError(f"step '{title}' failed (exit {result.returncode}); its output is above")
        print(f"=== {title}: done in {seconds:.0f} s", flush=True)
        return seconds, None
    # the refusal's own line says "error:"; the caller says it in the job's words instead
    sys.stderr.write("".join(line + "\n" for line in result.stderr.splitlines() if line not in refused))
    return seconds, refused[-1].removeprefix("error: ")


def _pct(value):
    """A fraction in [0, 1] (0201, 0401, firmware reports) as a percentage."""
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _points(value):
    """Stage 01 reports already give accuracy in percent."""
    return "n/a" if value is None else f"{value:.2f} %"


def summary_lines(reports_dir: Path, target: str, seconds: dict, flow: str = "eager",
                  refusal: str = None) -> list:
    """The summary's lines from the reports; `flow` picks each stage report's section,
    `refusal` is 0202's one line when it refused the model."""
    qat = read_report("0103mnist_QAT", reports_dir)
    aot = read_report("0201tvm_no_optim", reports_dir)
    opt = read_report("0202tvm_optim", reports_dir)
    if flow != "eager":   # the eager flow's figures are the reports' top level
        qat, aot, opt = qat.get(flow, {}), aot.get(flow, {}), opt.get(flow, {})
    fw = read_report("firmware", reports_dir).get(target, {})
    val = read_report("0401pc_terminal_sendimage", reports_dir)
    lines = [
        f"model            {aot.get('model_hash', qat.get('model_hash', '?'))}"
        f"{'  (quick)' if qat.get('quick') else ''}{'  (pt2e)' if flow == 'pt2e' else ''}",
        f"QAT LeNet-5      fp32 {_points(qat.get('fp32_accuracy'))}   int8 {_points(qat.get('int8_accuracy'))}"
        f"   ({qat.get('epochs', '?')} epochs, {qat.get('seconds_per_epoch', 0):.1f} s/epoch)",
        f"TVM library      flash {aot.get('arm_text_bytes', 0) + aot.get('arm_data_bytes', 0)} B"
        f" (text+data, Cortex-M7 -Os)   arena {aot.get('arena_bytes')} B"
        f"   constants {aot.get('constant_bytes')} B",
        f"                 host check: {aot.get('images')} images, argmax agreement "
        f"{_pct(aot.get('argmax_agreement'))}, int8 exact {_pct(aot.get('uint8_exact_fraction'))}",
    ]
    if flow == "pt2e":  # PyTorch's Q/DQ program is a float reference; the golden model is the truth
        golden = aot.get("vs_golden_model") or {}
        lines.append(f"                 largest difference from PyTorch's Q/DQ program {aot.get('max_lsb_diff')} LSB;"
                     f" same bits as the golden integer model {_pct(golden.get('uint8_exact_fraction'))}")
    if refusal:
        lines.append(f"TVM optimized    not deployed: {refusal.split(';')[0]}")
    elif opt and "optimize" in seconds:  # this run deployed 0202's library
        lines += [
            f"TVM optimized    flash {opt.get('arm_flash_bytes')} B (text+data, Cortex-M7"
            f" {' '.join(['-Os'] + opt.get('library_cflags', []))})   arena {opt.get('arena_bytes')} B",
            f"                 host check: {opt.get('images')} images, int8 exact "
            f"{_pct(opt.get('uint8_exact_fraction'))}, same bits as 0201 "
            f"{_pct((opt.get('vs_golden') or {}).get('outputs_identical_fraction'))}",
        ]
    lines += [
        f"firmware {target:<8}text {fw.get('text_bytes')} B  data {fw.get('data_bytes')} B"
        f"  bss {fw.get('bss_bytes')} B",
        f"on the device    {fw.get('instructions_per_inference', fw.get('device_time_median'))}"
        f" {'instructions' if 'instructions_per_inference' in fw else fw.get('time_unit', '')}"
        f" per inference (median of {fw.get('images')} images)",
        f"validation       {val.get('answered')} of {val.get('images')} images answered,"
        f" accuracy {_pct(val.get('accuracy'))}, agreement with host int8 model"
        f" {_pct(val.get('agreement_with_host'))}, {val.get('images_per_second') or 0:.1f} images/s"
        f" on {len(val.get('boards') or [1])} board(s), {val.get('wire_bytes_per_image') or 0:.0f}"
        f" bytes per image on the wire ({val.get('frame_form', 'full')} frames)",
        "time             " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()),
    ]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small budgets everywhere; outputs under build/quick/ (build/quick-pt2e/)")
    parser.add_argument("--flow", choices=sorted(MODEL_FILES), default="eager",
                        help="eager: 0103's TorchScript int8 model; pt2e: 0103 --flow pt2e's .pt2 "
                             "program (torch.export + torchao PT2E)")
    parser.add_argument("--target", default=DEFAULT_TARGET, choices=sorted(TARGETS),
                        help="stand-in board to validate on")
    parser.add_argument("--standins", type=int, default=2, metavar="N",
                        help="stand-ins validating at once (0401 shares the images out)")
    parser.add_argument("--images", type=int, default=None,
                        help="test images to validate (default: all 10 000; 300 with --quick)")
    parser.add_argument("--retrain", action="store_true",
                        help="run QAT even when the int8 model already exists")
    parser.add_argument("--no-optim", action="store_true",
                        help="deploy 0201's library; by default 0202 replaces it with the Cortex-M "
                             "optimized one (bit-identical, about 5x fewer instructions)")
    args = parser.parse_args(argv)
    if args.images is not None and not 1 <= args.images <= 10000:
        parser.error("--images must be between 1 and 10000")
    if not 1 <= args.standins <= 8:
        parser.error("--standins must be between 1 and 8")

    env = dict(os.environ)
    pt2e = args.flow == "pt2e"
    if args.quick:
        out = paths.BUILD_DIR / ("quick-pt2e" if pt2e else "quick")
        weights, tar, reports = out / MODEL_FILES[args.flow], out / "mnistCNN.tar", out / "reports"
        env["TINYML_REPORTS_DIR"] = str(reports)
    else:
        weights, tar, reports = paths.WEIGHTS_DIR / MODEL_FILES[args.flow], paths.MLF_TAR, paths.REPORTS_DIR
    images = args.images if args.images is not None else (300 if args.quick else 10000)
    quick = ["--quick"] if args.quick else []
    flow = ["--flow", "pt2e"] if pt2e else []
    # the stages create a missing output file's folder but want their reports folder's parent
    reports.mkdir(parents=True, exist_ok=True)

    data.fetch()
    data.check()
    seconds = {}
    started = time.monotonic()
    if args.retrain or args.quick or not weights.is_file():
        seconds["QAT"] = _step("QAT (0103)", ["0103mnist_QAT.py", *flow, "--out", weights, *quick], env)
    else:
        print(f"\n=== QAT (0103): {weights} exists, reused (--retrain trains again)")
    seconds["compile"] = _step("TVM compile + verify (0201)",
                               ["0201tvm_no_optim.py", "--model", weights, "--out", tar, *quick], env)
    refusal = None
    if not args.no_optim:
        spent, refusal = _step_or_refusal("TVM Cortex-M compile + verify against 0201 (0202)",
                                          ["0202tvm_optim.py", "--model", weights, "--out", tar, *quick], env,
                                          REFUSAL)
        seconds["optimize"] = spent
        if refusal:
            print(f"=== {refusal.split(';')[0]}: the firmware keeps 0201's library ({tar})", flush=True)
    library = "0201" if args.no_optim or refusal else "0202"
    seconds["firmware"] = _step(f"firmware build + figures on {args.target}",
                                ["-m", "utils.standin", "--target", args.target, "--tar", tar,
                                 "--check", "100"], env)

    count = args.standins
    print(f"\n=== start {count} {args.target} stand-in{'s' if count > 1 else ''}", flush=True)
    stem = f"pipeline-{args.target}{'-pt2e' if pt2e and args.quick else ''}"
    standins = [StandIn(args.target, tar, link=paths.BUILD_DIR / f"{stem}{'' if i == 0 else f'-{i + 1}'}.pty")
                for i in range(count)]
    with contextlib.ExitStack() as stack:
        for standin in standins:
            stack.enter_context(standin)
            print(f"    port {standin.port} ({standin.pty})", flush=True)
        ports = [arg for standin in standins for arg in ("--port", standin.port)]
        seconds["validate"] = _step(
            f"validate {images} images on {count} × {args.target} (0401)",
            ["0401pc_terminal_sendimage.py", *ports, "--count", images,
             "--host-model", weights, "--timeout", "30", "--quiet"], env)
    print(f"=== {args.target} stand-in{'s' if count > 1 else ''} stopped", flush=True)
    seconds["total"] = time.monotonic() - started

    lines = summary_lines(reports, args.target, seconds, args.flow, refusal)
    print("\n==== summary " + "=" * 60)
    print("\n".join(lines))
    figures = {"target": args.target, "images": images, "standins": args.standins,
               "quick": args.quick, "flow": args.flow,
               "model": str(weights), "library": library, "optimize_refused": refusal,
               "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    # the last run at the top level, and each flow's last run in its own section
    write_report("pipeline", figures, reports_dir=reports)
    write_report("pipeline", figures, section=args.flow, reports_dir=reports)


if __name__ == "__main__":
    run(main)
