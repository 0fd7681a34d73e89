#!/usr/bin/env python3
"""Post-training static quantization (PTQ) to int8, calibrated on real training images.

Fuses conv/linear+ReLU, adds quant/dequant stubs (MnistModel keeps its Normalize in float
before the QuantStub), attaches qnnpack observers, runs N calibration batches through them,
converts to int8 and compares fp32 and int8 accuracy. Saves the int8 state_dict and a
TorchScript of the int8 model, reloaded and checked bit for bit against the eager one.

--flow pt2e instead exports the float network with torch.export, calibrates torchao's
prepare_pt2e with the project's MicroQuantizer (utils.quantize_pt2e: int8 activations,
per-channel int8 weights; MnistModel's Normalize folded into conv1), converts with convert_pt2e
and saves the program exported again with batch 1 as a .pt2 file beside the TorchScript ones,
reloaded and checked to be the same program.

--model mnist: MnistModel from 0101mnist.py (1.2 M parameters in fc1 alone: 4.8 MB fp32,
1.2 MB int8, more than the STM32F746's 1 MB flash). --model lenet5: QMnistModel in float, the
network 0103 deploys; its float weights come from 0103mnist_QAT.py or --train-epochs.
"""
import argparse
import time
from pathlib import Path

from utils import paths
from utils.cli import DefaultsHelpFormatter, check_output_dir, check_output_path, run
from utils.model import MnistModel
from utils.qmodel import QMnistModel
from utils.quantize import (calibrate, check_round_trip, load_fp32_model, prepare_ptq,
                            save_scripted, save_state, to_int8)
from utils.reports import model_hash, write_report
from utils.train import predict, stage_loaders, train_onecycle

STAGE = "0102quantization"
QUICK_TRAIN_IMAGES = 5000
QUICK_TEST_IMAGES = 1000

