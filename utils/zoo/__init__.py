"""The model zoo: the networks people build for microcontrollers, each compiled by the
project's compiler and checked against PyTorch (`python3 -m utils.zoo`, reports/zoo.json).

    models   the networks in PyTorch and the MAC counter
    catalog  which networks, on which inputs, with which weights recipe
    make     their int8 weights: QAT on MNIST, or random + PTQ on synthetic inputs
    check    compile with each backend, run on the host, compare with PyTorch, report
"""
