"""Weight sync in split placement (rayrl.workers.weight_sync): each engine's path from where it runs, and
both paths delivering the actor's weights bit for bit, on a Ray cluster of two nodes on this machine.

The CUDA half of the ipc path (CUDA IPC handles) runs in the GPU smoke suite (tests/gpu/smoke.py), which
also drives the host shared-memory half across two plain processes on CPU."""

from __future__ import annotations

import os

import pytest
import torch

from rayrl.workers.weight_sync import IPC, OBJECT_STORE, choose_paths, paths_event
from tests.support import FAST, REPO, start_local_cluster, stop_local_cluster

CPU = {"device": "cpu", "gpu": None, "visible_gpus": []}
ROOM = {"weights_bytes": 100 << 20, "shm_free": 1 << 30}


def _gpu(own: str, *visible: str) -> dict:
    return {"device": "cuda", "gpu": own, "visible_gpus": list(visible or (own,))}


def test_same_node_gets_handles_and_other_nodes_the_object_store():
    paths = choose_paths({"node": "a", **CPU, **ROOM}, [{"node": "a", **CPU}, {"node": "b", **CPU}], "hf", 1)
    assert [p for p, _ in paths] == [IPC, OBJECT_STORE]
    assert "another node" in paths[1][1]


def test_on_cpu_dev_shm_must_have_room_for_the_weights():
    engine = [{"node": "a", **CPU}]
    small = {"node": "a", **CPU, "weights_bytes": 100 << 20, "shm_free": 64 << 20}  # a container's default
    (path, why), = choose_paths(small, engine, "hf", 1)
    assert path == OBJECT_STORE and "/dev/shm has 64 MB free for 100 MB of weights" in why
    assert choose_paths({"node": "a", **CPU, **ROOM}, engine, "hf", 1)[0][0] == IPC


def test_on_gpu_the_engine_must_see_rank_0s_gpu():
    source = {"node": "a", **_gpu("GPU-0")}
    engines = [{"node": "a", **_gpu("GPU-1")},  # Ray's default: a worker sees only its own GPU
               {"node": "a", **_gpu("GPU-1", "GPU-0", "GPU-1")},  # every GPU of the node visible
               {"node": "b", **_gpu("GPU-1", "GPU-0", "GPU-1")}]  # a GPU of the same name elsewhere: not it
    assert [p for p, _ in choose_paths(source, engines, "hf", 1)] == [OBJECT_STORE, IPC, OBJECT_STORE]


def test_vllm_with_tensor_parallelism_keeps_the_object_store():
    source = {"node": "a", **_gpu("GPU-0")}
    engine = [{"node": "a", **_gpu("GPU-1", "GPU-0", "GPU-1")}]
    assert choose_paths(source, engine, "vllm", 2)[0][0] == OBJECT_STORE
    assert choose_paths(source, engine, "vllm", 1)[0][0] == IPC


def test_the_event_lists_every_engine():
    message, fields = paths_event([(IPC, "why a"), (OBJECT_STORE, "why b")])
    assert fields == {"paths": [IPC, OBJECT_STORE], "reasons": ["why a", "why b"]}
    assert message == "weight sync: engine 0: ipc (why a); engine 1: object_store (why b)"


@pytest.fixture
def two_nodes():
    """Two Ray nodes: the head (where this process is the driver) fits both actor ranks and two engines, the
    other node one engine: the rollout group (SPREAD) lands on both."""
    cluster = start_local_cluster("rws-", num_cpus=4)
    try:
        cluster.add_node(num_cpus=1, temp_dir=cluster.temp_dir)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        stop_local_cluster(cluster)


@pytest.mark.slow
def test_engines_on_both_paths_load_the_actors_weights_bit_for_bit(two_nodes):
    import ray

    from rayrl.config import load_config
    from rayrl.failures import WorkerId
    from rayrl.step import sync_weights
    from rayrl.workers.fleet import Fleet

    cfg = load_config(str(REPO / "configs/grpo_tiny.yaml"), [*FAST, "rollout.num_workers=3"])
    ray.init(address=two_nodes.address)

    def zero_weights(worker) -> None:  # defined here: Ray ships it by value into the worker
        with torch.no_grad():
            for p in worker.engine.model.parameters():
                p.zero_()

    def weights(worker) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in worker.engine.model.state_dict().items()}

    fleet = Fleet(cfg)
    try:
        fleet.start()
        actor_node = fleet.where[WorkerId("actor", 0)]["node"]
        nodes = [fleet.where[WorkerId("rollout", i)]["node"] for i in range(3)]
        paths = [p for p, _ in fleet.weight_paths]
        assert paths == [IPC if node == actor_node else OBJECT_STORE for node in nodes]
        assert paths.count(IPC) == 2 and paths.count(OBJECT_STORE) == 1, (paths, nodes)

        engines = fleet.rollout.workers
        ray.get([w.__ray_call__.remote(zero_weights) for w in engines])  # so that only a sync can fix them
        sync_weights(fleet)
        actor = ray.get(fleet.actor.call("full_state_dict"))[0]
        for path, loaded in zip(paths, ray.get([w.__ray_call__.remote(weights) for w in engines])):
            assert loaded.keys() == actor.keys()
            assert all(torch.equal(loaded[k], actor[k]) for k in actor), f"the {path} engine's weights differ"
        rank0_pid = fleet.where[WorkerId("actor", 0)]["pid"]
        fds = f"/proc/{rank0_pid}/fd"
        left = [link for link in (os.readlink(f"{fds}/{fd}") for fd in os.listdir(fds)) if "rayrl-weights" in link]
        assert left == [], f"shared memory of rank 0 left after the sync: {left}"
    finally:
        fleet.shutdown()
        ray.shutdown()

