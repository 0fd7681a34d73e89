"""Joins of quantized tensors: QFunctional add / add_relu / mul / mul_relu (traced as
quantized::add, quantized::add_relu, quantized::mul, quantized::mul_relu) and cat
(quantized::cat and quantized::cat_relu from QFunctional.cat, aten::cat from torch.cat).

Each golden function is what torch 2.14 runs for uint8 tensors, bit for bit (the exhaustive
tests in tests/test_layer_joins.py hold it against PyTorch on every input pair):

  add      (qnnpack's fixed-point q8vadd, same shapes only; torch falls back to float for others)
           r_a = f32(s_a) / f32(s_out), r_b likewise; e = the float exponent of max(r_a, r_b);
           shift = 21 - e; m_a = rint(r_a * 2^shift), m_b likewise (round half to even);
           acc = m_a * q_a + m_b * q_b - (m_a * zp_a + m_b * zp_b)      (fits in int32)
           q = (acc >> shift) + ((acc & (2^shift - 1)) - (acc < 0) > 2^(shift-1) - 1)
               i.e. acc / 2^shift rounded half away from zero
           out = clip(q + zp_out, lo, 255), lo = zp_out for add_relu, else 0
  mul      (torch's qmul kernel on every engine: integer product, float requantization)
           M = (f32(s_a) * f32(s_b)) * (1 / f32(s_out)), all float32
           out = clip(rint(f32((q_a - zp_a) * (q_b - zp_b)) * M) + zp_out, lo, 255); broadcasts
  cat      an input whose scale and zero point are the output's is copied; another is requantized:
             scalar  v = f32(s_in * (q - zp_in)),  out = clip(rint(v * (1.0f / f32(s_out))) + zp_out)
             vector  v = fma(s_in, q, f32(s_in * -zp_in)),  out = clip(rint(v * f32(1.0 / s_out)) + zp_out)
           The vector form is qcat_nhwc_kernel's SIMD body, which torch runs when the cat is along
           dim 1 of channels-last 4-d tensors (every convolution's output) on the first
           8 * floor(C_in / 8) channels of each input (the AVX2 kernel's 8-float vectors, which x86
           runs under AVX2 and AVX-512 alike); the other channels, and every cat torch does by
           dequantize → float cat → quantize, take the scalar form. The two differ rarely (for one
           random (s_in, zp_in, s_out, zp_out) in 3000, on one of its 256 bytes), by one step.
           cat_relu: max(out, zp_out).
           TorchScript merges cat([.., cat([a, b]), ..]) into cat([.., a, b, ..]) when the inner cat
           feeds only the outer one (see _merged_into_consumer); the compiler merges the same cats.

Lowering: add in int32 (multiply, and, shifts, compares); mul as the integer product and the
float requantization every requantizing layer uses; cat as a concat of the inputs, each
requantized input through 256-byte lookup tables built from the golden functions above.
"""
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from tvm import relax

from utils.cli import StageError, one_line
from utils.aot.layers.base import F32, Layer, aten_rule

# floats in the AVX2 vector that qcat_nhwc_kernel requantizes a run of channels with
CAT_VECTOR_FLOATS = 8
IDENTITY = np.arange(256, dtype=np.uint8)


# ----------------------------------------------------------------------------- add

def add_parameters(a_scale, b_scale, out_scale):
    """qnnpack's (a_multiplier, b_multiplier, shift) for an add, or a reason it has none."""
    # pytorch_qnnp_create_add_nc_q8 takes the scales as float and divides in float
    ratios = [F32(F32(s) / F32(out_scale)) for s in (a_scale, b_scale)]
    if any(not (F32(2.0 ** -14) <= r < F32(2.0 ** 8)) for r in ratios):
        return None, "input-to-output scale ratio outside qnnpack's [2**-14, 2**8)"
    exponent = int(max(ratios).view(np.uint32) >> 23) - 127
    shift = 21 - exponent
    if shift > 31:  # qnnpack asserts this away; the shift would be undefined in C
        return None, "input-to-output scale ratio below 2**-10 (qnnpack's shift would exceed 31)"
    a_mult, b_mult = (int(np.rint(r * F32(2.0 ** shift))) for r in ratios)  # exact power-of-two scaling
    return (a_mult, b_mult, shift), None


