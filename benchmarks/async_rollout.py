"""Q: how much step time does generating ahead of training (rollout.async_steps=1) save against the
synchronous loop (async_steps=0)?

Two runs of the real driver, one after the other in this benchmark run, with the same model, batch, seed and
step count, on a job where generation is at least half of the synchronous step: the default tiny model with
longer responses (``MAX_NEW_TOKENS``), 8 prompts x 8 samples, no reference worker, no checkpoints, one actor
rank and one rollout worker (``ACTOR_RANKS``): each worker process computes on one thread, so on a two-core
machine the two roles get a core each, as on a cluster they get devices of their own. The figure is the median step time (``time_s``)
with async_steps=1 over the synchronous run's, warm-up steps left out. Overlapping the two phases cannot do
better than max(gen, rest) / (gen + rest), where gen is the synchronous run's generation (``gen_time_s``)
and rest the remainder of its step (scoring, training, the weight sync): that bound is reported beside the
figure. With more actor ranks than the cores left beside the rollout worker, the overlap is limited by the
cores as well as by the bound.

Quick mode measures nothing (two more driver launches would only repeat what the smoke test already runs):
it says so and returns no figure.
"""

from __future__ import annotations

import statistics

from benchmarks.common import Figure, Settings, ratio_figure
from benchmarks.driver import launch

NAME = "pipeline"
STEPS, WARMUP = 12, 2
MAX_NEW_TOKENS = 128
ACTOR_RANKS = 1
TIMEOUT_S = 1800.0


def run(settings: Settings) -> list[Figure]:
    if settings.quick:
        print("# pipeline: skipped in quick mode (its figure needs two full driver runs; nothing to smoke-test "
              "beyond what the other end-to-end benchmarks launch)", flush=True)
        return []
    records: dict[int, list[dict]] = {}
    for k in (0, 1):
        run_ = launch(settings.work_dir / "pipeline", f"async{k}", [
            f"runner.max_steps={STEPS}", "runner.save_interval=0", "reference.enabled=false",
            "data.batch_size=8", "rollout.n_samples_per_prompt=8", f"rollout.max_new_tokens={MAX_NEW_TOKENS}",
            f"rollout.async_steps={k}", f"actor.world_size={ACTOR_RANKS}", "rollout.num_workers=1",
        ])
        try:
            run_.wait_exit(TIMEOUT_S)
        finally:
            run_.kill()
        records[k] = [r for r in run_.metrics if r["step"] > WARMUP]
    sync = records[0]
    gen = statistics.median(r["gen_time_s"] for r in sync)
    rest = statistics.median(r["time_s"] - r["gen_time_s"] for r in sync)
    return [ratio_figure(NAME, "step_time_async1_vs_sync", [r["time_s"] for r in records[1]], "s",
                         "async_steps=0", [r["time_s"] for r in sync], target_ratio=None,
                         bound=round(max(gen, rest) / (gen + rest), 3), sync_gen_s=round(gen, 3),
                         sync_rest_s=round(rest, 3), gen_share=round(gen / (gen + rest), 3),
                         async_wait_rollouts_s=round(statistics.median(r["gen_time_s"] for r in records[1]), 3),
                         max_new_tokens=MAX_NEW_TOKENS, actor_ranks=ACTOR_RANKS, steps=STEPS, warmup=WARMUP)]
