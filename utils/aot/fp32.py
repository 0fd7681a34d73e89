"""fp32: PyTorch's exporter and TVM's own frontend, nothing hand-written.

torch.export → tvm.relax.frontend.torch.from_exported_program(keep_params_as_input=False), so
the weights become constants of `main` (the C library's `static const` arrays).
"""
import numpy as np

from utils.cli import StageError
from utils.aot.model_file import INPUT_SHAPE, quiet_torch


def fp32_to_relax(model):
    import torch
    from tvm.relax.frontend.torch import from_exported_program
    try:
        with quiet_torch():
            program = torch.export.export(model.eval(), (torch.zeros(INPUT_SHAPE),))
            mod = from_exported_program(program, keep_params_as_input=False)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise StageError(f"TVM's PyTorch frontend cannot import {type(model).__name__}: {first}") from None
    return mod


def torch_fp32_reference(model, x):
    """The float model's log-probabilities for float32 input x [N,1,28,28]."""
    import torch
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy().astype(np.float32)
