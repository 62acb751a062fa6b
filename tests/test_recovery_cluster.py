"""A Ray cluster of several nodes on this machine (ray.cluster_utils.Cluster, joined through RAY_ADDRESS):
the node of one actor rank (and of another worker) is killed mid-run and a replacement joins a few seconds
later; the run detects the loss within seconds, an actor standby waiting on a node of its own takes the lost
rank's place (the surviving rank keeps its process and re-forms the group with it), the other lost worker's
group restarts on the new node, and every part loads from memory: the lost rank's shards from their copy on
the surviving rank's node. It ends with exit 0 and the weights of an uninterrupted run. Then Ctrl-C of a
driver releases its workers and placement groups."""

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
WORKER_CPUS = 4  # 2 actor ranks + 1 rollout + 1 reference: the whole fleet fits on one worker node
# The node loss: each actor rank reserves 2 CPUs, so the two ranks sit on two 3-CPU nodes with one other
# worker each, and each rank's second memory copy on the other's node; the actor standby (2 CPUs) waits on a
# third node, added once the fleet is placed.
RANK_CPUS, FLEET_NODE_CPUS, STANDBY_NODE_CPUS = 2, 3, 2
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


def _idle_for(node, title: str, seconds: float) -> bool:
    """Whether a process below ``node`` is titled exactly ``title`` (a Ray actor with no call running: a
    standby done warming up) throughout the next ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if title not in (cmd.split(" ")[0] for _, cmd in descendants(_raylet_pid(node))):
            return False
        time.sleep(0.05)
    return True


def _ranks_below(node) -> int:
    return sum(cmd.startswith("ray::ActorWorker") for cmd in _workers_below(node))


def test_losing_an_actor_rank_s_node_recovers_from_memory_with_a_standby(cluster, reference, tmp_path):
    nodes = [cluster.add_node(num_cpus=FLEET_NODE_CPUS, temp_dir=cluster.temp_dir) for _ in range(2)]
    proc = spawn_rayrl(tmp_path, *STEPS, "runner.checkpoint.memory_replicas=1", "runner.standby.actor=1",
                       f"actor.num_cpus_per_worker={RANK_CPUS}", env=env_for_tests(RAY_ADDRESS=cluster.address))
    try:
        wait_running(proc, lambda: last_step(tmp_path) >= 1, 300, "step 1")
        spare_node = cluster.add_node(num_cpus=STANDBY_NODE_CPUS, temp_dir=cluster.temp_dir)
        # The standby, pending until now, starts on the new node: the rollout worker is held (SIGSTOP) until
        # it is ready, so that the short run does not end first.
        (rollout,) = [pid for n in nodes for pid, cmd in descendants(_raylet_pid(n)) if cmd.startswith("ray::RolloutWorker")]
        os.kill(rollout, signal.SIGSTOP)
        try:
            wait_until(lambda: _idle_for(spare_node, "ray::ActorWorker", 1.0), 300, "the standby to be ready")
        finally:
            os.kill(rollout, signal.SIGCONT)
        (ready,) = wait_running(proc, lambda: events_named(tmp_path, "standby_ready"), 300, "the actor standby")
        assert ready["node"] == spare_node.node_id, ready
        wait_running(proc, lambda: (tracker_step(tmp_path) or 0) >= 4 and last_step(tmp_path) >= 5, 300,
                     "step 5, after the checkpoint of step 4")
        assert all(len(_workers_below(n)) == 2 and _ranks_below(n) == 1 for n in nodes), [
            descendants(_raylet_pid(n)) for n in nodes]
        doomed, kept = nodes
        kept_rank = [pid for pid, cmd in descendants(_raylet_pid(kept)) if cmd.startswith("ray::ActorWorker")]
        cluster.remove_node(doomed, allow_graceful=False)  # SIGKILL: raylet and workers, no goodbye
        removed_at = time.time()
        time.sleep(3)
        replacement = cluster.add_node(num_cpus=WORKER_CPUS, temp_dir=cluster.temp_dir)
        wait_running(proc, lambda: events_named(tmp_path, "recovered"), 300, "the recovery")
        assert [pid for pid, cmd in descendants(_raylet_pid(kept)) if cmd.startswith("ray::ActorWorker")] == kept_rank
        # the other lost worker restarted on the new node (where the next standby may be starting too)
        assert _ranks_below(spare_node) == 1 and len(_workers_below(replacement)) - _ranks_below(replacement) == 1
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
    assert recovered["replaced_by"]["actor"] == "standby" and len(recovered["replaced_by"]) == 2, recovered
    assert recovered["source"] == "memory", recovered  # the lost rank's copy on the surviving rank's node
    assert rewards(tmp_path) == rewards(reference)
    assert_same_weights(final_weights(tmp_path, 20), final_weights(reference, 20))
    for node in (kept, spare_node):  # one node of WORKER_CPUS left, for the next test
        cluster.remove_node(node)
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
