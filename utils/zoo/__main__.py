"""Compile every zoo model with the project's compiler, check it against PyTorch on the host,
and write reports/zoo.json (python3 -m utils.zoo --help).

Weights it does not find it makes first: the built-ins from their stages' files (else
trained here), the MNIST networks by QAT, the MLPerf Tiny shapes random and calibrated on
synthetic inputs. A model the compiler refuses is a row with accepted: false and the
compiler's one line, not a failure of the run.
"""
import argparse
import time
from pathlib import Path

import torch

from utils import paths
from utils.cli import DefaultsHelpFormatter, check_output_dir, positive_int, run
from utils.reports import model_hash, read_report, write_report
from utils.aot.backends import BACKENDS
from utils.zoo.catalog import BY_NAME, QUICK_DIR, QUICK_WEIGHTS_DIR, WEIGHTS_DIR, ZOO
from utils.zoo.check import check_model, markdown_table, verification_inputs
from utils.zoo.make import Plan, weights_for
from utils.zoo.models import count_macs

STAGE = "zoo"
QUICK = {"images": 20, "train_images": 2000, "test_images": 500, "epochs": 1, "cnn_epochs": 1, "qat_epochs": 1,
         "freeze_after": 1, "calibration": 32}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=[e.name for e in ZOO], default=[e.name for e in ZOO],
                        metavar="NAME", help=f"zoo models to check (default: all, {' '.join(e.name for e in ZOO)})")
    parser.add_argument("--backends", nargs="+", choices=sorted(BACKENDS), default=["generic", "cortex_m"],
                        help="compiler backends (default: both; generic = 0201, cortex_m = 0202)")
    parser.add_argument("--images", type=positive_int, default=1000,
                        help="inputs each library is checked on (MNIST test images or synthetic)")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="where the zoo keeps the weights it makes (default: weights/zoo, "
                             "with --quick build/zoo-quick/weights)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where the libraries go, <backend>/<model>.tar (default: build/zoo, "
                             "with --quick build/zoo-quick)")
    parser.add_argument("--build-dir", type=Path, default=None,
                        help="host library build cache (default: build/host-lib)")
    parser.add_argument("--remake", action="store_true", help="make the zoo's weights again even if present")
    parser.add_argument("--own-builtins", action="store_true",
                        help="train LeNet-5 and MnistModel here even if the stages' weights exist")
    parser.add_argument("--epochs", type=positive_int, default=Plan.epochs, help="float training epochs")
    parser.add_argument("--qat-epochs", type=positive_int, default=Plan.qat_epochs, help="QAT epochs")
    parser.add_argument("--calibration", type=positive_int, default=Plan.calibration,
                        help="synthetic inputs the MLPerf-shaped models are calibrated on")
    parser.add_argument("--seed", type=int, default=Plan.seed, help="seed of training and random weights")
    parser.add_argument("--threads", type=positive_int, default=Plan.threads,
                        help="torch threads for training (more only pays on idle cores)")
    parser.add_argument("--table", action="store_true",
                        help="print the README's table from reports/zoo.json and stop")
    parser.add_argument("--quick", action="store_true",
                        help=f"tests: {QUICK['images']} inputs per model; weights trained on "
                             f"{QUICK['train_images']} images for 1 + 1 epochs, calibrated on "
                             f"{QUICK['calibration']} inputs")
    args = parser.parse_args(argv)
    args.plan = Plan(seed=args.seed, epochs=args.epochs, qat_epochs=args.qat_epochs,
                     freeze_after=min(Plan.freeze_after, args.qat_epochs), calibration=args.calibration,
                     threads=args.threads, own_builtins=args.own_builtins)
    quick_dir = QUICK_DIR
    if args.quick:
        for key, value in QUICK.items():
            if key == "images":
                if args.images == parser.get_default("images"):
                    args.images = value
            else:
                setattr(args.plan, key, value)
    if args.weights_dir is None:  # the defaults are ours to create; a given folder is checked
        args.weights_dir = QUICK_WEIGHTS_DIR if args.quick else WEIGHTS_DIR
        args.weights_dir.mkdir(parents=True, exist_ok=True)
    args.out_dir = args.out_dir or (quick_dir if args.quick else paths.BUILD_DIR / "zoo")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.table:
        models = read_report(STAGE).get("models", {})
        print(markdown_table({e.name: models[e.name] for e in ZOO if e.name in models}))
        return models
    check_output_dir(args.weights_dir, "--weights-dir")
    check_output_dir(paths.REPORTS_DIR, "reports folder")
    backends = [BACKENDS[name] for name in args.backends]
    torch.set_num_threads(args.threads)  # PyTorch's reference runs too (see Plan.threads)
    started = time.perf_counter()
    models = read_report(STAGE).get("models", {})
    for name in args.models:
        entry = BY_NAME[name]
        path, made = weights_for(entry, args.weights_dir, args.plan, args.remake)
        x, labels, inputs_about = verification_inputs(entry, args.images)
        row = {"about": entry.about, "macs": count_macs(entry.network(), entry.input_shape),
               "inputs": entry.inputs, "inputs_about": inputs_about, "images": len(x),
               "input_shape": list(entry.input_shape),
               "model": str(path), "model_hash": model_hash(path), **made, "quick": args.quick}
        row.update(check_model(entry, path, backends, x, labels, args.out_dir, args.build_dir))
        models[name] = row
        report = write_report(STAGE, {"models": models})
    seconds = round(time.perf_counter() - started, 1)
    write_report(STAGE, {"models": models, "seconds": seconds, "quick": args.quick,
                         "backends": args.backends})
    accepted = [name for name in args.models if models[name]["accepted"]]
    print(f"{len(accepted)} of {len(args.models)} models accepted by the generic backend "
          f"({', '.join(accepted) or 'none'}); {seconds} s; report {report}")
    return models


if __name__ == "__main__":
    run(main)