@dataclass
class QAdd(Layer):
    op: str                     # quantized::add | quantized::add_relu
    a_zero_point: int
    b_zero_point: int
    a_multiplier: int
    b_multiplier: int
    shift: int
    out_scale: float
    out_zero_point: int
    relu: bool

    @property
    def zero_point_product(self):
        return -(self.a_multiplier * self.a_zero_point + self.b_multiplier * self.b_zero_point)

    @property
    def remainder_mask(self):
        return (1 << self.shift) - 1

    def golden(self, a, b):
        acc = (a.astype(np.int64) * self.a_multiplier + b.astype(np.int64) * self.b_multiplier
               + self.zero_point_product)
        remainder = (acc & self.remainder_mask) - (acc < 0)
        q = (acc >> self.shift) + (remainder > (self.remainder_mask >> 1))
        low = self.out_zero_point if self.relu else 0
        return np.clip(q + self.out_zero_point, low, 255).astype(np.uint8)

    def to_relax(self, r, a, b):
        bb = r.bb

        def i32(value):
            return r.const(value, "int32")

        a = bb.emit(relax.op.multiply(bb.emit(relax.op.astype(a, "int32")), i32(self.a_multiplier)))
        b = bb.emit(relax.op.multiply(bb.emit(relax.op.astype(b, "int32")), i32(self.b_multiplier)))
        acc = bb.emit(relax.op.add(bb.emit(relax.op.add(a, b)), i32(self.zero_point_product)))
        negative = bb.emit(relax.op.astype(bb.emit(relax.op.less(acc, i32(0))), "int32"))
        remainder = bb.emit(relax.op.subtract(bb.emit(relax.op.bitwise_and(acc, i32(self.remainder_mask))),
                                              negative))
        up = bb.emit(relax.op.astype(bb.emit(relax.op.greater(remainder, i32(self.remainder_mask >> 1))),
                                     "int32"))
        q = bb.emit(relax.op.add(bb.emit(relax.op.right_shift(acc, i32(self.shift))), up))
        q = bb.emit(relax.op.add(q, i32(self.out_zero_point)))
        low = self.out_zero_point if self.relu else 0
        q = bb.emit(relax.op.minimum(bb.emit(relax.op.maximum(q, i32(low))), i32(255)))
        return bb.emit(relax.op.astype(q, "uint8"))

    def torch_replay(self, a, b):
        return _op(self.op)(a, b, self.out_scale, self.out_zero_point)


def add_layer(kind, a_qparams, b_qparams, out_scale, out_zero_point, what=None):
    """The QAdd torch runs for `kind` on operands of one shape quantized (scale, zero point)."""
    what = what or kind
    params, why = add_parameters(a_qparams[0], b_qparams[0], out_scale)
    if params is None:
        raise StageError(f"{what} with scales {a_qparams[0]:.6g}, {b_qparams[0]:.6g} → {out_scale:.6g}: {why}; "
                         f"0201 cannot lower it")
    relu = kind.endswith("_relu")
    if relu and out_zero_point == 255:
        raise StageError(f"{what} with output zero point 255: qnnpack refuses an empty output range")
    return QAdd(op=kind, a_zero_point=int(a_qparams[1]), b_zero_point=int(b_qparams[1]), a_multiplier=params[0],
                b_multiplier=params[1], shift=params[2], out_scale=float(out_scale),
                out_zero_point=int(out_zero_point), relu=relu)


@aten_rule("quantized::add", "quantized::add_relu")
def parse_add(parser, node, args):
    kind, what = node.kind(), _described(node)
    (a, b), (out_scale, out_zp) = _binary(parser, what, args)
    if tuple(a.shape) != tuple(b.shape):
        raise StageError(f"{what} of shapes {list(a.shape)} and {list(b.shape)}: torch adds broadcast operands "
                         f"in float, not with qnnpack's add; 0201 adds quantized tensors of one shape only "
                         f"(a per-channel gate is a mul, which broadcasts)")
    engine = getattr(parser, "engine", "qnnpack")
    if engine != "qnnpack":
        raise StageError(f"{what} in a model for the {engine} engine: 0201 matches qnnpack's add only; convert "
                         f"the model with the qnnpack qconfig")
    layer = add_layer(kind, _qparams(a), _qparams(b), out_scale, out_zp, what)
    return _checked(layer, parser, what)


