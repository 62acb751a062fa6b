"""What the user sees: the driver follows the run's metrics.jsonl and events.jsonl and prints a line per
step and per event. Reading the files (not Ray's log forwarding, which drops the last lines when a job
ends) makes the console output complete and the same on a laptop and on a cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from rayrl.runlog import EVENTS_FILE, METRICS_FILE


class _Follower:
    """New complete lines of a file that grows by appends (and may be rewritten shorter on resume)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new_records(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(0, 2)
                if f.tell() < self.offset:  # rewritten on resume: follow from its new end
                    self.offset = f.tell()
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        out = []
        for line in complete.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


class Console:
    def __init__(self, run_dir: Path, max_steps: int, out: TextIO = sys.stdout) -> None:
        self.metrics = _Follower(run_dir / METRICS_FILE)
        self.events = _Follower(run_dir / EVENTS_FILE)
        self.max_steps, self.out = max_steps, out

    def poll(self) -> None:
        for e in self.events.new_records():
            self.out.write(f"[rayrl] {e.get('message', e.get('event'))}\n")
        for m in self.metrics.new_records():
            self.out.write(
                f"step {m['step']:>4}/{self.max_steps}  reward {m['reward_mean']:.3f}  loss {m['loss']:+.4f}  "
                f"kl {m['kl']:.4f}  {m['time_s']:.2f}s\n")
        self.out.flush()
