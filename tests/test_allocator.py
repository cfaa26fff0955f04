"""device.tune_allocator: glibc's malloc keeps step-sized buffers in the heap, and the switch turns it off."""

import os
import subprocess
import sys

import pytest
import torch

from birnn.system import device as device_module
from birnn.system.device import setup_device
from conftest import ROOT, make_cfg

glibc = pytest.mark.skipif(not hasattr(os, "confstr") or sys.platform != "linux", reason="glibc only")

# In a fresh process: set the device up as birnn.train does, then ask glibc where a 16 MiB block comes from
# (mallinfo2's count of mmapped blocks). glibc's default sends it to a fresh mmap; the tuned heap keeps it.
PROBE = """
import ctypes, sys
sys.path.insert(0, "tests")
from conftest import make_cfg
from birnn.system.device import setup_device

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
setup_device(make_cfg(*sys.argv[1:]).device)
before = libc.mallinfo2().hblks
block = libc.malloc(16 << 20)
print("mmap" if libc.mallinfo2().hblks > before else "heap")
"""


def block_source(*overrides: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@glibc
def test_cpu_runs_keep_step_sized_blocks_in_the_heap_unless_turned_off():
    assert block_source("device=cpu") == "heap"
    assert block_source("device=cpu", "device.tune_allocator=false") == "mmap"


def test_on_by_default_in_every_device_option():
    for option in ("auto", "cpu", "cuda", "mps"):
        assert make_cfg(f"device={option}").device.tune_allocator is True


def test_cuda_runs_leave_the_allocator_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(device_module, "tune_allocator", lambda: calls.append(1) or True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    assert setup_device(make_cfg("device=cuda", "device.num_threads=1").device).type == "cuda"
    assert calls == []
    setup_device(make_cfg("device=cpu", "device.num_threads=1").device)
    assert calls == [1]
