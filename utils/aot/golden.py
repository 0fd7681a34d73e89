"""The golden int8 model: every layer's numpy arithmetic (utils.aot.layers), in order. It is
the truth the generated C is tested against, bit for bit; PyTorch is its own truth."""


def golden_int8(layers, x, stop_after=None):
    """Run the layers on float32 input x in numpy; `stop_after` returns an intermediate."""
    for index, layer in enumerate(layers):
        x = layer.golden(x)
        if stop_after == index:
            return x
    return x