# ----------------------------------------------------------------------------- mul

def mul_multiplier(a_scale, b_scale, out_scale):
    # qmul_kernel: self_scale * other_scale * inv_scale, left to right in float
    return F32(F32(a_scale) * F32(b_scale)) * (F32(1.0) / F32(out_scale))


@dataclass
class QMul(Layer):
    op: str                     # quantized::mul | quantized::mul_relu
    a_zero_point: int
    b_zero_point: int
    multiplier: np.float32
    out_scale: float
    out_zero_point: int
    relu: bool

    def golden(self, a, b):
        product = (a.astype(np.int32) - self.a_zero_point) * (b.astype(np.int32) - self.b_zero_point)
        q = np.rint(product.astype(F32) * self.multiplier) + F32(self.out_zero_point)
        low = self.out_zero_point if self.relu else 0
        return np.clip(q, low, 255).astype(np.uint8)

    def to_relax(self, r, a, b):
        bb = r.bb
        a = bb.emit(relax.op.subtract(bb.emit(relax.op.astype(a, "int32")), r.const(self.a_zero_point, "int32")))
        b = bb.emit(relax.op.subtract(bb.emit(relax.op.astype(b, "int32")), r.const(self.b_zero_point, "int32")))
        x = bb.emit(relax.op.astype(bb.emit(relax.op.multiply(a, b)), "float32"))  # |product| < 2**16: exact
        x = bb.emit(relax.op.round(bb.emit(relax.op.multiply(x, r.const(self.multiplier, "float32")))))
        x = r.add_zero_point(x, self.out_zero_point)
        low = self.out_zero_point if self.relu else 0
        x = bb.emit(relax.op.clip(x, relax.prim_value(float(low)), relax.prim_value(255.0)))
        return bb.emit(relax.op.astype(x, "uint8"))

    def torch_replay(self, a, b):
        return _op(self.op)(a, b, self.out_scale, self.out_zero_point)


def mul_layer(kind, a_qparams, b_qparams, out_scale, out_zero_point):
    """The QMul torch runs for `kind` on operands quantized (scale, zero point)."""
    return QMul(op=kind, a_zero_point=int(a_qparams[1]), b_zero_point=int(b_qparams[1]),
                multiplier=mul_multiplier(a_qparams[0], b_qparams[0], out_scale), out_scale=float(out_scale),
                out_zero_point=int(out_zero_point), relu=kind.endswith("_relu"))


@aten_rule("quantized::mul", "quantized::mul_relu")
def parse_mul(parser, node, args):
    kind, what = node.kind(), _described(node)
    (a, b), (out_scale, out_zp) = _binary(parser, what, args)
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise StageError(f"{what} of shapes {list(a.shape)} and {list(b.shape)}, which do not broadcast") from None
    return _checked(mul_layer(kind, _qparams(a), _qparams(b), out_scale, out_zp), parser, what)


# ----------------------------------------------------------------------------- cat

def _quantize(v, inv_scale, zero_point):
    return np.clip(np.rint(v * inv_scale) + F32(zero_point), 0, 255).astype(np.uint8)


def requantize_scalar(q, scale, zero_point, out_scale, out_zero_point):
    """dequantize_val then quantize_val (fbgemm's Quantize): torch's scalar loop and its
    dequantize → float → quantize path."""
    v = (F32(scale) * (q.astype(np.int32) - zero_point).astype(F32)).astype(F32)
    return _quantize(v, F32(1.0) / F32(out_scale), out_zero_point)


def requantize_vector(q, scale, zero_point, out_scale, out_zero_point):
    """qcat_nhwc_kernel's SIMD body: Vectorized dequantize (one fused multiply-add with the
    premultiplied zero point), Vec::quantize with the inverse scale taken in double."""
    scale = F32(scale)
    premul = F32(scale * F32(-zero_point))
    # s * q needs at most 32 significant bits and the sum at most 42, so float64 holds the fma's
    # exact value and the cast to float32 is its one rounding
    v = (np.float64(scale) * q.astype(np.float64) + np.float64(premul)).astype(F32)
    return _quantize(v, F32(1.0 / out_scale), out_zero_point)


