"""A built-in stand-in for SiliconFlow's batch API: seeded batches served over local HTTP."""

from .files import ResultFile
from .server import DEFAULT_API_KEY, Fault, Faults, Reply, Request, Simulator, serve
from .world import TERMINAL, UnknownBatchError, World

__all__ = [
    "DEFAULT_API_KEY",
    "TERMINAL",
    "Fault",
    "Faults",
    "Reply",
    "Request",
    "ResultFile",
    "Simulator",
    "UnknownBatchError",
    "World",
    "serve",
]
