"""The Cortex-M backend (0202): the generic backend plus kernels written for the Cortex-M.

    int8       int8 layers → hand-scheduled TIR kernels (conv + ReLU + max-pool fused, uint8
               activations, int8 weights) whose inner tiles call DSP micro-kernels
               (microkernels.h) through T.call_extern
    schedule   Relax rewrites and dlight schedule rules for what goes through TVM's
               legalized TIR (fp32)

Its libraries must give the same bits as the generic backend's for the same model.
"""
from utils.aot.backends.generic import GENERIC, GenericBackend
from utils.aot.backends.cortex_m.int8 import int8_to_relax_cortex_m, with_microkernels
from utils.aot.backends.cortex_m.schedule import cortex_m_relax_passes, cortex_m_schedule_rules


class CortexMBackend(GenericBackend):
    name = "cortex_m"
    golden = GENERIC
    # Relax's storage sharing may park a small tensor in a big block that then stays alive
    tensor_lifetimes = True
    # built at -O2, where inlining the glue's helpers into every call costs flash
    glue_helpers_out_of_line = True

    def int8_to_relax(self, layers, input_shape):
        return int8_to_relax_cortex_m(layers, input_shape)

    def relax_passes(self):
        return cortex_m_relax_passes()

    def schedule_rules(self):
        return cortex_m_schedule_rules() + super().schedule_rules()

    def finish_kernels(self, kernels_c, kind):
        if kind == "int8":
            return with_microkernels(kernels_c)
        return kernels_c, ""

    def cflags(self, kind):
        # int8 kernels are scheduled for -O2 (at -Os gcc spills the micro-kernels'
        # accumulators); fp32 ones for the firmware's -Os (at -O2 gcc splits each VMLA into
        # VMUL + VADD)
        return ["-O2"] if kind == "int8" else []


CORTEX_M = CortexMBackend()
