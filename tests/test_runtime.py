"""diffusion_seg/runtime.py: glibc serves a large tensor from its heap (not a fresh mapping)
and keeps the memory when the tensor is freed, for the next one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import compose_config

# mallinfo2 (glibc >= 2.33): hblkhd = bytes in mmap'd blocks, fordblks = free bytes kept in
# the heap. (Page-fault counts would say the same but are not deterministic on a VM whose
# host reclaims idle pages.)
PROBE = """
import ctypes, sys, torch
from diffusion_seg.runtime import keep_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
x = torch.ones(64 * 2**20 // 4)  # 64 MiB
mapped = libc.mallinfo2().hblkhd >= 2**26
del x
kept = libc.mallinfo2().fordblks >= 2**26
print(applied, mapped, kept)
"""


def probe(mode: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
@pytest.mark.slow  # allocates 600 MB
def test_large_tensors_come_from_the_heap_and_stay_there() -> None:
    assert probe("keep") == ["True", "False", "True"]  # not mapped; kept after the free
    assert probe("default") == ["None", "True", "False"]  # glibc's default: mapped, returned


def test_every_command_has_the_key() -> None:
    for name, extra in (("train", []), ("eval", ["ckpt_path=x"]), ("predict", ["ckpt_path=x", "input=x", "output=x"])):
        assert compose_config(extra, config_name=name).malloc_keep_freed is True
