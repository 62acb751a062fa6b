"""A Ray cluster of several nodes on this machine (ray.cluster_utils.Cluster, joined through RAY_ADDRESS),
one run, three node losses:
1. the node of one actor rank (and of another worker) is killed and a replacement joins a few seconds later;
   the run detects the loss within seconds, an actor standby waiting on a node of its own takes the lost
   rank's place (the surviving rank keeps its process and re-forms the group with it), the other lost worker's
   group restarts on the new node, and every part loads from memory: the lost rank's shards from their copy on
   the surviving rank's node;
2. both nodes that hold a rank's copies (its own and its peer's) are killed at once: no memory copy is left,
   the actor group restarts in new processes and loads from storage;
3. a node holding one rank alone is lost without closing anything (every process of it stopped, as a machine
   that lost power or its network): the surviving rank sits in its collective with the lost one, is replaced
   too a bounded grace after the loss instead of after the step timeout, and every part loads from memory.
It ends with exit 0, the per-step rewards, the sample ledger and the weights of an uninterrupted run. Then
Ctrl-C of a driver releases its workers and placement groups."""

from __future__ import annotations

import os
import signal
import time

import pytest

from rayrl.data.ledger import audit
from rayrl.workers.fleet import STUCK_GRACE_S
from tests.support import (
    RECOVERY_STEPS, WITH_REFERENCE, assert_same_weights, descendants, env_for_tests, events_named, final_weights,
    kill_session, last_step, output_of, pid_busy_in, read_metrics, recovery_times, rewards, spawn_rayrl,
    start_local_cluster,
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


def _stop_node(node) -> list[int]:
    """SIGSTOP every process of ``node`` (its raylet, workers and agents): the node is gone the way a machine
    that lost power or its network is, with its sockets open, telling nobody. The pids stopped."""
    pids = [pid for pid, _ in descendants(_raylet_pid(node))]
    pids += [p.process.pid for procs in node.all_processes.values() for p in procs]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def _hold_until_idle(node, run_nodes) -> None:
    """Hold the run (its rollout worker stopped) until a standby on ``node`` is done warming up, so that the
    short run does not end first."""
    (rollout,) = [pid for n in run_nodes for pid, cmd in descendants(_raylet_pid(n)) if cmd.startswith("ray::RolloutWorker")]
    os.kill(rollout, signal.SIGSTOP)
    try:
        wait_until(lambda: _idle_for(node, "ray::ActorWorker", 1.0), 300, "the standby to be ready")
    finally:
        os.kill(rollout, signal.SIGCONT)


def test_three_node_losses_recover_from_memory_storage_and_memory(cluster, reference, tmp_path):
    nodes = [cluster.add_node(num_cpus=FLEET_NODE_CPUS, temp_dir=cluster.temp_dir) for _ in range(2)]
    proc = spawn_rayrl(tmp_path, *STEPS, "runner.checkpoint.memory_replicas=1", "runner.standby.actor=1",
                       f"actor.num_cpus_per_worker={RANK_CPUS}", env=env_for_tests(RAY_ADDRESS=cluster.address))
    stopped: list[int] = []
    try:
        wait_running(proc, lambda: last_step(tmp_path) >= 1, 300, "step 1")
        spare_node = cluster.add_node(num_cpus=STANDBY_NODE_CPUS, temp_dir=cluster.temp_dir)
        _hold_until_idle(spare_node, nodes)  # the standby, pending until now, starts on the new node
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
        (first,) = wait_running(proc, lambda: events_named(tmp_path, "recovered"), 300, "the recovery")
        assert [pid for pid, cmd in descendants(_raylet_pid(kept)) if cmd.startswith("ray::ActorWorker")] == kept_rank
        # the other lost worker restarted on the new node (where the next standby may be starting too)
        assert _ranks_below(spare_node) == 1 and len(_workers_below(replacement)) - _ranks_below(replacement) == 1

        # 2. The next checkpoint's copies: rank 0's (the standby's) on its node and on the kept rank's node, rank
        # 1's the other way round. Both nodes go at once: no copy of either rank is left. The node that joins
        # has room for one rank, the replacement's for the other: the ranks end on two nodes again.
        saved = first["resumed_from"] + 4
        wait_running(proc, lambda: (tracker_step(tmp_path) or 0) >= saved and last_step(tmp_path) > saved, 300,
                     f"step {saved + 1}, after the checkpoint of step {saved}")
        for node in (spare_node, kept):
            cluster.remove_node(node, allow_graceful=False)
        both_at = time.time()
        time.sleep(3)
        lone = cluster.add_node(num_cpus=RANK_CPUS, temp_dir=cluster.temp_dir)
        second = wait_running(proc, lambda: events_named(tmp_path, "recovered")[1:], 300, "the second recovery")[0]

        # 3. A standby on a node of its own again; then the node of the rank alone there is lost silently while
        # the rollout worker generates, so that the other rank goes on into the training step and waits there.
        standby_node = cluster.add_node(num_cpus=STANDBY_NODE_CPUS, temp_dir=cluster.temp_dir)
        _hold_until_idle(standby_node, [replacement])
        wait_running(proc, lambda: [e for e in events_named(tmp_path, "standby_ready") if e["node"] == standby_node.node_id],
                     300, "the new standby")
        saved_again = second["resumed_from"] + 4
        wait_running(proc, lambda: (tracker_step(tmp_path) or 0) >= saved_again and last_step(tmp_path) > saved_again,
                     300, f"step {saved_again + 1}, after the checkpoint of step {saved_again}")
        assert _ranks_below(lone) == 1 == len(_workers_below(lone)) and _ranks_below(replacement) == 1, [
            descendants(_raylet_pid(n)) for n in (lone, replacement)]
        pid_busy_in(_raylet_pid(replacement), "ray::RolloutWorker.generate", timeout=60)
        stopped = _stop_node(lone)
        stopped_at = time.time()
        time.sleep(3)
        cluster.add_node(num_cpus=WORKER_CPUS, temp_dir=cluster.temp_dir)
        # bounded well below what the stuck rank would cost (re-forming the group waits for it up to
        # runner.step_timeout_s, 600 s; its collective's own timeout is runner.checkpoint.timeout_s)
        wait_running(proc, lambda: events_named(tmp_path, "recovered")[2:], 120, "the third recovery")
        rc = proc.wait(timeout=300)
    finally:
        kill_session(proc)
        for pid in stopped:  # the lost node's processes, stopped: end them (SIGKILL ends a stopped process)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    out = output_of(proc)
    assert rc == 0, out[-3000:]
    failure, both, silent = [f for f in events_named(tmp_path, "failure") if not f.get("same_incident")]
    assert failure["node"] == doomed.node_id and failure["counted"], failure
    assert failure["time"] - removed_at < 10, "detection waited for the slow path"
    assert both["node"] in (spare_node.node_id, kept.node_id) and both["counted"], both
    assert silent["node"] == lone.node_id and silent["counted"], silent
    recovered, second, third = events_named(tmp_path, "recovered")
    assert recovered["node"] == doomed.node_id and recovered["resumed_from"] >= 4
    assert recovered["replaced_by"]["actor"] == "standby" and len(recovered["replaced_by"]) == 2, recovered
    assert recovered["source"] == "memory", recovered  # the lost rank's copy on the surviving rank's node
    assert second["resumed_from"] >= saved and second["replaced_by"]["actor"] == "new process", second
    assert second["source"] == "storage", second  # both copies of each rank gone with their nodes
    (stuck,) = [e for e in events_named(tmp_path, "log") if "has not left its collective" in e["message"]]
    assert stuck["time"] - stopped_at < STUCK_GRACE_S + 20, stuck  # Ray's health check (~2 s here), the grace
    # the stuck rank replaced too: the group in new processes, from the copies on the stuck rank's node
    assert third["replaced_by"]["actor"] == "new process" and third["source"] == "memory", third
    assert third["resumed_from"] >= saved_again, third
    assert rewards(tmp_path) == rewards(reference)
    assert audit(read_metrics(tmp_path), 32, 4) == []  # data.num_samples, data.batch_size of tests.support.FAST
    assert_same_weights(final_weights(tmp_path, 20), final_weights(reference, 20))
    for node in (lone, replacement, standby_node):  # one node of WORKER_CPUS left, for the next test
        cluster.remove_node(node, allow_graceful=False)
    print("\n".join(["", *recovery_times(tmp_path, [removed_at, both_at, stopped_at]),
                     f"detected {failure['time'] - removed_at:.1f} s and {both['time'] - both_at:.1f} s after the "
                     f"nodes were killed; the stuck rank replaced {stuck['time'] - stopped_at:.1f} s after the node "
                     "was stopped"]))


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
