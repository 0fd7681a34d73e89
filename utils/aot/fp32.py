"""fp32: PyTorch's exporter and TVM's own frontends, nothing hand-written.

An eager network goes through torch.export, a .pt2 file is already an ExportedProgram, and
both reach tvm.relax.frontend.torch.from_exported_program(keep_params_as_input=False), so the
weights become constants of `main` (the C library's `static const` arrays). A float
TorchScript of another network arrives as ONNX (utils.aot.model_file) and takes TVM's ONNX
frontend.
"""
import numpy as np
import onnx
import torch
from tvm.relax.frontend.onnx import from_onnx
from tvm.relax.frontend.torch import from_exported_program

from utils.cli import StageError, one_line
from utils.aot.model_file import quiet_torch


def fp32_to_relax(model, input_shape):
    try:
        with quiet_torch():
            if isinstance(model, onnx.ModelProto):
                return from_onnx(model, shape_dict=None, keep_params_in_input=False)
            program = model if isinstance(model, torch.export.ExportedProgram) else \
                torch.export.export(model.eval(), (torch.zeros(input_shape),))
            return from_exported_program(program, keep_params_as_input=False)
    except Exception as exc:
        raise StageError(f"TVM's frontend cannot import {type(model).__name__}: {one_line(exc)}") from None


def torch_fp32_reference(model, x):
    """The float model's outputs for float32 input x (a program runs one input at a time: it
    was exported for batch 1)."""
    with torch.no_grad():
        if isinstance(model, torch.export.ExportedProgram):
            module = model.module()
            outs = [_first(module(torch.from_numpy(row[None]))) for row in np.asarray(x, np.float32)]
            return np.concatenate([o.numpy() for o in outs]).astype(np.float32)
        out = _first(model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))))
        return out.numpy().astype(np.float32)


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out
