"""Running the real driver (``python -m rayrl.main``) for end-to-end figures, and timing what it writes.

Times are the ``time`` fields of metrics.jsonl records (when a step finished) and events.jsonl records,
compared with this process's clock (one machine).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from benchmarks.common import CONFIG, REPO
from rayrl.runlog import JsonlFollower

POLL_S = 0.02
# Small rollouts keep a step short and dominated by the actor (the part whose state is checkpointed);
# retention keeps a run with a save every step from filling the disk.
BASE_OVERRIDES = ["data.batch_size=4", "data.num_samples=256", "rollout.n_samples_per_prompt=4",
                  "rollout.max_new_tokens=8", "runner.step_timeout_s=300", "runner.checkpoint.max_to_keep=2"]


@dataclass
class DriverRun:
    """One driver process and what it has written since it started (records new to this launch)."""

    proc: subprocess.Popen
    run_dir: Path
    started: float
    log_path: Path
    metrics: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    _tails: tuple[JsonlFollower, JsonlFollower] | None = None

    def poll(self) -> None:
        metrics_tail, events_tail = self._tails
        self.metrics += metrics_tail.new_records()
        self.events += events_tail.new_records()

    def wait_for(self, what: str, predicate: Callable[[DriverRun], Any], timeout: float) -> Any:
        """Poll until ``predicate(self)`` is truthy; fail with the driver's last lines if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            value = predicate(self)
            if value:
                return value
            if self.proc.poll() is not None:
                self.poll()
                value = predicate(self)
                if value:
                    return value
                raise RuntimeError(f"driver exited ({self.proc.returncode}) before {what}:\n{self.tail_log()}")
            time.sleep(POLL_S)
        raise TimeoutError(f"no {what} within {timeout:.0f}s:\n{self.tail_log()}")

    def events_named(self, name: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == name]

    def tail_log(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_exit(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.poll()
        if rc != 0:
            raise RuntimeError(f"driver exited {rc}:\n{self.tail_log()}")
        return rc

    def kill(self) -> None:
        """SIGKILL the driver and every process under it (Ray's raylet, GCS, workers): a lost head node."""
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=60)
        _wait_gone(pids, timeout=30)


def launch(output_dir: Path, name: str, overrides: list[str], ray_address: str | None = None) -> DriverRun:
    """Start ``python -m rayrl.main`` for run ``output_dir/name`` (on a private local Ray instance unless
    ``ray_address`` names a cluster); stdout and stderr go to ``output_dir/<name>.log``."""
    run_dir = output_dir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / f"{name}.log"
    cmd = [sys.executable, "-m", "rayrl.main", "--config", str(CONFIG), f"runner.output_dir={output_dir}",
           f"runner.experiment_name={name}", *BASE_OVERRIDES, *overrides]
    # benchmarks.* (e.g. a checkpoint manager class) must import in Ray's workers too
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    full_env.pop("RAY_ADDRESS", None)
    if ray_address is not None:
        full_env["RAY_ADDRESS"] = ray_address
    tails = (JsonlFollower(run_dir / "metrics.jsonl"), JsonlFollower(run_dir / "events.jsonl"))
    with open(log_path, "a") as log:
        started = time.time()
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    return DriverRun(proc, run_dir, started, log_path, _tails=tails)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Ray starts workers in their own process groups, so no killpg)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def process_title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def worker_pids(run: DriverRun, actor_class: str) -> list[int]:
    """PIDs of this driver's Ray workers of one class (Ray titles them ``ray::<Class>[.<method>]``)."""
    prefix = f"ray::{actor_class}"
    return sorted(p for p in descendants(run.proc.pid)
                  if (title := process_title(p)) == prefix or title.startswith(prefix + "."))


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
