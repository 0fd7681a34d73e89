"""The bounds of a clamp-like node of a torch.export graph (relu6, hardtanh, clamp), for the
project's PT2E quantizer and the compiler's PT2E reader alike."""
import torch
from torch.fx import Node

A = torch.ops.aten


def clamp_bounds(node):
    """(low, high) of a relu6 / hardtanh / clamp node; None for an unbounded side, both None
    when a bound is computed rather than constant."""
    if node.target == A.relu6.default:
        return 0.0, 6.0
    args = list(node.args[1:])
    if node.target in (A.hardtanh.default, A.hardtanh_.default):
        low = args[0] if len(args) > 0 else node.kwargs.get("min_val", -1.0)
        high = args[1] if len(args) > 1 else node.kwargs.get("max_val", 1.0)
    else:
        low = args[0] if len(args) > 0 else node.kwargs.get("min")
        high = args[1] if len(args) > 1 else node.kwargs.get("max")
    if isinstance(low, Node) or isinstance(high, Node):
        return None, None
    return (None if low is None else float(low)), (None if high is None else float(high))
