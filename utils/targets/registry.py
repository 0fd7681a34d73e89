"""The stand-in targets by name: the names `--target` takes, each its module in utils/targets/.
A new target is a module there (see utils/targets/__init__.py for what it provides) and one
entry here."""
from utils.targets import TargetError, linux_process, native64, qemu_m7

TARGETS = {module.NAME: module for module in (linux_process, qemu_m7, native64)}
DEFAULT_TARGET = qemu_m7.NAME


def target_module(name: str):
    """The module of the target called `name`; an unknown name is a one-line TargetError."""
    try:
        return TARGETS[name]
    except KeyError:
        raise TargetError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}") from None
