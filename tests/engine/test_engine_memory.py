"""Freed heap memory goes back to the operating system (what keeps a long run's resident memory flat), the hook
that does it during training runs on its period only, and a fixed mmap threshold keeps large blocks out of the
heap."""
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from focus_detr.engine import memory
from focus_detr.engine.hooks import ReleaseFreedMemoryHook

glibc_only = pytest.mark.skipif(memory._malloc_trim() is None, reason="the C library has no malloc_trim")

# One 2 MiB block freed (glibc then raises its dynamic mmap threshold past 2 MiB), then 50 more, all but the last
# freed: with the dynamic threshold they live in the heap and stay resident; with a fixed 1 MiB threshold each is
# mapped and unmapped on its own.
_LARGE_BLOCKS = textwrap.dedent(
    """
    import ctypes, sys
    from focus_detr.engine.memory import set_mmap_threshold

    def rss_mib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    if sys.argv[1] == "fixed":
        assert set_mmap_threshold(1)
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    libc.free(libc.malloc(2 << 20))
    blocks = [libc.malloc(2 << 20) for _ in range(50)]
    for block in blocks:
        libc.memset(block, 1, 2 << 20)
    before = rss_mib()
    for block in blocks[:-1]:
        libc.free(block)
    print(before - rss_mib())
    """
)

# 200 MiB in 4 KiB blocks (below glibc's mmap threshold: they live in the heap); all but the last freed, so the heap's
# top stays in use and only malloc_trim can return the free pages below it.
_FRAGMENTED_HEAP = textwrap.dedent(
    """
    import ctypes
    from focus_detr.engine.memory import release_freed_memory

    def rss_mib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    blocks = [libc.malloc(4096) for _ in range(51200)]
    for block in blocks:
        libc.memset(block, 1, 4096)
    for block in blocks[:-1]:
        libc.free(block)
    before = rss_mib()
    released = release_freed_memory()
    print(released, before - rss_mib())
    """
)


@glibc_only
def test_freed_heap_pages_go_back_to_the_operating_system():
    result = subprocess.run([sys.executable, "-c", _FRAGMENTED_HEAP], capture_output=True, text=True, check=True)
    released, dropped_mib = result.stdout.split()
    assert released == "True"
    assert float(dropped_mib) > 150, f"resident memory dropped by {dropped_mib} MiB only"


def test_hook_releases_memory_every_period_only(monkeypatch):
    calls = []
    monkeypatch.setattr("focus_detr.engine.hooks.release_freed_memory", lambda: calls.append(hook.trainer.iter))
    hook = ReleaseFreedMemoryHook(period=3)
    hook.trainer = SimpleNamespace(iter=0)
    for iteration in range(9):
        hook.trainer.iter = iteration
        hook.after_step()
    assert calls == [2, 5, 8]

    never = ReleaseFreedMemoryHook(period=0)
    never.trainer = SimpleNamespace(iter=99)
    never.after_step()
    assert calls == [2, 5, 8]
    with pytest.raises(ValueError, match="release_freed_memory_period"):
        ReleaseFreedMemoryHook(period=-1)


@glibc_only
def test_fixed_mmap_threshold_returns_large_blocks_when_freed():
    def dropped_mib(mode):
        result = subprocess.run([sys.executable, "-c", _LARGE_BLOCKS, mode], capture_output=True, text=True, check=True)
        return float(result.stdout)

    assert dropped_mib("fixed") > 80  # 49 x 2 MiB unmapped at free
    assert dropped_mib("dynamic") < 20  # glibc's default keeps them in the heap


def test_mmap_threshold_out_of_range_is_one_clear_error():
    for bad in (0, -1, 33):
        with pytest.raises(ValueError, match="malloc_mmap_threshold_mib must be in"):
            memory.set_mmap_threshold(bad)
