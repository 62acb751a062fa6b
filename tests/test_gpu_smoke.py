"""The GPU smoke suite's CPU run (bash tests/gpu/run.sh --device cpu), so that it cannot rot before a GPU is
at hand: every check passes except the CUDA-only ones, which report themselves as not applicable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_smoke_suite_passes_on_cpu() -> None:
    proc = subprocess.run(["bash", str(REPO / "tests/gpu/run.sh"), "--device", "cpu"], cwd=REPO,
                          env={**os.environ, "PYTHON": sys.executable}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-4000:]
    summary = re.search(r"^(\d+) passed, (\d+) failed, (\d+) not applicable", proc.stdout, re.M)
    assert summary is not None, proc.stdout[-2000:]
    assert summary.groups() == ("10", "0", "1"), summary.group(0)
    assert re.search(r"^PASS weight_sync_handles .*: \d+ cpu handles", proc.stdout, re.M), proc.stdout[-2000:]
    assert re.search(r"^N/A  cuda_rng_round_trip: CUDA only$", proc.stdout, re.M), proc.stdout[-2000:]
