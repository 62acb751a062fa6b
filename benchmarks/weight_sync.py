"""Q: how long does one weight sync take in split placement when the engine shares actor rank 0's node and
loads the weights through handles to rank 0's copy (the ipc path; host shared memory on CPU), against the
same sync through Ray's object store (the fallback, the only path before)?

One fleet per model (the default job's tiny model, then a larger one), started in this process on a local
Ray: two actor ranks and one engine on one node. Each round times one sync by each path, back to back,
so that a drift of this shared machine's load hits both; the paths are switched by setting the fleet's
recorded choice, so both run exactly the product's code (rayrl.step.sync_weights). The figure is the median
sync time by handles over the median by the object store (target: not slower). Quick mode measures
nothing: a fleet start would be nearly all of its cost.
"""

from __future__ import annotations

import statistics
import time

from benchmarks.common import CONFIG, REPO, Figure, Settings, ratio_figure

NAME = "weight_sync"
MODELS = {  # name -> overrides of the default job
    "tiny": (),
    "34m": ("actor.model.hidden_size=512", "actor.model.num_layers=8", "actor.model.num_heads=8",
            "actor.model.intermediate_size=2048"),
}
SYNCS_PER_ROUND = 3


def run(settings: Settings) -> list[Figure]:
    if settings.quick:
        print("# weight_sync: no quick mode (starting the fleets would be all its cost)", flush=True)
        return []
    import ray

    ray.init(num_cpus=3, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        return [_measure(name, overrides, settings.rounds * SYNCS_PER_ROUND) for name, overrides in MODELS.items()]
    finally:
        ray.shutdown()


def _measure(model: str, overrides: tuple[str, ...], syncs: int) -> Figure:
    from rayrl.config import load_config
    from rayrl.step import sync_weights
    from rayrl.workers.fleet import Fleet
    from rayrl.workers.weight_sync import IPC, OBJECT_STORE

    cfg = load_config(str(CONFIG), ["reference.enabled=false", "rollout.num_workers=1", *overrides])
    fleet = Fleet(cfg)
    try:
        fleet.start()
        chosen = fleet.weight_paths
        assert [p for p, _ in chosen] == [IPC], f"one node: the engine should get handles, got {chosen}"
        times: dict[str, list[float]] = {IPC: [], OBJECT_STORE: []}
        for i in range(syncs + 1):  # the first of each: warm-up (shared-memory manager, object store)
            for path in times:
                fleet.weight_paths = [(path, "benchmark")]
                t0 = time.perf_counter()
                sync_weights(fleet)
                if i:
                    times[path].append(time.perf_counter() - t0)
        full = fleet.wait_all(fleet.actor.call("full_state_dict"), "actor")[0]
        weights_mb = sum(t.numel() * t.element_size() for t in full.values()) / 2**20
    finally:
        fleet.shutdown()
    return ratio_figure(NAME, f"same_node_handles_vs_object_store_{model}", times[IPC], "s", "object store",
                        times[OBJECT_STORE], target_ratio=1.0, at_least=False, syncs=syncs,
                        weights_mb=round(weights_mb, 1),
                        object_store_median_s=round(statistics.median(times[OBJECT_STORE]), 4))

