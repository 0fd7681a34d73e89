"""The Cortex-M backend (0202): the generic backend plus kernels written for the Cortex-M.

    int8       a plain chain of int8 layers → hand-scheduled TIR kernels (conv + ReLU +
               max-pool fused, uint8 activations, int8 weights) whose inner tiles call DSP
               micro-kernels (microkernels.h) through T.call_extern
    graph      any other int8 graph → one kernel per layer on channels-last tensors
               (kernels_nhwc.h), the generic lowering for layers without one
    schedule   Relax rewrites and dlight schedule rules for what goes through TVM's
               legalized TIR (fp32)

Its libraries must give the same bits as the generic backend's for the same model.
"""
import re
from pathlib import Path

from utils.cli import StageError
from utils.aot.backends.generic import GENERIC, GenericBackend
from utils.aot.backends.cortex_m.graph import int8_to_relax_graph
from utils.aot.backends.cortex_m.int8 import int8_to_relax_cortex_m, with_microkernels
from utils.aot.backends.cortex_m.schedule import cortex_m_relax_passes, cortex_m_schedule_rules


KERNELS_NHWC_H = Path(__file__).with_name("kernels_nhwc.h")
NHWC_KERNEL_CALL = re.compile(r"\butvm_((pointwise|conv|depthwise|dense)(_pair_add|_add|_lut)?_u8s(8|16)|avgpool_u8|quantize_f32_u8)\(")


class CortexMBackend(GenericBackend):
    name = "cortex_m"
    golden = GENERIC
    # Relax's storage sharing may park a small tensor in a big block that then stays alive
    tensor_lifetimes = True
    # built at -O2, where inlining the glue's helpers into every call costs flash
    glue_helpers_out_of_line = True

    def int8_to_relax(self, layers, input_shape):
        # the chain planner's fused kernels where it takes the model, else one kernel per layer
        try:
            return int8_to_relax_cortex_m(layers, input_shape)
        except StageError:
            return int8_to_relax_graph(layers, input_shape)

    def relax_passes(self):
        return cortex_m_relax_passes()

    def schedule_rules(self):
        return cortex_m_schedule_rules() + super().schedule_rules()

    def finish_kernels(self, kernels_c, kind):
        if kind == "int8":
            kernels_c, before = with_microkernels(kernels_c)
            if NHWC_KERNEL_CALL.search(kernels_c):
                before += f"/* ---- layer kernels (utils/aot/backends/cortex_m/{KERNELS_NHWC_H.name}) ---- */\n"
                before += KERNELS_NHWC_H.read_text() + "\n"
            return kernels_c, before
        return kernels_c, ""

    def cflags(self, kind):
        # int8 kernels are scheduled for -O2 (at -Os gcc spills the micro-kernels'
        # accumulators); fp32 ones for the firmware's -Os (at -O2 gcc splits each VMLA into
        # VMUL + VADD)
        return ["-O2"] if kind == "int8" else []


CORTEX_M = CortexMBackend()
