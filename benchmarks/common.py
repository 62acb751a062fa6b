"""What every benchmark shares: the result record, the run settings, timing and the disk's own speed.

Every figure is a ratio against a reference measured in the same run on the same machine, because this
machine's disk and CPUs are shared and noisy: only side-by-side numbers mean anything.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "grpo_tiny.yaml"  # the default job: every benchmark starts from it
_CHUNK = 64 << 20  # the disk reference writes and reads through one reused 64 MiB buffer
DROP_CACHES = "/proc/sys/vm/drop_caches"


@dataclass(frozen=True)
class Settings:
    """Sizes and repeats of one benchmark run; ``quick`` shrinks everything for the smoke test."""

    quick: bool
    work_dir: Path  # scratch space on the disk being measured
    state_gb: float  # actor state (weights + AdamW moments) over both ranks, for the I/O benchmarks
    e2e_gb: float  # the same for the model trained end to end through the driver
    rounds: int  # repeats of each timed measurement (the median is reported)
    cycles: int  # cycles of (no save, async, sync) phases in the overhead run
    # overrides of every end-to-end job: quick mode leaves the reference worker out, one process less to start
    # in each of its six fleets (it checks that the benchmarks run, not their figures)
    job_overrides: tuple[str, ...] = ()

    @classmethod
    def make(cls, quick: bool, work_dir: Path, state_gb: float | None = None) -> Settings:
        if quick:
            return cls(True, work_dir, state_gb or 0.01, state_gb or 0.001, rounds=1, cycles=1,
                       job_overrides=("reference.enabled=false",))
        return cls(False, work_dir, state_gb or 1.0, state_gb or 1.0, rounds=3, cycles=3)


@dataclass
class Figure:
    """One answer: ``value`` of rayrl against ``reference`` measured beside it, and their ratio.

    ``ratio`` is always "rayrl relative to the reference" in the direction the target is stated
    (e.g. save GB/s / disk GB/s, or async blocking s / sync save s).
    """

    question: str
    name: str
    value: float
    unit: str
    reference_name: str
    reference: float
    ratio: float
    target: str = ""
    met: bool | None = None
    spread: str = ""  # min..max of the repeats, so a reader sees how noisy the number is
    extra: dict[str, Any] = field(default_factory=dict)

    def json_line(self) -> str:
        return json.dumps({"figure": f"{self.question}.{self.name}", **asdict(self)}, sort_keys=True)


def ratio_figure(question: str, name: str, values: list[float], unit: str, reference_name: str,
                 references: list[float], target_ratio: float | None = None, at_least: bool = True,
                 stat: Callable[[list[float]], float] = statistics.median, **extra: Any) -> Figure:
    """A figure from repeated measurements: ``stat`` of each, their ratio, the target check if one is set."""
    value, reference = stat(values), stat(references)
    ratio = value / reference if reference else float("nan")
    target, met = "", None
    if target_ratio is not None:
        target = f"{'>=' if at_least else '<='} {target_ratio:g}"
        met = ratio >= target_ratio if at_least else ratio <= target_ratio
    return Figure(question, name, value, unit, reference_name, reference, ratio, target, met,
                  spread=spread(values), extra=extra)


def spread(values: list[float]) -> str:
    return f"{min(values):.3g}..{max(values):.3g}" if len(values) > 1 else ""


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# ------------------------------------------------------------------------------ the disk's own speed

def disk_write(path: Path, nbytes: int, buf: memoryview) -> None:
    """Sequential write of ``nbytes`` from a reused, already-touched buffer, then fsync (as DCP does)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = nbytes
        while left > 0:
            left -= os.write(fd, buf[: min(left, len(buf))])
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_read(path: Path, buf: bytearray) -> int:
    """Sequential read of the whole file into a reused buffer; returns the bytes read."""
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def touched_buffer() -> bytearray:
    """A disk-reference buffer with every page already faulted in (fresh memory is slow here)."""
    return bytearray(os.urandom(1 << 20) * (_CHUNK >> 20))


def drop_caches() -> bool:
    """Drop the page cache so a read comes from the disk; False where the container forbids it."""
    os.sync()
    try:
        with open(DROP_CACHES, "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def can_drop_caches() -> bool:
    return os.access(DROP_CACHES, os.W_OK) and drop_caches()
