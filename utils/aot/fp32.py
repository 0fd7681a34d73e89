"""fp32: PyTorch's exporter and TVM's own frontend, nothing hand-written.

torch.export → tvm.relax.frontend.torch.from_exported_program(keep_params_as_input=False), so
the weights become constants of `main` (the C library's `static const` arrays).
"""
import numpy as np
import torch
from tvm.relax.frontend.torch import from_exported_program

from utils.cli import StageError, one_line
from utils.aot.model_file import quiet_torch


def fp32_to_relax(model, input_shape):
    try:
        with quiet_torch():
            program = torch.export.export(model.eval(), (torch.zeros(input_shape),))
            mod = from_exported_program(program, keep_params_as_input=False)
    except Exception as exc:
        raise StageError(f"TVM's PyTorch frontend cannot import {type(model).__name__}: {one_line(exc)}") from None
    return mod


def torch_fp32_reference(model, x):
    """The float model's outputs for float32 input x."""
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy().astype(np.float32)
