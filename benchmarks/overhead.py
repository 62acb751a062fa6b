"""Q4: what does checkpointing every step cost, end to end through the driver?

One run of the real driver on the benchmark model with ``runner.save_interval=1`` and a checkpoint
manager of its own (``PhasedManager``, plugged in through ``runner.checkpoint.manager_class``): the
default manager, except that the steps go in phases of ``phase_steps`` that cycle through no saving,
async saves and sync saves. Interleaving the three in one run, rather than three runs one after another,
keeps the slow drifts of this shared machine's load out of the comparison.

A step's time is the wall time between consecutive metrics.jsonl records (their ``time``), so it holds
everything the loop does between two steps (the save call, committing the previous async save) and the
slowdown of a step while a background write competes for the CPU. The interval after save N is counted for save N's mode;
the first interval of each phase (a write left over from the previous mode) and the warm-up are left out.
In the no-saving phase the coordinator still calls the manager and logs a save event (a few ms).
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from benchmarks.common import Figure, Settings, ratio_figure
from benchmarks.dist import model_overrides
from benchmarks.driver import launch
from rayrl.checkpoint.manager import DefaultCheckpointManager, Participant
from rayrl.config import CheckpointConfig

NAME = "overhead"
TARGET = 1.05  # issues 5 and 7: step time with an async save every step within 5% of no saving
BLOCKING_TARGET = 0.10  # issue 5: the loop blocked by an async save <= 10% of a sync save
MODES = ("none", "async", "sync")
TIMEOUT_S = 3600.0


@dataclass
class PhasedConfig(CheckpointConfig):
    phase_steps: int = 3  # steps per phase; phases cycle through MODES after the warm-up
    warmup: int = 2  # steps before the first phase (not saved)


def mode_of(step: int, phase_steps: int, warmup: int) -> str:
    """The save mode of step ``step`` (1-based): none during the warm-up, then the cycle of phases."""
    if step <= warmup:
        return "none"
    return MODES[((step - warmup - 1) // phase_steps) % len(MODES)]


class PhasedManager(DefaultCheckpointManager):
    """The default manager, saving each step in its phase's mode (or not at all)."""

    config_class = PhasedConfig

    def save(self, step: int, participants: Sequence[Participant], trainer_state: dict[str, Any]) -> None:
        mode = mode_of(step, self.config.phase_steps, self.config.warmup)
        if mode == "none":
            return
        self.config = dataclasses.replace(self.config, async_save=mode == "async")
        super().save(step, participants, trainer_state)


def run(settings: Settings) -> list[Figure]:
    phase, cycles = (2 if settings.quick else 3), settings.cycles
    warmup = 2
    steps = warmup + phase * len(MODES) * cycles + 1  # + 1: the step that closes the last interval
    run = launch(settings.work_dir / "overhead", "phased", [
        *model_overrides(settings.e2e_gb), *settings.job_overrides, f"runner.max_steps={steps}",
        "runner.save_interval=1",
        f"runner.checkpoint.manager_class={__name__}.PhasedManager",
        f"runner.checkpoint.phase_steps={phase}", f"runner.checkpoint.warmup={warmup}",
    ])
    try:
        run.wait_for("every step", lambda r: len(r.metrics) >= steps, TIMEOUT_S)
        run.wait_exit(TIMEOUT_S)
    finally:
        run.kill()
    seen = {r["step"]: r["time"] for r in run.metrics}
    blocking = {e["step"]: e["blocking_s"] for e in run.events_named("save")}
    time_s = {r["step"]: r["time_s"] for r in run.metrics}
    by_mode: dict[str, dict[str, list[float]]] = {m: {"period": [], "blocking": [], "time_s": []} for m in MODES}
    for step in range(warmup + 1, steps):
        mode = mode_of(step, phase, warmup)
        if mode_of(step - 1, phase, warmup) != mode or step + 1 not in seen:
            continue  # the first interval of a phase carries the previous mode's write
        by_mode[mode]["period"].append(seen[step + 1] - seen[step])
        by_mode[mode]["blocking"].append(blocking.get(step, 0.0))
        by_mode[mode]["time_s"].append(time_s[step + 1])
    none = by_mode["none"]["period"]
    return [_blocking_figure(blocking, run.metrics, phase, warmup, steps)] + [ratio_figure("overhead", f"step_time_{mode}_save_every_step_vs_none", by_mode[mode]["period"], "s",
                         "no_saving", none, TARGET if mode == "async" else None, at_least=False,
                         stat=statistics.mean, intervals=len(by_mode[mode]["period"]), state_gb=settings.e2e_gb,
                         median_blocking_s=_median(by_mode[mode]["blocking"]),
                         median_step_time_s=_median(by_mode[mode]["time_s"]),
                         none_median_step_time_s=_median(by_mode["none"]["time_s"]))
            for mode in ("async", "sync")]


def _blocking_figure(blocking: dict[int, float], metrics: list[dict], phase: int, warmup: int, steps: int
                     ) -> Figure:
    """Issue 5's blocking figure, from the run itself: what an async save held the loop (the save call,
    plus the wait for its staging at the next step's optimizer step, ``save_staging_wait_s``) against what
    a sync save held it, in the same run."""
    waited = {r["step"]: r.get("save_staging_wait_s", 0.0) for r in metrics}
    held: dict[str, list[float]] = {"async": [], "sync": []}
    for step in range(warmup + 1, steps):
        mode = mode_of(step, phase, warmup)
        if mode in held and step in blocking and step + 1 in waited:
            held[mode].append(blocking[step] + (waited[step + 1] if mode == "async" else 0.0))
    return ratio_figure("overhead", "loop_blocked_async_save_vs_sync_save", held["async"], "s", "sync_save",
                        held["sync"], BLOCKING_TARGET, at_least=False, saves=len(held["async"]))


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None
