"""Q: what does a slow reward function cost a step, scored in parallel off the coordinator vs serially in it?

Two runs of the real driver on the default job, one after the other on this machine, with the same slow reward
(``slow_reward``: the built-in copy_pattern reward plus a 20 ms wait per sample, the shape of a verifier that
calls out to a tool or a sandbox): ``data.reward_workers=0`` scores every sample serially in the coordinator
(what rayrl did before rewards were configurable), ``data.reward_workers=4`` in a pool of four Ray tasks. The
figure is the median step time (``time_s``) of the parallel run over the serial one's, the first steps (the
pool's processes starting) left out. The wait does not use a core, so four tasks overlap on two cores too; a
reward that computes would scale with the cores the pool gets instead.
"""

from __future__ import annotations

import statistics
import time

from benchmarks.common import Figure, Settings, ratio_figure
from benchmarks.driver import launch
from rayrl.data.rewards import copy_pattern_reward

NAME = "rewards"
SLEEP_S = 0.02  # per sample
POOL = 4
TIMEOUT_S = 1800.0


def slow_reward(item: dict, response: str, response_ids: list[int]) -> float:
    time.sleep(SLEEP_S)
    return copy_pattern_reward(item, response, response_ids)


def run(settings: Settings) -> list[Figure]:
    steps, warmup = (4, 1) if settings.quick else (12, 2)
    batch, n = (4, 4) if settings.quick else (8, 8)
    step_times: dict[str, list[float]] = {}
    for name, workers in (("serial", 0), ("parallel", POOL)):
        run = launch(settings.work_dir / "rewards", name, [
            *settings.job_overrides, f"runner.max_steps={steps}", "runner.save_interval=0",
            f"data.batch_size={batch}", f"rollout.n_samples_per_prompt={n}",
            f"data.reward_fn={__name__}:slow_reward", f"data.reward_workers={workers}",
        ])
        try:
            run.wait_exit(TIMEOUT_S)
        finally:
            run.kill()
        step_times[name] = [r["time_s"] for r in run.metrics if r["step"] > warmup]
    return [ratio_figure(NAME, "step_time_parallel_vs_serial_coordinator", step_times["parallel"], "s",
                         "serial in the coordinator", step_times["serial"], target_ratio=None,
                         samples_per_step=batch * n, sleep_s_per_sample=SLEEP_S, pool=POOL,
                         serial_median_s=statistics.median(step_times["serial"]))]