class Segment(NamedTuple):
    """A run of a cat's input along the cat's axis, as torch sees it: one tensor, or one of the
    tensors of an inner cat that TorchScript merged into this one."""
    size: int                   # along the cat's axis
    scale: float
    zero_point: int
    channels_last: bool         # 4-d and channels-last contiguous


@dataclass
class QCat(Layer):
    op: str                     # quantized::cat | quantized::cat_relu | aten::cat
    dim: int                    # the traced dim argument, as torch received it
    axis: int                   # that dim, non-negative
    segments: tuple             # per input, its Segments (one unless the input is a merged cat)
    out_scale: float
    out_zero_point: int
    relu: bool
    copied: tuple               # per segment: torch copies its bytes (its qparams are the output's)
    vector_channels: tuple      # per segment: leading channels torch requantizes in its SIMD body
    merged: bool = False        # TorchScript merges this cat into the cat that reads it (see below)

    def flat(self):
        return [segment for segments in self.segments for segment in segments]

    def golden(self, *xs):
        if self.merged:
            return np.concatenate(xs, axis=self.axis)
        pieces = [piece for x, segments in zip(xs, self.segments) for piece in _split(x, segments, self.axis)]
        return np.concatenate([self._requantized(i, x) for i, x in enumerate(pieces)], axis=self.axis)

    def _requantized(self, i, x):
        if self.copied[i]:
            return x
        segment = self.flat()[i]
        qparams = (segment.scale, segment.zero_point, self.out_scale, self.out_zero_point)
        y = requantize_scalar(x, *qparams)
        vector = self.vector_channels[i]
        if vector:
            y[:, :vector] = requantize_vector(x[:, :vector], *qparams)
        return np.maximum(y, np.uint8(self.out_zero_point)) if self.relu else y

    def tables(self, i):
        """(table of the SIMD body or None, table of the rest) for segment i; None for a copy."""
        if self.copied[i]:
            return None, None
        segment = self.flat()[i]
        qparams = (segment.scale, segment.zero_point, self.out_scale, self.out_zero_point)
        low = self.out_zero_point if self.relu else 0
        rest = np.maximum(requantize_scalar(IDENTITY, *qparams), low).astype(np.uint8)
        vector = None
        if self.vector_channels[i]:
            vector = np.maximum(requantize_vector(IDENTITY, *qparams), low).astype(np.uint8)
        return vector, rest

    def to_relax(self, r, *xs):
        if self.merged:
            return r.bb.emit(relax.op.concat(list(xs), axis=self.axis))
        pieces = []
        for x, segments in zip(xs, self.segments):
            start = 0
            for segment in segments:
                piece = x if len(segments) == 1 else r.bb.emit(relax.op.strided_slice(
                    x, axes=[self.axis], begin=[start], end=[start + segment.size]))
                pieces.append(self._lowered(r, len(pieces), piece, segment))
                start += segment.size
        if len(pieces) == 1:
            return pieces[0]
        return r.bb.emit(relax.op.concat(pieces, axis=self.axis))

    def _lowered(self, r, i, x, segment):
        vector, rest = self.tables(i)
        split = self.vector_channels[i]
        if vector is None or np.array_equal(vector, rest):
            return _lookup(r, x, rest)
        if split == segment.size:
            return _lookup(r, x, vector)
        head = r.bb.emit(relax.op.strided_slice(x, axes=[1], begin=[0], end=[split]))
        tail = r.bb.emit(relax.op.strided_slice(x, axes=[1], begin=[split], end=[segment.size]))
        return r.bb.emit(relax.op.concat([_lookup(r, head, vector), _lookup(r, tail, rest)], axis=1))

    def torch_replay(self, *ts):
        if self.merged:
            # the bytes of the inputs, side by side: the cat that reads them requantizes each run
            first = self.flat()[0]
            raw = torch.cat([t.int_repr() for t in ts], self.axis)
            return _quantized(raw, first.scale, first.zero_point, False)
        tensors = [piece for t, segments in zip(ts, self.segments) for piece in _split_tensor(t, segments, self.axis)]
        if self.op == "aten::cat":
            with warnings.catch_warnings():
                # torch warns on every call that the inputs' qparams differ; the model's own
                # forward already said so once
                warnings.simplefilter("ignore")
                return torch.cat(tensors, self.dim)
        return _op(self.op)(tensors, self.dim, self.out_scale, self.out_zero_point)


