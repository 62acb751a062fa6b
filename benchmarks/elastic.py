"""Q: how fast does an elastic run (``actor.min_world_size``) train on N-1 actor ranks against N, in the same run?

A ``ray.cluster_utils.Cluster`` on this machine: a head without CPUs (the driver and the coordinator), one
1-CPU node per actor rank and one for the rollout engine. Once the checkpoint of step 8 is committed the node
of one actor rank is killed and none replaces it: after ``runner.resource_wait_s`` the run continues on N-1 ranks;
at step 18 a node joins and the group grows back to N. The figure is the median step time (``time_s``, and
the actor's ``train_time_s`` beside it) of the steps at N-1 ranks over those at N, the first steps after a
start or a resize (warm-up) left out: steps/s at N-1 over N is its inverse. The global batch is the same at
both sizes, so with the step bound by the actor's compute the time grows by about N/(N-1); on this 2-core
machine the ranks and the engine share the cores, so the ratio says little about a cluster of real nodes.
Quick mode measures nothing (it would only start a cluster and a driver).
"""

from __future__ import annotations

import json
import statistics

from benchmarks.cluster import local_cluster, titles_below
from benchmarks.common import Figure, Settings, ratio_figure
from benchmarks.driver import launch
from benchmarks.lifecycle import checkpoint_after

NAME = "elastic"
RANKS = 2
STEPS, KILL_AFTER, GROW_AT, WARMUP = 24, 9, 18, 2  # a save every 4: killed after the checkpoint of step 8
TIMEOUT_S = 1800.0
DEFAULT_WORK = ("data.batch_size=8", "rollout.n_samples_per_prompt=8", "rollout.max_new_tokens=12")


def run(settings: Settings) -> list[Figure]:
    if settings.quick:
        print("# elastic: no quick mode (it would only start a cluster and a driver)", flush=True)
        return []
    metrics = elastic_run(settings)
    at = {size: _warm_steps(metrics, size) for size in (RANKS - 1, RANKS)}
    return [ratio_figure(NAME, f"step_time_{RANKS - 1}_vs_{RANKS}_ranks", [m["time_s"] for m in at[RANKS - 1]], "s",
                         f"{RANKS}_ranks", [m["time_s"] for m in at[RANKS]], target_ratio=None, at_least=False,
                         steps=[len(at[RANKS - 1]), len(at[RANKS])],
                         steps_per_s={size: round(1 / statistics.median(m["time_s"] for m in ms), 3)
                                      for size, ms in at.items()},
                         train_time_s={size: round(statistics.median(m["train_time_s"] for m in ms), 4)
                                       for size, ms in at.items()})]


def _warm_steps(metrics: list[dict], size: int) -> list[dict]:
    """The steps run at ``size`` actor ranks, less the first WARMUP after each change of size."""
    out, since = [], 0
    for prev, m in zip([None, *metrics], metrics):
        since = since + 1 if prev is not None and prev["actor_world_size"] == m["actor_world_size"] else 1
        if m["actor_world_size"] == size and since > WARMUP:
            out.append(m)
    return out


def elastic_run(settings: Settings) -> list[dict]:
    """The metrics.jsonl records of one run that shrinks from RANKS to RANKS-1 and grows back."""
    with local_cluster() as (cluster, tmp):
        nodes = [cluster.add_node(num_cpus=1, temp_dir=tmp) for _ in range(RANKS + 1)]
        cluster.wait_for_nodes()
        run = launch(settings.work_dir / "elastic", "elastic", [
            *DEFAULT_WORK, *settings.job_overrides, f"actor.world_size={RANKS}", f"actor.min_world_size={RANKS - 1}",
            "reference.enabled=false", f"runner.max_steps={STEPS}", "runner.save_interval=4",
            "runner.resource_wait_s=5"], ray_address=cluster.address)
        try:
            run.wait_for(f"the checkpoint of step {KILL_AFTER - 1}", checkpoint_after(KILL_AFTER - 2), TIMEOUT_S)
            victim = next(n for n in nodes if titles_below(n, "ray::ActorWorker"))
            cluster.remove_node(victim, allow_graceful=False)
            run.wait_for(f"step {GROW_AT} on fewer ranks", lambda r: r.events_named("resized")
                         and r.metrics[-1]["step"] >= GROW_AT, TIMEOUT_S)
            cluster.add_node(num_cpus=1, temp_dir=tmp)
            run.wait_exit(TIMEOUT_S)
        finally:
            run.kill()
        return [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines() if line]
