#!/usr/bin/env python3
"""Quantization-aware training of LeNet-5 (QMnistModel) → int8, the deployed model.

Trains LeNet-5 in float, then fine-tunes it with fake quantization and converts it to int8:

--flow eager  torch.ao eager mode with qnnpack (conv+relu fused as utils.qmodel.FUSE_GROUPS
              says), traced with a [1,1,28,28] input and saved as TorchScript; the reloaded
              file must give the eager int8 model's outputs bit for bit.
--flow pt2e   torch.export → torchao's prepare_qat_pt2e with the project's MicroQuantizer
              (utils.quantize_pt2e: int8 activations, per-channel int8 weights) → convert_pt2e
              → torch.export again with batch 1, saved as a .pt2 program; the reloaded file
              must be the same program and give the converted model's outputs bit for bit.
"""
import argparse
from pathlib import Path

from utils import paths
from utils.cli import DefaultsHelpFormatter, check_output_dir, check_output_path, run
from utils.qmodel import QMnistModel
from utils.quantize import (check_round_trip, freeze_observers, prepare_qat, save_scripted,
                            save_state, to_int8)
from utils.reports import model_hash, write_report
from utils.train import evaluate, fine_tune_cosine, predict, stage_loaders, train_onecycle

STAGE = "0103mnist_QAT"
QUICK_TRAIN_IMAGES = 20000
QUICK_TEST_IMAGES = 2000
OUT = {"eager": paths.QAT_MODEL, "pt2e": paths.WEIGHTS_DIR / "qmnist_lenet5_int8.pt2"}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--flow", choices=sorted(OUT), default="eager",
                        help="eager: torch.ao eager quantization → TorchScript; pt2e: torch.export "
                             "+ torchao PT2E → .pt2 program")
    parser.add_argument("--epochs", type=int, default=10, help="float training epochs")
    parser.add_argument("--qat-epochs", type=int, default=3, help="QAT fine-tuning epochs")
    parser.add_argument("--freeze-after", type=int, default=2,
                        help="QAT epochs after which the quantization ranges stop moving")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size")
    parser.add_argument("--test-batch-size", type=int, default=1000,
                        help="batch size of the evaluation")
    parser.add_argument("--lr", type=float, default=0.05,
                        help="peak learning rate of the float training (SGD, one-cycle)")
    parser.add_argument("--weight-decay", type=float, default=5e-4,
                        help="SGD weight decay of both trainings")
    parser.add_argument("--qat-lr", type=float, default=0.002,
                        help="initial learning rate of the QAT fine-tuning (SGD, cosine to 0)")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    parser.add_argument("--quick", action="store_true",
                        help=f"tests: {QUICK_TRAIN_IMAGES} training images, "
                             f"{QUICK_TEST_IMAGES} test images, 1 + 1 epochs")
    parser.add_argument("--out", type=Path, default=None,
                        help="int8 model to write (default: weights/qmnist_lenet5_scripted_int8.pth, "
                             "a TorchScript, for eager; weights/qmnist_lenet5_int8.pt2 for pt2e)")
    parser.add_argument("--fp32-out", type=Path, default=None,
                        help="float LeNet-5 state_dict to write (default: beside --out, "
                             "qmnist_lenet5_fp32.pth)")
    args = parser.parse_args(argv)
    for name in ("epochs", "qat_epochs", "batch_size", "test_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.quick:
        args.epochs, args.qat_epochs, args.freeze_after = 1, 1, 1
    if args.out is None:
        args.out = OUT[args.flow]
    if args.fp32_out is None:
        args.fp32_out = args.out.parent / "qmnist_lenet5_fp32.pth"
    return args


def main(argv=None):
    args = parse_args(argv)
    # before the minutes of training, not after
    check_output_path(args.out, "--out")
    check_output_path(args.fp32_out, "--fp32-out")
    check_output_dir(paths.REPORTS_DIR, "reports folder")
    train_loader, test_loader = stage_loaders(args, QUICK_TRAIN_IMAGES, QUICK_TEST_IMAGES)

    model = QMnistModel()
    float_history = train_onecycle(model, train_loader, test_loader, args.epochs, args.lr,
                                   args.weight_decay)
    fp32_accuracy = float_history.test_accuracy[-1]
    save_state(model, args.fp32_out)

    if args.flow == "pt2e":
        return _pt2e(args, model, fp32_accuracy, float_history, train_loader, test_loader)

    qat_model = prepare_qat(model)

    def freeze(qat, epoch):
        if epoch == args.freeze_after:
            freeze_observers(qat)

    qat_history = fine_tune_cosine(qat_model, train_loader, test_loader, args.qat_epochs,
                                   args.qat_lr, args.weight_decay, after_epoch=freeze)

    int8_model = to_int8(qat_model)
    _, int8_accuracy = evaluate(int8_model, test_loader)
    save_scripted(int8_model, args.out)

    test_images = check_round_trip(int8_model, args.out, test_loader)

    figures = {
        "quick": args.quick,
        "flow": "eager",
        "fp32_accuracy": round(fp32_accuracy, 2),
        "int8_accuracy": round(int8_accuracy, 2),
        "qat_fakequant_accuracy": round(qat_history.test_accuracy[-1], 2),
        "epochs": args.epochs,
        "qat_epochs": args.qat_epochs,
        "seconds_per_epoch": round(float_history.seconds_per_epoch, 2),
        "qat_seconds_per_epoch": round(qat_history.seconds_per_epoch, 2),
        "train_images": len(train_loader.dataset),
        "test_images": test_images,
        "model_bytes": args.out.stat().st_size,
        "fp32_model_bytes": args.fp32_out.stat().st_size,
        "model_hash": model_hash(args.out),
        "model_path": str(args.out),
        "torchscript_matches_eager": True,
    }
    # the eager flow's figures at the top level, where everything that reads them looks,
    # and in its own section beside the pt2e flow's
    write_report(STAGE, figures)
    report = write_report(STAGE, figures, section="eager")
    print(f"LeNet-5 fp32 {fp32_accuracy:.2f} % → QAT int8 {int8_accuracy:.2f} % "
          f"on {test_images} test images")
    print(f"saved {args.out} ({figures['model_bytes']} bytes, hash {figures['model_hash']}); "
          f"reloaded TorchScript matches the eager int8 model; report {report}")
    return figures


def _pt2e(args, model, fp32_accuracy, float_history, train_loader, test_loader):
    """QAT through torch.export and torchao's PT2E, from the float LeNet-5 just trained."""
    # deferred: torchao costs seconds on import and registers ops of its own in torch; the
    # eager flow runs without it, as it always has
    from utils import quantize_pt2e
    qat_model = quantize_pt2e.prepare_qat(model)

    def freeze(qat, epoch):
        if epoch == args.freeze_after:
            quantize_pt2e.freeze_observers(qat)

    qat_history = fine_tune_cosine(qat_model, train_loader, test_loader, args.qat_epochs,
                                   args.qat_lr, args.weight_decay, after_epoch=freeze)

    converted = quantize_pt2e.to_int8(qat_model)
    int8_out, labels = predict(converted, test_loader)
    int8_accuracy = 100.0 * (int8_out.argmax(1) == labels).float().mean().item()
    program = quantize_pt2e.export_int8(converted)
    quantize_pt2e.save_program(program, args.out)
    compared = quantize_pt2e.check_round_trip(converted, program, args.out, test_loader)

    figures = {
        "quick": args.quick,
        "flow": "pt2e",
        "quantizer": "utils.quantize_pt2e.MicroQuantizer (int8 activations, per-channel int8 weights)",
        "fp32_accuracy": round(fp32_accuracy, 2),
        "int8_accuracy": round(int8_accuracy, 2),
        "qat_fakequant_accuracy": round(qat_history.test_accuracy[-1], 2),
        "epochs": args.epochs,
        "qat_epochs": args.qat_epochs,
        "seconds_per_epoch": round(float_history.seconds_per_epoch, 2),
        "qat_seconds_per_epoch": round(qat_history.seconds_per_epoch, 2),
        "train_images": len(train_loader.dataset),
        "test_images": len(labels),
        "model_bytes": args.out.stat().st_size,
        "fp32_model_bytes": args.fp32_out.stat().st_size,
        "model_hash": model_hash(args.out),
        "model_path": str(args.out),
        "ops": quantize_pt2e.op_counts(program),
        "program_matches_converted": True,
        "round_trip_images": compared,
    }
    report = write_report(STAGE, figures, section="pt2e")
    print(f"LeNet-5 fp32 {fp32_accuracy:.2f} % → PT2E QAT int8 {int8_accuracy:.2f} % "
          f"on {len(labels)} test images")
    print(f"saved {args.out} ({figures['model_bytes']} bytes, hash {figures['model_hash']}); "
          f"reloaded program is the one converted ({compared} images compared); report {report} "
          f"(section 'pt2e')")
    return figures


if __name__ == "__main__":
    run(main)
