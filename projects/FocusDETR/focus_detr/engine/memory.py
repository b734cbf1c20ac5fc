"""Handing freed heap memory back to the operating system during long runs.

glibc keeps memory that a process frees inside its heap for reuse, and returns it only from the heap's top. A training
step frees many tensors of varying sizes (glibc moves its mmap threshold up after large frees, so later large tensors
land in the heap too), and the free space left between live blocks is never returned: the soak (``tools/soak.py``)
measured the trainer's resident memory growing 8.9% over 800 iterations while the bytes actually in use grew 5%
(276 -> 291 MiB against a heap of 444 -> 608 MiB). ``malloc_trim`` releases the free pages inside the heap too.
A fixed mmap threshold keeps large blocks out of the heap altogether (each is mapped on allocation and unmapped when
freed), at the price of fresh page faults for every large tensor.
"""
import ctypes
import functools
import sys

__all__ = ["release_freed_memory", "set_mmap_threshold"]

_M_MMAP_THRESHOLD = -3  # mallopt parameter, <malloc.h>
# glibc refuses larger values on 64-bit systems (HEAP_MAX_SIZE / 2)
MAX_MMAP_THRESHOLD_MIB = 32


@functools.lru_cache(maxsize=None)
def _glibc_function(name, argtypes):
    """glibc's function ``name``, or None where the C library has none (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
    except OSError:
        return None
    function = getattr(libc, name, None)
    if function is not None:
        function.argtypes = list(argtypes)
        function.restype = ctypes.c_int
    return function


def _malloc_trim():
    return _glibc_function("malloc_trim", (ctypes.c_size_t,))


def release_freed_memory() -> bool:
    """Returns the free pages of the C heap to the operating system (glibc's ``malloc_trim(0)``). True when some
    memory was released; False when none was, or where the C library cannot do it."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def set_mmap_threshold(mib: float) -> bool:
    """Fixes glibc's mmap threshold at ``mib`` MiB (0 < mib <= 32): blocks from that size on are mapped when allocated
    and returned to the operating system when freed, instead of glibc raising the threshold after large frees and
    placing them in the heap, where freed space fragments. True when set; False where the C library cannot."""
    if not 0 < mib <= MAX_MMAP_THRESHOLD_MIB:
        raise ValueError(f"train.malloc_mmap_threshold_mib must be in (0, {MAX_MMAP_THRESHOLD_MIB}] MiB, or 0 to leave "
                         f"glibc's own threshold, got {mib}")
    mallopt = _glibc_function("mallopt", (ctypes.c_int, ctypes.c_int))
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, int(mib * 2**20)))
