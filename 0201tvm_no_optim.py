"""Stage 0201: compile the model with Apache TVM 0.27 into a standalone C library with
microTVM's AOT API (tvmgen_default_run), packed in Model Library Format — and prove it
bit-exact with PyTorch on the MNIST test set.

int8 TorchScript (0103 / 0102) → Relax (our lowering of the converted modules) → TIR kernels
with an MCU schedule (no workspace) → C, plus our AOT glue on one static arena → MLF tar.
fp32 state_dicts of MnistModel / QMnistModel go through torch.export and TVM's frontend.

The stage then compiles the tar's C with the host gcc, runs the test images through it and
compares with PyTorch (int8: uint8 logits identical on every image; fp32: |diff| <= 1e-4;
both: same digit), cross-compiles it for the Cortex-M7 (sizes, `nm -u`), and writes
reports/0201tvm_no_optim.json. The tar is put in place only when all of that passes.
"""
import os
import time

from utils.cli import run

STAGE = "0201tvm_no_optim"


def parse_args(argv):
    from utils.aot.stage import parse_stage_args
    return parse_stage_args(argv, __doc__.split("\n\n")[0])


def main(argv=None):
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    args = parse_args(argv)
    from utils.aot.stage import compile_and_verify
    figures = compile_and_verify(args.model, args.kind, args.out, args.images, args.seed,
                                 args.build_dir, quick=args.quick, started=started)
    figures["load_average_at_start"] = round(load_before, 2)
    figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
    from utils.reports import write_report
    # the last run at the top level (the keys the issue names), and each kind's last run
    # under its own section, so an fp32 run does not hide the int8 figures
    write_report(STAGE, figures)
    report = write_report(STAGE, figures, section=figures["kind"])
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    run(main)
