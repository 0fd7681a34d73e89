"""The golden int8 model: every layer's numpy arithmetic (utils.aot.layers), in graph order.
It is the truth the generated C is tested against, bit for bit; PyTorch is its own truth."""
from utils.aot.torchscript import INPUT


def golden_int8(layers, x, stop_after=None):
    """Run the layers on float32 input x in numpy; `stop_after` (a layer index) returns that
    layer's output instead of the model's."""
    values = {INPUT: x}
    for index, layer in enumerate(layers):
        values[layer.output] = layer.golden(*[values[name] for name in layer.inputs])
        if stop_after == index:
            return values[layer.output]
    return values[layers[-1].output]
