"""keep_freed_memory: large freed blocks are reused instead of mmapped and zero-filled anew (allocator.py)."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# 10 rounds to settle, then 40 rounds of allocating, touching and freeing a 48 MiB block (above glibc's largest mmap threshold,
# like a training step's activations); prints the minor page faults and whether the tuning was applied.
PROBE = """
import resource, sys
sys.path.insert(0, {lib!r})
import torch
from CACIdentifierLib.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
for _ in range(10):  # the heap settles in a few rounds (aligned blocks do not fit the first holes)
    a = torch.ones(48 << 17, dtype=torch.float64)
    del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    a = torch.ones(48 << 17, dtype=torch.float64)  # 48 MiB, every page written (torch does not madvise huge pages)
    del a
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, **env) -> tuple[bool, int]:
    code = PROBE.format(lib=str(ROOT / "CACIdentifier"))
    out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt (Linux); elsewhere keep_freed_memory changes nothing")
def test_freed_large_blocks_are_reused_not_zero_filled_again():
    applied, kept = _faults("keep")
    _, plain = _faults("plain")
    assert applied
    # Each round maps 12,288 fresh 4 KiB pages with glibc's defaults; kept, the settled heap maps none.
    assert plain > 30 * 12_288, plain
    assert kept < plain / 8, (kept, plain)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt (Linux)")
def test_opt_out_keeps_glibc_defaults():
    applied, faults = _faults("keep", CAC_SYSTEM_MALLOC="1")
    assert not applied and faults > 30 * 12_288


# A 256 MiB block freed under keep_freed_memory stays resident (no trimming); release_freed_memory hands it back.
RELEASE_PROBE = """
import sys
import numpy as np
sys.path.insert(0, {lib!r})
from CACIdentifierLib.allocator import keep_freed_memory, release_freed_memory
assert keep_freed_memory()
page = __import__("os").sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page >> 20
a = np.ones(256 << 17)  # 256 MiB, every page written
b = np.ones(1 << 10)  # allocated after it
high = rss()
del a
kept = rss()
print(release_freed_memory(), high, kept, rss())
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc_trim (Linux)")
def test_release_freed_memory_hands_kept_pages_back():
    out = subprocess.run([sys.executable, "-c", RELEASE_PROBE.format(lib=str(ROOT / "CACIdentifier"))],
                         capture_output=True, text=True, check=True).stdout.split()
    called, high, kept, released = out[0] == "True", *map(int, out[1:])
    assert called
    assert kept > high - 32, (high, kept)  # kept: the freed block is still resident
    assert released < kept - 200, (kept, released)  # handed back