MODELS = {
    # name: (network, float weights, int8 state_dict, int8 TorchScript, who makes the weights)
    "mnist": (MnistModel, "mnist_cnn.pth", "mnist_cnn_quant.pth",
              "mnist_cnn_quant_scripted_int8.pth", "0101mnist.py"),
    "lenet5": (QMnistModel, "qmnist_lenet5_fp32.pth", "qmnist_lenet5_ptq.pth",
               "qmnist_lenet5_ptq_scripted_int8.pth",
               "0103mnist_QAT.py"),
}
# the pt2e flow's int8 program of each model
PROGRAMS = {"mnist": "mnist_cnn_int8.pt2", "lenet5": "qmnist_lenet5_ptq_int8.pt2"}
FLOWS = ("eager", "pt2e")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="mnist",
                        help="mnist: MnistModel of 0101; lenet5: the LeNet-5 of 0103")
    parser.add_argument("--flow", choices=FLOWS, default="eager",
                        help="eager: torch.ao eager quantization → int8 state_dict + TorchScript; "
                             "pt2e: torch.export + torchao PT2E → .pt2 program")
    parser.add_argument("--calib-batches", type=int, default=32,
                        help="training batches run through the observers")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="batch size of calibration (and of --train-epochs)")
    parser.add_argument("--test-batch-size", type=int, default=1000,
                        help="batch size of the evaluation")
    parser.add_argument("--weights", type=Path, default=None,
                        help="float weights to quantize (default: weights/mnist_cnn.pth for "
                             "mnist, weights/qmnist_lenet5_fp32.pth for lenet5)")
    parser.add_argument("--train-epochs", type=int, default=0,
                        help="lenet5 only: first train the float network for this many epochs "
                             "(0103's float recipe) and save it to --weights")
    parser.add_argument("--out-dir", type=Path, default=paths.WEIGHTS_DIR,
                        help="where the int8 state_dict and TorchScript (pt2e: the .pt2) go")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    parser.add_argument("--quick", action="store_true",
                        help=f"tests: evaluate on {QUICK_TEST_IMAGES} test images, "
                             f"train (if asked) on {QUICK_TRAIN_IMAGES}")
    args = parser.parse_args(argv)
    for name in ("calib_batches", "batch_size", "test_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.train_epochs < 0:
        parser.error("--train-epochs must not be negative")
    if args.train_epochs and args.model != "lenet5":
        parser.error("--train-epochs is for --model lenet5; train MnistModel with 0101mnist.py")
    if args.weights is None:
        args.weights = paths.WEIGHTS_DIR / MODELS[args.model][1]
    return args


def main(argv=None):
    args = parse_args(argv)
    network, _, state_name, scripted_name, made_by = MODELS[args.model]
    # before training or calibrating, not after
    check_output_dir(args.out_dir, "--out-dir")
    if args.train_epochs:
        check_output_path(args.weights, "--weights")
    check_output_dir(paths.REPORTS_DIR, "reports folder")
    train_loader, test_loader = stage_loaders(args, QUICK_TRAIN_IMAGES, QUICK_TEST_IMAGES)

    model = network()
    seconds_per_epoch = None
    if args.train_epochs:
        history = train_onecycle(model, train_loader, test_loader, args.train_epochs)
        seconds_per_epoch = round(history.seconds_per_epoch, 2)
        save_state(model, args.weights)
    else:
        hint = " or pass --train-epochs N to train it here" if args.model == "lenet5" else ""
        load_fp32_model(model, args.weights, made_by, hint)

    fp32_out, labels = predict(model, test_loader)
    fp32_accuracy = 100.0 * (fp32_out.argmax(1) == labels).float().mean().item()
    if args.flow == "pt2e":
        return _pt2e(args, model, fp32_out, fp32_accuracy, labels, train_loader, test_loader,
                     seconds_per_epoch)

    start = time.perf_counter()
    prepared = prepare_ptq(model)
    calib_images = calibrate(prepared, train_loader, args.calib_batches)
    int8_model = to_int8(prepared)
    calibration_seconds = time.perf_counter() - start

    int8_out, _ = predict(int8_model, test_loader)
    int8_accuracy = 100.0 * (int8_out.argmax(1) == labels).float().mean().item()
    agreement = 100.0 * (int8_out.argmax(1) == fp32_out.argmax(1)).float().mean().item()

    state_path = args.out_dir / state_name
    scripted_path = args.out_dir / scripted_name
    save_state(int8_model, state_path)
    save_scripted(int8_model, scripted_path)
    check_round_trip(int8_model, scripted_path, test_loader)

    figures = {
        "quick": args.quick,
        "flow": "eager",
        "model": args.model,
        "fp32_accuracy": round(fp32_accuracy, 2),
        "int8_accuracy": round(int8_accuracy, 2),
        "argmax_agreement": round(agreement, 2),
        "test_images": len(labels),
        "calib_batches": args.calib_batches,
        "calib_images": calib_images,
        "calibration_seconds": round(calibration_seconds, 2),
        "epochs": args.train_epochs,
        "seconds_per_epoch": seconds_per_epoch,
        "fp32_bytes": args.weights.stat().st_size,
        "int8_bytes": state_path.stat().st_size,
        "model_bytes": scripted_path.stat().st_size,
        "model_hash": model_hash(scripted_path),
        "model_path": str(scripted_path),
        "fp32_model_hash": model_hash(args.weights),
        "torchscript_matches_eager": True,
    }
    # One section per model, so a run of one never hides the other's figures; the top level
    # is the latest run's, and its "model" says which one that was. These are the eager
    # flow's; the pt2e flow's runs sit in their own section, "pt2e".
    write_report(STAGE, figures, section=args.model)
    report = write_report(STAGE, figures)
    drop = fp32_accuracy - int8_accuracy
    print(f"{args.model}: fp32 {fp32_accuracy:.2f} % → int8 {int8_accuracy:.2f} % "
          f"({drop:+.2f} points lost, argmax agreement {agreement:.2f} %) on {len(labels)} "
          f"test images; calibrated on {calib_images} training images")
    print(f"sizes: fp32 {figures['fp32_bytes']} bytes, int8 state_dict {figures['int8_bytes']} "
          f"bytes, int8 TorchScript {figures['model_bytes']} bytes")
    print(f"saved {state_path} and {scripted_path} (hash {figures['model_hash']}); "
          f"report {report} (section {args.model!r})")
    return figures


def _pt2e(args, model, fp32_out, fp32_accuracy, labels, train_loader, test_loader, seconds_per_epoch):
    """PTQ through torch.export and torchao's PT2E; the float figures are the eager flow's."""
    # deferred: torchao costs seconds on import and registers ops of its own in torch; the
    # eager flow runs without it, as it always has
    from utils import quantize_pt2e

    start = time.perf_counter()
    prepared = quantize_pt2e.prepare_ptq(model)
    calib_images = calibrate(prepared, train_loader, args.calib_batches)
    converted = quantize_pt2e.to_int8(prepared)
    calibration_seconds = time.perf_counter() - start

    int8_out, _ = predict(converted, test_loader)
    int8_accuracy = 100.0 * (int8_out.argmax(1) == labels).float().mean().item()
    agreement = 100.0 * (int8_out.argmax(1) == fp32_out.argmax(1)).float().mean().item()

    program_path = args.out_dir / PROGRAMS[args.model]
    program = quantize_pt2e.export_int8(converted)
    quantize_pt2e.save_program(program, program_path)
    compared = quantize_pt2e.check_round_trip(converted, program, program_path, test_loader)

    figures = {
        "quick": args.quick,
        "flow": "pt2e",
        "model": args.model,
        "quantizer": "utils.quantize_pt2e.MicroQuantizer (int8 activations, per-channel int8 weights)",
        "fp32_accuracy": round(fp32_accuracy, 2),
        "int8_accuracy": round(int8_accuracy, 2),
        "argmax_agreement": round(agreement, 2),
        "test_images": len(labels),
        "calib_batches": args.calib_batches,
        "calib_images": calib_images,
        "calibration_seconds": round(calibration_seconds, 2),
        "epochs": args.train_epochs,
        "seconds_per_epoch": seconds_per_epoch,
        "fp32_bytes": args.weights.stat().st_size,
        "model_bytes": program_path.stat().st_size,
        "model_hash": model_hash(program_path),
        "model_path": str(program_path),
        "fp32_model_hash": model_hash(args.weights),
        "ops": quantize_pt2e.op_counts(program),
        "program_matches_converted": True,
        "round_trip_images": compared,
    }
    # the pt2e flow's own section, one entry per model; the top level stays the eager flow's
    report = write_report(STAGE, {args.model: figures}, section="pt2e")
    drop = fp32_accuracy - int8_accuracy
    print(f"{args.model}: fp32 {fp32_accuracy:.2f} % → PT2E int8 {int8_accuracy:.2f} % "
          f"({drop:+.2f} points lost, argmax agreement {agreement:.2f} %) on {len(labels)} "
          f"test images; calibrated on {calib_images} training images")
    print(f"saved {program_path} ({figures['model_bytes']} bytes, hash {figures['model_hash']}); "
          f"reloaded program is the one converted ({compared} images compared); report {report} "
          f"(section 'pt2e')")
    return figures


if __name__ == "__main__":
    run(main)
