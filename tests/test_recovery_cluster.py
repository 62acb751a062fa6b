"""A Ray cluster of several nodes on this machine (ray.cluster_utils.Cluster, joined through RAY_ADDRESS):
the node holding every training worker is killed mid-run and a replacement joins a few seconds later; the
run detects the loss within seconds, waits for resources, rebuilds on the new node and ends with exit 0 and
the weights of an uninterrupted run. It keeps memory replicas: both copies of each actor shard were on the
lost node, so the recovery reads storage. Then Ctrl-C of a driver releases its workers and placement groups."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.support import (
    RECOVERY_STEPS, WITH_REFERENCE, assert_same_weights, descendants, env_for_tests, events_named, final_weights,
    kill_session, last_step, output_of, recovery_times, rewards, spawn_rayrl, start_local_cluster,
    stop_local_cluster, tracker_step, uninterrupted_run, wait_running, wait_until,
)

pytestmark = pytest.mark.slow

STEPS = (*RECOVERY_STEPS, WITH_REFERENCE)  # every role, the reference included

# A killed raylet's node is declared dead when Ray's GCS health check gives up on it: these settings make that
# happen in a few checks half a second apart instead of the much slower defaults.
FAST_HEALTH_CHECK = {"health_check_period_ms": 500, "health_check_timeout_ms": 500,
                     "health_check_failure_threshold": 3}
WORKER_CPUS = 4  # 2 actor ranks + 1 rollout + 1 reference: the whole fleet fits on one worker node only
WORKER_TITLES = ("ray::ActorWorker", "ray::RolloutWorker", "ray::ReferenceWorker", "ray::Coordinator")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return uninterrupted_run(tmp_path_factory, *STEPS)


@pytest.fixture(scope="module")
def cluster():
    """A head with no CPUs (the driver and the coordinator, num_cpus=0, live there) and worker nodes added
    by the tests."""
    c = start_local_cluster("rrc-", num_cpus=0, _system_config=FAST_HEALTH_CHECK)
    try:
        yield c
    finally:
        stop_local_cluster(c)


def _raylet_pid(node) -> int:
    return node.all_processes["raylet"][0].process.pid


def _workers_below(node) -> list[str]:
    return [cmd for _, cmd in descendants(_raylet_pid(node)) if cmd.startswith(WORKER_TITLES)]


def test_losing_the_node_of_the_workers_recovers_on_a_replacement(cluster, reference, tmp_path):
    doomed = cluster.add_node(num_cpus=WORKER_CPUS, temp_dir=cluster.temp_dir)
    proc = spawn_rayrl(tmp_path, *STEPS, "runner.checkpoint.memory_replicas=1",
                       env=env_for_tests(RAY_ADDRESS=cluster.address))
    try:
        wait_running(proc, lambda: (tracker_step(tmp_path) or 0) >= 4 and last_step(tmp_path) >= 5, 300,
                     "step 5, after the checkpoint of step 4")
        assert len(_workers_below(doomed)) == 4, descendants(_raylet_pid(doomed))
        cluster.remove_node(doomed, allow_graceful=False)  # SIGKILL: raylet and workers, no goodbye
        removed_at = time.time()
        time.sleep(3)
        replacement = cluster.add_node(num_cpus=WORKER_CPUS, temp_dir=cluster.temp_dir)
        wait_running(proc, lambda: events_named(tmp_path, "recovered"), 300, "the recovery")
        assert len(_workers_below(replacement)) == 4, descendants(_raylet_pid(replacement))
        rc = proc.wait(timeout=300)
    finally:
        kill_session(proc)
    out = output_of(proc)
    assert rc == 0, out[-3000:]
    (failure,) = events_named(tmp_path, "failure")
    assert failure["node"] == doomed.node_id and failure["counted"], failure
    assert failure["time"] - removed_at < 10, "detection waited for the slow path"
    (recovered,) = events_named(tmp_path, "recovered")
    assert recovered["node"] == doomed.node_id and recovered["resumed_from"] >= 4
    assert recovered["source"] == "storage", recovered  # every copy in memory was on the lost node
    assert rewards(tmp_path) == rewards(reference)
    assert_same_weights(final_weights(tmp_path, 20), final_weights(reference, 20))
    print("\n".join(["", *recovery_times(tmp_path, [removed_at]),
                     f"detected {failure['time'] - removed_at:.1f} s after the node was killed"]))


def test_ctrl_c_releases_workers_and_placement_groups(cluster, tmp_path):
    import ray

    if not cluster.worker_nodes:
        cluster.add_node(num_cpus=WORKER_CPUS, temp_dir=cluster.temp_dir)
    (node,) = cluster.worker_nodes
    proc = spawn_rayrl(tmp_path, *STEPS, env=env_for_tests(RAY_ADDRESS=cluster.address))
    try:
        wait_running(proc, lambda: last_step(tmp_path) >= 2, 300, "step 2")
        assert len(_workers_below(node)) == 4
        os.kill(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        kill_session(proc)
    assert rc == 130, output_of(proc)[-3000:]
    assert events_named(tmp_path, "interrupted")
    wait_until(lambda: not _workers_below(node) and not descendants_titled(cluster, "ray::Coordinator"), 60,
               "the coordinator and workers to exit")
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        def released():
            pgs = [p for p in ray.util.placement_group_table().values() if p["name"].startswith("rayrl-")]
            free = ray.available_resources().get("CPU")
            return all(p["state"] == "REMOVED" for p in pgs) and free == WORKER_CPUS

        wait_until(released, 60, "placement groups removed and every CPU free")
    finally:
        ray.shutdown()


def descendants_titled(cluster, title: str) -> list[str]:
    return [cmd for _, cmd in descendants(_raylet_pid(cluster.head_node)) if cmd.startswith(title)]
