"""0202's Cortex-M optimizations on top of the 0201 compiler.

    int8       int8 layers → hand-scheduled TIR kernels (conv + ReLU + max-pool fused, uint8
               activations, int8 weights) whose inner tiles call DSP micro-kernels through
               T.call_extern
    schedule   dlight schedule rules for what goes through TVM's legalized TIR (fp32)
"""
