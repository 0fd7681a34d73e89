"""MaxPool2d on uint8 (max commutes with the monotonic quantization, so no requantization)."""
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

    def golden(self, x):
        if self.ceil_mode or any(self.padding) or any(d != 1 for d in self.dilation):
            raise StageError("the golden max-pool handles no padding, dilation or ceil_mode")
        (kh, kw), (sh, sw) = self.kernel, self.stride
        oh = (x.shape[2] - kh) // sh + 1
        ow = (x.shape[3] - kw) // sw + 1
        out = np.zeros(x.shape[:2] + (oh, ow), x.dtype)
        for i in range(kh):
            for j in range(kw):
                out = np.maximum(out, x[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw])
        return out

    def to_relax(self, r, x):
        return r.bb.emit(relax.op.nn.max_pool2d(x, self.kernel, self.stride, self.padding, self.dilation,
                                                ceil_mode=self.ceil_mode))

    def torch_replay(self, t):
        return F.max_pool2d(t, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode)


def _max_pool(kernel, stride, padding, dilation, ceil_mode):
    return MaxPool2d(pair(kernel), pair(stride or kernel), pair(padding), pair(dilation), bool(ceil_mode))


@module_rule("MaxPool2d")
def parse_max_pool_module(parser, name, module):
    args = graph_constants(module, "aten::max_pool2d")
    if args is None:
        parser.fail(f"module {name} (MaxPool2d, not traced)")
    layer = _max_pool(*args)
    if parser.qparams is None:
        parser.fail(f"float {name} (MaxPool2d) in the int8 model")
    return layer


@aten_rule("aten::max_pool2d")
def parse_max_pool_op(parser, node, args):
    parser.need_quantized(node.kind())
    return _max_pool(*args[1:6])
