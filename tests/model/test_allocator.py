"""The malloc settings (model/allocator.py): a freed large tensor's memory is reused, not page-faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Allocates and frees a 64 MB tensor (a step's logits, say) ten times; prints the minor page faults.
SCRIPT = """
import resource, torch
from model.allocator import keep_freed_memory
applied = keep_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):  # until freed blocks have merged into one that fits an aligned 64 MB request (6 here)
    torch.ones(16 << 20)
before = faults()
for _ in range(10):
    torch.ones(16 << 20)
print(applied, faults() - before)
"""


def _faults(tuning: str) -> tuple[str, int]:
    env = {**os.environ, "MT_MALLOC_TUNING": tuning, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    return out[0], int(out[1])


def test_freed_blocks_are_reused_not_faulted_in_again():
    applied, faults = _faults("1")
    assert applied == "True"
    assert faults < 1_000  # 10 x 16,384 pages without reuse


def test_off_switch_leaves_glibc_defaults():
    applied, faults = _faults("0")
    assert applied == "False"
    assert faults > 50_000  # each 64 MB block mmapped and faulted in anew
