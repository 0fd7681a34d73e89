"""What every layer unit's tests share: a small float model goes through torch.ao eager
quantization as the stages do (fuse, prepare, calibrate, convert, trace, save), then three
truths are held against each other, bit for bit:

    PyTorch (the converted model, layer by layer)  ==  golden numpy (utils.aot.golden)
    golden numpy  ==  the compiled C library (utils.aot.compiler + HostLibrary)

on deterministic inputs that span the QuantStub's range."""
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.ao.quantization as tq

from utils.aot.backends.generic import GENERIC
from utils.aot.compiler import compile_model
from utils.aot.golden import golden_int8
from utils.aot.host_library import HostLibrary
from utils.aot.model_file import load_model
from utils.aot.stage import synthetic_inputs
from utils.aot.torchscript import last_quantized_layer, torch_int8_reference

ENGINE = "qnnpack"


def quantized_script(model, input_shape, path: Path, qconfig=None, fuse=(), calibration=16, seed=0,
                     low=-1.0, high=1.0, engine=ENGINE):
    """Eager int8 conversion of `model` (float, with QuantStub/DeQuantStub) for `engine`, traced
    with a batch-1 input of `input_shape` and saved at `path`; returns the path."""
    torch.manual_seed(seed)
    torch.backends.quantized.engine = engine
    model = model.eval()
    if fuse:
        model = tq.fuse_modules(model, [list(group) for group in fuse])
    model.qconfig = qconfig or tq.get_default_qconfig(engine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = tq.prepare(model)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _ in range(calibration):
                prepared(low + (high - low) * torch.rand((4,) + tuple(input_shape[1:]), generator=generator))
        converted = tq.convert(prepared)
        traced = torch.jit.trace(converted, torch.zeros(input_shape))
    traced.save(str(path))
    return Path(path)


def check_bit_exact(path, count=64, seed=1, backend=GENERIC, build_dir=None, out_dir=None, engine=ENGINE):
    """Golden == PyTorch (under `engine`) and library == golden on `count` synthetic inputs over
    the QuantStub's range; returns (source, layers, inputs) for further checks."""
    source = load_model(path, "int8", engine=engine)
    out_dir = Path(out_dir or Path(path).parent)
    compiled = compile_model(source, out_dir / (Path(path).stem + f"-{backend.name}.tar"), backend)
    layers = compiled.layers
    quantize = layers[[type(layer).__name__ for layer in layers].index("Quantize")]
    low = (0 - quantize.zero_point) * quantize.scale
    high = (255 - quantize.zero_point) * quantize.scale
    x = synthetic_inputs(source.input_shape, count, seed, low, high)

    torch_out, torch_logits = torch_int8_reference(source.module, layers, x)
    golden_out = golden_int8(layers, x)
    golden_logits = golden_int8(layers, x, stop_after=last_quantized_layer(layers))
    assert np.array_equal(golden_logits, torch_logits.reshape(golden_logits.shape)), \
        f"golden uint8 logits differ from PyTorch's on {_differing(golden_logits, torch_logits)} of {count} inputs"
    assert np.array_equal(np.asarray(golden_out, np.float32).view(np.uint32),
                          np.asarray(torch_out, np.float32).reshape(np.shape(golden_out)).view(np.uint32)) \
        or np.allclose(golden_out, torch_out.reshape(np.shape(golden_out)), rtol=0, atol=1e-6), \
        "golden outputs differ from PyTorch's"

    library = HostLibrary(compiled.tar, build_dir=build_dir)
    lib_out, lib_logits = library.outputs(x)
    assert np.array_equal(lib_logits.reshape(golden_logits.shape), golden_logits), \
        f"library uint8 logits differ from golden on {_differing(lib_logits, golden_logits)} of {count} inputs"
    assert len(set(golden_logits.reshape(count, -1)[:, 0].tolist())) > 1 or count < 4, \
        "the inputs do not vary the logits; the check would prove little"
    return source, layers, x


def _differing(a, b):
    a = np.asarray(a).reshape(len(a), -1)
    b = np.asarray(b).reshape(len(a), -1)
    return int(np.sum(np.any(a != b, axis=1)))