def _split(x, segments, axis):
    if len(segments) == 1:
        return [x]
    bounds = np.cumsum([segment.size for segment in segments])[:-1]
    return np.split(x, bounds, axis=axis)


def _split_tensor(t, segments, axis):
    """A merged cat's runs as the tensors torch had: their bytes, qparams and memory layout."""
    if len(segments) == 1:
        return [t]
    raw = t.int_repr()
    pieces, start = [], 0
    for segment in segments:
        part = raw.narrow(axis, start, segment.size)
        pieces.append(_quantized(part, segment.scale, segment.zero_point, segment.channels_last))
        start += segment.size
    return pieces


def _quantized(raw, scale, zero_point, channels_last):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates making quantized tensors by hand
        t = torch._make_per_tensor_quantized_tensor(raw.contiguous(), scale, zero_point)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _lookup(r, x, table):
    if table is None or np.array_equal(table, IDENTITY):
        return x
    indices = r.bb.emit(relax.op.astype(x, "int32"))
    return r.bb.emit(relax.op.take(r.const(table, "uint8"), indices, axis=0))


def _merged_into_consumer(node):
    """TorchScript's peephole pass CombineConcats (run on every scripted forward) replaces
    cat([.., cat([a, b]), ..]) by cat([.., a, b, ..]) when the inner cat's one use is the outer
    cat's list and both take the same constant dim. On quantized tensors that changes the
    numbers (a and b are requantized once, to the outer cat's qparams, instead of twice), so
    the compiler merges the same cats."""
    if node.kind() != "aten::cat" or node.inputsAt(0).node().kind() != "prim::ListConstruct":
        return False
    uses = node.output().uses()
    if len(uses) != 1 or uses[0].user.kind() != "prim::ListConstruct":
        return False
    list_uses = uses[0].user.output().uses()
    if len(list_uses) != 1 or list_uses[0].user.kind() != "aten::cat":
        return False
    outer_dim, dim = list_uses[0].user.inputsAt(1), node.inputsAt(1)
    if "prim::Constant" not in (outer_dim.node().kind(), dim.node().kind()) or \
            outer_dim.node().kind() != dim.node().kind():
        return False
    return outer_dim.toIValue() == dim.toIValue()


