"""What the user sees: the driver follows the run's metrics.jsonl and events.jsonl and prints a line per
step and per event. Reading the files (not Ray's log forwarding, which drops the last lines when a job
ends) makes the console output complete and the same on a laptop and on a cluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from rayrl.runlog import EVENTS_FILE, METRICS_FILE, JsonlFollower


class Console:
    def __init__(self, run_dir: Path, max_steps: int, out: TextIO = sys.stdout) -> None:
        self.metrics = JsonlFollower(run_dir / METRICS_FILE)
        self.events = JsonlFollower(run_dir / EVENTS_FILE)
        self.max_steps, self.out = max_steps, out

    def poll(self) -> None:
        """Print what landed since the last poll, steps and events in the order they happened."""
        records = [(e.get("time", 0.0), 0, e) for e in self.events.new_records()]
        records += [(m.get("time", 0.0), 1, m) for m in self.metrics.new_records()]
        for _, is_step, r in sorted(records, key=lambda x: (x[0], x[1])):
            self.out.write(self._step_line(r) if is_step else f"[rayrl] {r.get('message', r.get('event'))}\n")
        self.out.flush()

    def _step_line(self, m: dict) -> str:
        named = [(k[len("reward/"):], v) for k, v in m.items() if k.startswith("reward/") and k.count("/") == 1]
        terms = "".join(f" ({', '.join(f'{k} {v:.3f}' for k, v in sorted(named))})" if len(named) > 1 else "")
        return (f"step {m['step']:>4}/{self.max_steps}  reward {m['reward_mean']:.3f}{terms}  loss {m['loss']:+.4f}  "
                f"kl {m['kl']:.4f}  {m['time_s']:.2f}s\n")


def where_it_is(run_dir: Path, checkpoints: str) -> str:
    """The closing lines of a run: where its records are (its checkpoints: a directory or a URL), and the
    command that plots them."""
    lines = [f"metrics:     {run_dir / METRICS_FILE}", f"events:      {run_dir / EVENTS_FILE}",
             f"checkpoints: {checkpoints}"]
    if (run_dir / "tensorboard").is_dir():
        lines.append(f"tensorboard: tensorboard --logdir {run_dir / 'tensorboard'}")
    if (run_dir / "wandb").is_dir():
        lines.append(f"wandb:       {run_dir / 'wandb'} (offline runs: wandb sync {run_dir / 'wandb'}/offline-run-*)")
    lines.append(f"plot:        python -m rayrl.plot {run_dir} --out run.png")
    return "".join(f"rayrl: {line}\n" for line in lines)
