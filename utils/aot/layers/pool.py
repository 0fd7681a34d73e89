"""MaxPool2d on uint8 (max commutes with the monotonic quantization, so no requantization),
any kernel, stride, padding, dilation and ceil_mode.

Which pixels a window sees depends on the kernel torch runs (aten/src/ATen/native/quantized/
cpu/Pooling.cpp, torch 2.14):
  qnnpack engine without ceil_mode: qnnpack's max pooling, whose indirection buffer clamps
    every tap to the input (doz(y, padding), min(y, H - 1)): a tap in the padding reads the
    nearest border pixel. Without dilation that pixel is in the window anyway, so it is the
    same as ignoring the padding; with dilation it need not be.
  otherwise (ceil_mode, other engines): taps in the padding are skipped. uint8 padding with 0
    (the smallest value) is the same, since every window holds at least one input pixel.
"""
from dataclasses import dataclass

import numpy as np
import torch.nn.functional as F
from tvm import relax

from utils.cli import StageError
from utils.aot.layers.base import Layer, aten_rule, graph_constants, module_rule, pair


@dataclass
class MaxPool2d(Layer):
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    ceil_mode: bool
    clamp_taps: bool = False    # qnnpack: taps in the padding read the border pixel

    def output_size(self, h, w):
        return tuple(pooled_size(n, k, s, p, d, self.ceil_mode)
                     for n, k, s, p, d in zip((h, w), self.kernel, self.stride, self.padding, self.dilation))

    def golden(self, x):
        oh, ow = self.output_size(*x.shape[2:])
        rows = [self._taps(i, oh, x.shape[2], 0) for i in range(self.kernel[0])]
        cols = [self._taps(j, ow, x.shape[3], 1) for j in range(self.kernel[1])]
        out = np.zeros(x.shape[:2] + (oh, ow), np.uint8)
        for r in rows:
            for c in cols:
                tap = np.zeros_like(out)
                inside = (r >= 0)[:, None] & (c >= 0)[None, :]
                tap[:, :, inside] = x[:, :, np.clip(r, 0, None)][:, :, :, np.clip(c, 0, None)][:, :, inside]
                out = np.maximum(out, tap)
        return out

    def _taps(self, i, outputs, size, axis):
        """The input index tap i of each output reads along `axis`, -1 where it is padding."""
        idx = np.arange(outputs) * self.stride[axis] - self.padding[axis] + i * self.dilation[axis]
        if self.clamp_taps:
            return np.clip(idx, 0, size - 1)
        return np.where((idx >= 0) & (idx < size), idx, -1)

    def to_relax(self, r, x):
        if self.clamp_taps and any(self.padding) and any(d > 1 for d in self.dilation):
            # pad by repeating the border pixels, then pool without padding
            _, _, h, w = (int(d) for d in x.ty.shape)
            for axis, (size, pad) in enumerate(zip((h, w), self.padding)):
                if pad:
                    index = np.clip(np.arange(-pad, size + pad), 0, size - 1).astype(np.int32)
                    x = r.bb.emit(relax.op.take(x, r.const(index, "int32"), axis=2 + axis))
            return r.bb.emit(relax.op.nn.max_pool2d(x, self.kernel, self.stride, (0, 0), self.dilation,
                                                    ceil_mode=False))
        # TVM pads a uint8 max-pool with 0, which never wins a window holding any input pixel
        return r.bb.emit(relax.op.nn.max_pool2d(x, self.kernel, self.stride, self.padding, self.dilation,
                                                ceil_mode=self.ceil_mode))

    def torch_replay(self, t):
        return F.max_pool2d(t, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode)


def pooled_size(size, k, s, p, d, ceil_mode):
    """torch's pooling_output_shape."""
    out = (size + 2 * p - d * (k - 1) - 1 + ((s - 1) if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _max_pool(parser, what, kernel, stride, padding, dilation, ceil_mode):
    parser.need_quantized(what)
    layer = MaxPool2d(pair(kernel), pair(stride or kernel), pair(padding), pair(dilation), bool(ceil_mode),
                      clamp_taps=parser.engine == "qnnpack" and not ceil_mode)
    x = parser.examples[0]
    if x.dim() != 4:
        parser.fail(f"{what} on a {x.dim()}-d tensor (0201 pools [N, C, H, W])")
    out = layer.output_size(int(x.shape[2]), int(x.shape[3]))
    if not layer.clamp_taps and x.shape[2:] == (1, 1) and x.shape[1] > 1 and out != (1, 1):
        # the NHWC kernel writes this output in the wrong layout
        raise StageError(f"{what}: max-pool of a 1x1 input to a {out[0]}x{out[1]} output, where PyTorch's "
                         f"quantized kernel scrambles the channels; pool a larger input or drop the layer")
    return layer


@module_rule("MaxPool2d")
def parse_max_pool_module(parser, name, module):
    args = graph_constants(module, "aten::max_pool2d")
    if args is None:
        parser.fail(f"module {name} (MaxPool2d, not traced)")
    if parser.qparams is None:
        parser.fail(f"float {name} (MaxPool2d) in the int8 model")
    return _max_pool(parser, f"{name} (MaxPool2d)", *args[:5])


@aten_rule("aten::max_pool2d")
def parse_max_pool_op(parser, node, args):
    return _max_pool(parser, node.kind(), *args[1:6])
