"""retain_freed_memory: after it, a freed 24 MB block is reused without faulting in fresh pages (glibc)."""

import subprocess
import sys

import pytest

# In a fresh process: allocate, touch and free 24 MB three times; print the page faults of the last two rounds.
_SCRIPT = """
import ctypes, resource, sys
from mask2former_sim.utils.memory import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 24 * 2**20
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[1:]))
"""


def _faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(result.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_freed_memory_is_reused_without_page_faults():
    pages = 24 * 2**20 // 4096
    # by default glibc faults in fresh pages again after the first round (mmap, then heap memory trimmed back)
    assert _faults("default") >= pages * 0.9
    assert _faults("retain") < pages // 10  # the heap keeps the block: its pages are already there
