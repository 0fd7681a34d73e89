"""The backends the compiler can be handed, by name: each is one object (utils.aot.backends.
generic.GenericBackend says what it decides)."""
from utils.aot.backends.cortex_m import CORTEX_M
from utils.aot.backends.generic import GENERIC

BACKENDS = {backend.name: backend for backend in (GENERIC, CORTEX_M)}
