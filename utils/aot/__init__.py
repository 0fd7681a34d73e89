"""The AOT compiler: a PyTorch model → a standalone C library with microTVM's AOT API
(tvmgen_default_run) in Model Library Format, on Apache TVM 0.27 (Relax → TIR → C).

Layers, each importing only from those below it:

    stage          what the compile stages (0201, 0202) run: compile, verify, report
    compiler       model file + backend → MLF tar: compile_model(source, out_tar, backend)
    backends       one object each: generic (0201), cortex_m (0202): lowering to Relax, Relax
                   passes, TIR schedule rules, tensor lifetimes, glue style, cflags
    torchscript    a traced int8 TorchScript → layer records; PyTorch's own replay of them
    golden         the golden numpy int8 model (each layer's arithmetic, in order)
    layers         the int8 layer types, one unit each: record, parse rule, golden numpy,
                   Relax lowering
    fp32           torch.export + TVM's PyTorch frontend
    model_file     read and classify the model file (int8 TorchScript / fp32)
    lower          the Relax pipeline and TIR → C
    emit           the AOT glue: planned `main` → C calls on one static arena; the header
    mlf            the Model Library Format layout: paths, pack, unpack, metadata, the tap
    host_library   HostLibrary: the tar compiled with gcc, run through ctypes
    verify         comparing outputs; Cortex-M7 cross-compile, sizes, nm -u
"""