def segment_of(t, axis):
    """The Segment of a quint8 tensor as a cat's input along `axis`."""
    return Segment(int(t.shape[axis]), float(t.q_scale()), int(t.q_zero_point()),
                   t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def cat_layer(kind, dim, rank, segments, out_qparams=(None, None), merged=False):
    """The QCat torch runs for `kind` along the traced `dim` of inputs of `rank` dims, each input
    a tuple of Segments; `out_qparams` are quantized::cat's (None: the first input's)."""
    axis = dim % rank
    flat = [segment for runs in segments for segment in runs]
    out_scale, out_zp = out_qparams
    if kind == "aten::cat":
        # cat_quantized_cpu: the output takes the first input's quantization, and wraps dim first
        out_scale, out_zp = flat[0].scale, flat[0].zero_point
        simd_dim = axis
    else:
        out_scale = float(out_scale) if out_scale is not None else flat[0].scale
        out_zp = int(out_zp) if out_zp is not None else flat[0].zero_point
        simd_dim = dim  # quantized::cat checks the dim as given: -3 is not the channels-last path
    # quantized_cat_impl: the channels-last kernel for dim 1 of 4-d channels-last tensors, else
    # dequantize, cat in float and quantize
    nhwc = simd_dim == 1 and all(segment.channels_last for segment in flat)
    relu = kind.endswith("_relu")
    copied = tuple(nhwc and not relu and (s.scale, s.zero_point) == (out_scale, out_zp) for s in flat)
    vector = tuple(0 if copy or not nhwc else CAT_VECTOR_FLOATS * (s.size // CAT_VECTOR_FLOATS)
                   for copy, s in zip(copied, flat))
    return QCat(op=kind, dim=dim, axis=axis, segments=tuple(segments), out_scale=out_scale, out_zero_point=out_zp,
                relu=relu, copied=copied, vector_channels=vector, merged=merged)


@aten_rule("quantized::cat", "quantized::cat_relu", "aten::cat")
def parse_cat(parser, node, args):
    kind, what = node.kind(), _described(node)
    if not any(t.is_quantized for t in parser.examples):
        raise StageError(f"{what} of float tensors: 0201 joins quantized tensors only; move the cat before the "
                         f"DeQuantStub")
    tensors = _quint8_inputs(parser, what)
    dim = args[1]
    if not isinstance(dim, int):
        parser.fail(f"op {kind} with a dim that is not a constant")
    ranks = {t.dim() for t in tensors}
    if len(ranks) != 1:
        raise StageError(f"{what} of tensors of ranks {sorted(ranks)}; 0201 joins tensors of one rank")
    rank = ranks.pop()
    producers = {layer.output: layer for layer in parser.layers}
    segments = []
    for value, t in zip(node.inputsAt(0).node().inputs(), tensors):
        producer = producers.get(value.debugName())
        merged = isinstance(producer, QCat) and producer.merged
        segments.append(tuple(producer.flat()) if merged else (segment_of(t, dim % rank),))
    out_qparams = (args[2], args[3]) if kind != "aten::cat" else (None, None)
    layer = cat_layer(kind, dim, rank, segments, out_qparams, merged=_merged_into_consumer(node))
    return _checked(layer, parser, what)


# ----------------------------------------------------------------------------- shared

def _op(kind):
    return getattr(torch.ops.quantized, kind.split("::")[1])


def _quint8_inputs(parser, what):
    for t in parser.examples:
        if not t.is_quantized:
            raise StageError(f"{what} receives a float tensor; quantize every operand (a QuantStub) first")
        if t.dtype != torch.quint8 or t.qscheme() not in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            raise StageError(f"{what} receives a {t.dtype} tensor quantized {t.qscheme()}; 0201 joins per-tensor "
                             f"quint8 tensors only")
    return parser.examples


def _qparams(t):
    return float(t.q_scale()), int(t.q_zero_point())


def _binary(parser, what, args):
    """The two quint8 operands and the (scale, zero point) of a quantized:: binary op."""
    tensors = _quint8_inputs(parser, what)
    if len(tensors) != 2 or len(args) != 4 or args[2] is None or args[3] is None:
        parser.fail(f"op {what} with {len(tensors)} tensor operands")
    return tensors, (float(args[2]), int(args[3]))


def _described(node):
    """The op and where it is in the model, for a refusal: the QFunctional a quantized:: join
    came from (the call of its activation_post_process, which torch traces right after the op),
    else the line of the forward ("aten::cat (model.py:42)"), else the op alone."""
    kind = node.kind()
    nodes = list(node.owningBlock().nodes())
    after = nodes[nodes.index(node) + 1] if nodes.index(node) + 1 < len(nodes) else node
    if after.kind() == "prim::CallMethod" and after.inputsAt(0).node().kind() == "prim::GetAttr":
        names, owner = [], after.inputsAt(0).node()
        while owner.kind() == "prim::GetAttr":
            names.append(owner.s("name"))
            owner = owner.inputsAt(0).node()
        if len(names) > 1 and names[0] == "activation_post_process":
            return f"{kind} ({'.'.join(reversed(names[1:]))})"
    line = str(node.sourceRange()).splitlines()[:1]
    if line and "(" in line[0] and "/torch/" not in line[0]:
        path, _, rest = line[0].rpartition("(")
        number = rest.split(")")[0]
        if number.isdigit():
            return f"{kind} ({path.rsplit('/', 1)[-1]}:{number})"
    return kind


def _checked(layer, parser, what):
    """The layer, once PyTorch has run it on the examples: what torch refuses is one line here,
    not a traceback from the graph walk."""
    try:
        with torch.no_grad():
            layer.torch_replay(*parser.examples)
    except RuntimeError as exc:
        raise StageError(f"{what}: PyTorch refuses it on these operands ({one_line(exc)})") from None
    return layer
