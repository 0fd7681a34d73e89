"""The AOT compiler: a PyTorch model → a standalone C library with microTVM's AOT API
(tvmgen_default_run) in Model Library Format, on Apache TVM 0.27 (Relax → TIR → C).

    model_file   read and classify the model file (int8 TorchScript / fp32)
    int8         lower the converted int8 modules to Relax; numpy golden; torch replay
    fp32         torch.export + TVM's PyTorch frontend
    lower        Relax pipeline, MCU schedule (no workspace), TIR → C
    emit         the AOT glue: planned `main` → C calls on one static arena; the header
    mlf          the Model Library Format tar
    compiler     all of the above: compile_model(source, out_tar)
    host         HostLibrary: the tar compiled with gcc, run through ctypes
    verify       comparison with PyTorch; Cortex-M7 cross-compile, sizes, nm -u
    stage        what 0201tvm_no_optim.py runs
"""
