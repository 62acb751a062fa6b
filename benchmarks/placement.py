"""Q: how long is a step with the actor, the rollout engine and the reference colocated in each actor rank's
process (``runner.placement=colocated``) against each in processes of its own (``split``)?

Runs of the real driver on the default job (8 prompts x 8 samples, 12 new tokens, the reference on, no
checkpoints but the last), the two placements alternating ``settings.rounds`` times so that a drift of this
shared machine's load hits both. The figure is the median step time (``time_s``) colocated over split, the
first steps (warm-up) left out. Quick mode measures nothing (two more driver starts would be all its cost).
"""

from __future__ import annotations

import statistics

from benchmarks.common import Figure, Settings, ratio_figure
from benchmarks.driver import launch

NAME = "placement"
STEPS, WARMUP = 12, 2
TIMEOUT_S = 1800.0
DEFAULT_WORK = ("data.batch_size=8", "rollout.n_samples_per_prompt=8", "rollout.max_new_tokens=12")


def run(settings: Settings) -> list[Figure]:
    if settings.quick:
        print("# placement: no quick mode (it would only start drivers)", flush=True)
        return []
    times: dict[str, list[float]] = {"split": [], "colocated": []}
    for round_ in range(settings.rounds):
        for placement in times:
            run = launch(settings.work_dir / "placement", f"{placement}-{round_}", [
                *DEFAULT_WORK, *settings.job_overrides, f"runner.max_steps={STEPS}", "runner.save_interval=0",
                f"runner.placement={placement}"])
            try:
                run.wait_exit(TIMEOUT_S)
            finally:
                run.kill()
            times[placement] += [r["time_s"] for r in run.metrics if r["step"] > WARMUP]
    return [ratio_figure(NAME, "step_time_colocated_vs_split", times["colocated"], "s", "split", times["split"],
                         target_ratio=None, at_least=False, steps=len(times["colocated"]),
                         split_median_s=round(statistics.median(times["split"]), 4))]
