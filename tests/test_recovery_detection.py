"""How failures are told apart, on a real multi-node Ray cluster (ray.cluster_utils.Cluster, default health
check) with light actors: a killed node is an infrastructure failure as soon as Ray answers
ActorUnavailableError (seconds), not only once the GCS health check declares the node dead (~14 s here); a
peer's exception that comes first does not turn it into a program error; a drained-for-preemption node is a
preemption; a worker's own exception with live peers is a program error after a bounded grace."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from rayrl.failures import InfraFailure, ProgramError, WorkerId, gather

pytestmark = pytest.mark.slow

HEALTH_CHECK_DEAD_S = 10.0  # Ray's default health check declares a killed node dead after ~14 s


def _probe_class():
    """Defined in a function so that Ray ships it by value: workers need not import the tests package."""

    class Probe:
        def ping(self) -> int:
            return os.getpid()

        def sleep(self, seconds: float) -> None:
            time.sleep(seconds)

        def fail(self, after_s: float) -> None:
            time.sleep(after_s)
            raise RuntimeError("bad data in this worker")

    return ray.remote(num_cpus=0)(Probe)


@pytest.fixture(scope="module")
def cluster():
    tmp = tempfile.mkdtemp(prefix="rrd-", dir="/tmp")  # short: Ray's socket paths have a length limit
    (Path(tmp) / "ray").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", tmp)  # Cluster records its address under $RAY_TMPDIR/ray
        c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "temp_dir": tmp, "include_dashboard": False, "resources": {"safe": 4}})
        ray.init(address=c.address, logging_level=logging.ERROR, log_to_driver=False)
        try:
            yield c
        finally:
            ray.shutdown()
            c.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


def _victim(cluster, probe):
    node = cluster.add_node(num_cpus=1, resources={"victim": 1})
    actor = probe.options(resources={"victim": 1}).remote()
    ray.get(actor.ping.remote(), timeout=60)
    return node, actor


def test_a_killed_node_is_an_infra_failure_without_waiting_for_the_health_check(cluster):
    probe = _probe_class()
    node, victim = _victim(cluster, probe)
    survivor = probe.options(resources={"safe": 1}).remote()
    ray.get(survivor.ping.remote(), timeout=60)
    lost = victim.sleep.remote(60)
    peer_error = survivor.fail.remote(0.5)  # like a gloo error in a surviving rank: it comes first
    start = time.monotonic()
    cluster.remove_node(node, allow_graceful=False)
    with pytest.raises(InfraFailure) as caught:
        gather([peer_error, lost], [WorkerId("survivor"), WorkerId("victim")], timeout_s=60, find_dead=lambda: [])
    elapsed = time.monotonic() - start
    assert caught.value.what == "victim" and "ActorUnavailableError" in caught.value.cause, caught.value
    assert "seen first by survivor raised RuntimeError" in caught.value.cause
    assert elapsed < HEALTH_CHECK_DEAD_S, elapsed
    assert not caught.value.preemption


def test_a_node_drained_for_preemption_is_a_preemption(cluster):
    from ray.core.generated import autoscaler_pb2

    probe = _probe_class()
    node, victim = _victim(cluster, probe)
    lost = victim.sleep.remote(60)
    gcs = ray._raylet.GcsClient(address=cluster.address)
    accepted, why = gcs.drain_node(node.node_id, autoscaler_pb2.DrainNodeReason.Value(
        "DRAIN_NODE_REASON_PREEMPTION"), "spot instance reclaimed", 0)
    assert accepted, why
    cluster.remove_node(node, allow_graceful=False)
    with pytest.raises(InfraFailure) as caught:
        gather([lost], [WorkerId("victim")], timeout_s=60, find_dead=lambda: [])
    assert caught.value.preemption, caught.value.cause


def test_a_worker_exception_with_live_peers_is_a_program_error_after_the_grace(cluster):
    probe = _probe_class()
    failing, busy = (probe.options(resources={"safe": 1}).remote() for _ in range(2))
    ray.get([failing.ping.remote(), busy.ping.remote()], timeout=60)
    start = time.monotonic()
    with pytest.raises(ProgramError) as caught:  # the busy peer is blocked (in a collective, say): not dead
        gather([failing.fail.remote(0), busy.sleep.remote(60)], [WorkerId("failing"), WorkerId("busy")], timeout_s=60,
               find_dead=lambda: [], grace_s=1.0)
    assert time.monotonic() - start < 10
    assert str(caught.value) == "failing raised RuntimeError: bad data in this worker"


def test_a_hang_is_an_infra_failure_naming_the_silent_workers(cluster):
    probe = _probe_class()
    silent = probe.options(resources={"safe": 1}).remote()
    with pytest.raises(InfraFailure) as caught:
        gather([silent.sleep.remote(60)], [WorkerId("rollout", 0)], timeout_s=1.0, find_dead=lambda: [])
    assert caught.value.what == "rollout[0]" and "(hang)" in caught.value.cause
