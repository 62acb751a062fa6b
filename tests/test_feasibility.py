"""Requests no node can ever satisfy: exit 2 at start-up naming the key, what it asks and what the cluster has."""

from __future__ import annotations

import time
from pathlib import Path

from rayrl.config import load_config
from rayrl.workers.feasibility import Demand, never_fits, run_demands
from tests.support import env_for_tests, run_rayrl

CPU_NODE = {"CPU": 8.0}
GPU_NODE = {"CPU": 16.0, "GPU": 2.0}


def test_run_demands_follow_the_config() -> None:
    cfg = load_config(None, ["actor.num_gpus_per_worker=1", "rollout.num_gpus_per_worker=0.5",
                             "reference.enabled=false"])
    assert run_demands(cfg) == [Demand("actor", 2, {"CPU": 1.0, "GPU": 1.0}),
                                Demand("rollout", 1, {"CPU": 1.0, "GPU": 0.5})]


def test_a_bundle_no_node_has_names_the_per_worker_key() -> None:
    problem = never_fits([Demand("actor", 1, {"CPU": 1.0, "GPU": 1.0})], [CPU_NODE], {"CPU": 8.0})
    assert problem == ("actor.num_gpus_per_worker: each actor worker asks for {CPU: 1, GPU: 1}, and no node of "
                       "this cluster has that (nodes: {CPU: 8})")
    problem = never_fits([Demand("rollout", 1, {"CPU": 12.0})], [CPU_NODE, GPU_NODE], None)
    assert problem is None  # the GPU node has 16 CPUs
    problem = never_fits([Demand("rollout", 1, {"CPU": 20.0})], [CPU_NODE, GPU_NODE], None)
    assert problem is not None and problem.startswith("rollout.num_cpus_per_worker: each rollout worker asks")


def test_a_group_larger_than_the_cluster_names_its_size_key() -> None:
    shapes, capacity = [GPU_NODE, GPU_NODE], {"CPU": 32.0, "GPU": 4.0}
    assert never_fits([Demand("actor", 4, {"CPU": 1.0, "GPU": 1.0})], shapes, capacity) is None
    problem = never_fits([Demand("actor", 5, {"CPU": 1.0, "GPU": 1.0})], shapes, capacity)
    assert problem == "actor.world_size: the workers ask for 5 GPU in all (actor 5); the whole cluster has 4"
    together = [Demand("actor", 3, {"CPU": 1.0, "GPU": 1.0}), Demand("rollout", 2, {"CPU": 1.0, "GPU": 1.0})]
    problem = never_fits(together, shapes, capacity)
    assert problem == ("actor.num_gpus_per_worker: the workers ask for 5 GPU in all (actor 3, rollout 2); "
                       "the whole cluster has 4")


NO_GPU_NODE = ("actor.num_gpus_per_worker: each actor worker asks for {CPU: 1, GPU: 1}, and no node of this "
               "cluster has that (nodes: {CPU: ")


def test_gpu_request_on_this_machine_fails_fast(tmp_path: Path) -> None:
    """On the Ray instance rayrl starts itself (no RAY_ADDRESS) nothing can join: exit 2 at once."""
    t0 = time.monotonic()
    proc = run_rayrl(tmp_path, "actor.num_gpus_per_worker=1", "runner.resource_wait_s=600", timeout=120,
                     env=env_for_tests())
    assert proc.returncode == 2, proc.stdout
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"rayrl: config error: {NO_GPU_NODE}"), last
    assert last.endswith("; the cluster does not autoscale"), last
    assert time.monotonic() - t0 < 60  # not runner.resource_wait_s


def test_gpu_request_on_a_joined_cluster_waits_for_a_node_and_says_which_key(tmp_path: Path) -> None:
    """On a cluster the run joined (RAY_ADDRESS), a GPU node may be down or still joining: the run waits for it
    (runner.resource_wait_s) as for any lost resource, saying what it lacks, rather than exit 2, which
    run_main.sh would never relaunch."""
    proc = run_rayrl(tmp_path, "actor.num_gpus_per_worker=1", "runner.resource_wait_s=2", "runner.max_restarts=0",
                     timeout=180)
    assert proc.returncode == 1, proc.stdout
    assert f"waiting for nodes to join this cluster (at most runner.resource_wait_s=2 s per attempt): {NO_GPU_NODE}" \
        in proc.stdout, proc.stdout[-3000:]
    assert "not available within runner.resource_wait_s=2 s" in proc.stdout, proc.stdout[-3000:]
