"""The int8 layer types, one unit each (record, parse rule, golden numpy, Relax lowering);
importing the package registers every unit's parse rules (utils.aot.layers.base)."""
from utils.aot.layers.activation import QRelu
from utils.aot.layers.avgpool import QAvgPool
from utils.aot.layers.base import ATEN_RULES, FALLBACK_RULES, F32, MODULE_RULES, Layer
from utils.aot.layers.conv import QConv2d
from utils.aot.layers.float_ops import FloatScalarOps
from utils.aot.layers.joins import QAdd, QCat, QMul
from utils.aot.layers.linear import QLinear
from utils.aot.layers.lut import QLookup
from utils.aot.layers.pool import MaxPool2d
from utils.aot.layers.quantize import Dequantize, Quantize
from utils.aot.layers.reshape import Flatten, Permute, Reshape, Slice
from utils.aot.layers.softmax import FloatActivation, LogSoftmax, Softmax

__all__ = ["ATEN_RULES", "F32", "FALLBACK_RULES", "MODULE_RULES", "Dequantize", "Flatten", "FloatScalarOps",
           "FloatActivation", "Layer", "LogSoftmax", "MaxPool2d", "Permute", "QAdd", "QAvgPool", "QCat", "QConv2d", "QLinear",
           "QLookup", "QMul", "QRelu", "Quantize", "Reshape", "Slice", "Softmax"]
