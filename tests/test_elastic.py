"""Elastic runs (actor.min_world_size): the fit rule by hand, and one real run on a Ray cluster of 1-CPU nodes
(ray.cluster_utils.Cluster) whose two actor ranks sit on separate nodes. The node of one rank is killed and
none replaces it: after runner.resource_wait_s the run continues on one rank from the last checkpoint; a
node joins later and the group grows back to two ranks at the next step boundary, from a save of that step.
The run ends with exit 0, every step once, the uninterrupted run's samples step by step and its rewards up
to the resize."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from rayrl.config import load_config
from rayrl.data.ledger import audit
from rayrl.elastic import Elastic, bundles_that_fit
from rayrl.failures import InfraFailure, WorkerId
from rayrl.runlog import EventLog, read_jsonl
from tests.support import (
    REPO, RECOVERY_STEPS, descendants, env_for_tests, events_named, final_weights, kill_session, last_step, ledger, output_of,
    read_metrics, rewards, spawn_rayrl, start_local_cluster, stop_local_cluster, tracker_step, uninterrupted_run,
    wait_running,
)
from tests.test_recovery_cluster import FAST_HEALTH_CHECK, _raylet_pid, _workers_below


def test_bundles_that_fit_count_per_node_and_stop_at_the_limit():
    cpu = {"CPU": 1.0, "GPU": 0.0}
    assert bundles_that_fit(cpu, [{"CPU": 1.0}, {"CPU": 0.5}, {"CPU": 2.0}], 8) == 3
    assert bundles_that_fit(cpu, [{"CPU": 3.0}], 2) == 2
    assert bundles_that_fit({"CPU": 2.0, "GPU": 1.0}, [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 8.0}], 4) == 1
    assert bundles_that_fit({"CPU": 0.5, "GPU": 0.0}, [{"CPU": 1.0}], 4) == 2  # a share of a CPU
    assert bundles_that_fit({"CPU": 0.0, "GPU": 0.0}, [], 3) == 3  # asks for nothing: all of them fit
    assert bundles_that_fit(cpu, [{"CPU": 0.9999999999}], 2) == 1  # Ray's float accounting


def _elastic(tmp_path, *overrides: str) -> Elastic:
    return Elastic(load_config(str(REPO / "configs/grpo_tiny.yaml"), list(overrides)), EventLog(tmp_path))


def _nodes(*cpus: float) -> list[dict[str, float]]:
    return [{"CPU": c, "GPU": 0.0} for c in cpus]


def test_a_group_shrinks_to_what_fits_and_never_below_its_minimum(tmp_path):
    e = _elastic(tmp_path, "actor.world_size=4", "actor.min_world_size=2", "rollout.num_workers=2",
                 "rollout.min_workers=1")
    assert e.shrink_size("actor", _nodes(1, 1, 0.5)) == 2
    assert e.shrink_size("actor", _nodes(2, 1)) == 3
    assert e.shrink_size("actor", _nodes(1)) is None  # below actor.min_world_size: a failed recovery
    assert e.shrink_size("actor", _nodes(4)) is None  # all back: the next attempt places the whole group
    assert e.shrink_size("rollout", _nodes(1)) == 1
    assert not e.shrink(InfraFailure(WorkerId("actor", 0), "died"), 4)  # a lost worker is replaced, not shrunk
    assert e.world_sizes() == {"actor": 4, "rollout": 2} and e.minimum == {"actor": 2, "rollout": 1}
    assert _elastic(tmp_path).minimum == {}  # the default: nothing elastic


def test_a_group_grows_back_only_when_all_its_missing_workers_fit(tmp_path):
    e = _elastic(tmp_path, "actor.world_size=4", "actor.min_world_size=1", "rollout.num_workers=2",
                 "rollout.min_workers=1")
    assert e.growable_in(_nodes(8)) == []  # at full size
    e.sizes.update(actor=2, rollout=1)
    assert e.growable_in(_nodes(1)) == ["rollout"]
    assert e.growable_in(_nodes(1, 1)) == ["actor", "rollout"]
    e.grow(["actor"], 12)
    assert e.sizes == {"actor": 4, "rollout": 1, "reference": 1}
    (event,) = read_jsonl(e.events.path)
    assert {k: event[k] for k in ("event", "role", "from", "to", "step")} == {
        "event": "resized", "role": "actor", "from": 2, "to": 4, "step": 12}


def test_a_replacing_process_plans_the_elastic_groups_around_the_others(tmp_path):
    e = _elastic(tmp_path, "actor.world_size=3", "actor.min_world_size=1", "rollout.num_workers=2",
                 "rollout.min_workers=1", "reference.enabled=true")
    # the reference (not elastic) first, then each elastic group's minimum, then the rest up to its size
    assert e.plan(_nodes(1, 1, 1)) == {"actor": 1, "rollout": 1}
    assert e.plan(_nodes(1, 1, 1, 1)) == {"actor": 2, "rollout": 1}
    assert e.plan(_nodes(2, 2, 2)) == {"actor": 3, "rollout": 2}
    assert e.plan(_nodes(1)) == {"actor": 1, "rollout": 1}  # never below the minimum: that group waits
    assert _elastic(tmp_path, "actor.world_size=2", "actor.min_world_size=1").plan(_nodes(1, 1)) == {"actor": 1}


def test_colocated_engines_follow_the_actor_size(tmp_path):
    e = _elastic(tmp_path, "runner.placement=colocated", "actor.world_size=3", "actor.min_world_size=1")
    e.sizes["actor"] = 2
    assert e.world_sizes() == {"actor": 2, "rollout": 2}


@pytest.mark.slow
def test_a_lost_node_shrinks_the_actor_group_and_a_new_node_grows_it_back(tmp_path_factory, tmp_path):
    reference = uninterrupted_run(tmp_path_factory, *RECOVERY_STEPS)
    cluster = start_local_cluster("rre-", num_cpus=0, _system_config=FAST_HEALTH_CHECK)
    try:
        nodes = [cluster.add_node(num_cpus=1, temp_dir=cluster.temp_dir) for _ in range(3)]  # 2 ranks + rollout
        proc = spawn_rayrl(tmp_path, *RECOVERY_STEPS, "actor.min_world_size=1", "runner.resource_wait_s=4",
                           env=env_for_tests(RAY_ADDRESS=cluster.address))
        try:
            wait_running(proc, lambda: (tracker_step(tmp_path) or 0) >= 4 and last_step(tmp_path) >= 5, 300,
                         "step 5, after the checkpoint of step 4")
            doomed = next(n for n in nodes if any("ActorWorker" in cmd for cmd in _workers_below(n)))
            cluster.remove_node(doomed, allow_graceful=False)
            wait_running(proc, lambda: events_named(tmp_path, "resized"), 300, "the actor group to shrink")
            wait_running(proc, lambda: last_step(tmp_path) >= 10, 300, "step 10 on one rank")
            # The rollout worker is held (SIGSTOP) while the node joins, so that the short run cannot end
            # before the next step boundary sees the node.
            (rollout,) = [pid for n in nodes if n is not doomed for pid, cmd in descendants(_raylet_pid(n))
                          if cmd.startswith("ray::RolloutWorker")]
            os.kill(rollout, signal.SIGSTOP)
            try:
                cluster.add_node(num_cpus=1, temp_dir=cluster.temp_dir)
                cluster.wait_for_nodes()
            finally:
                os.kill(rollout, signal.SIGCONT)
            rc = proc.wait(timeout=300)
        finally:
            kill_session(proc)
    finally:
        stop_local_cluster(cluster)
    out = output_of(proc)
    assert rc == 0, out[-3000:]
    shrink, grow = events_named(tmp_path, "resized")
    assert (shrink["role"], shrink["from"], shrink["to"], shrink["step"]) == ("actor", 2, 1, 4), shrink
    assert (grow["role"], grow["from"], grow["to"]) == ("actor", 1, 2) and grow["step"] >= 10, grow
    regrown = [e for e in events_named(tmp_path, "resumed") if e["time"] > grow["time"]]
    assert regrown and regrown[0]["step"] == grow["step"], "the group grew back from the step it reached"
    failures = events_named(tmp_path, "failure")
    assert [f["counted"] for f in failures] == [True, True], failures  # the loss, then the resize; not the grow

    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == list(range(1, 21))  # every step once
    sizes = [m["actor_world_size"] for m in metrics]
    assert sizes == [2] * 4 + [1] * (grow["step"] - 4) + [2] * (20 - grow["step"]), sizes
    assert ledger(tmp_path) == ledger(reference)  # the same samples, step by step
    assert audit(metrics, 32, 4) == []  # data.num_samples, data.batch_size of tests.support.FAST
    # Up to the resize the run is the uninterrupted one; step 5 too: it samples with the weights of step 4
    # (loaded bit for bit) on the rollout worker that was kept.
    assert rewards(tmp_path)[:5] == rewards(reference)[:5]
    got, ref = final_weights(tmp_path, 20), final_weights(reference, 20)
    diff = max(float((got[k] - ref[k]).abs().max()) for k in ref)
    assert all(torch.isfinite(t).all() for t in got.values())
    print(f"\nlargest final weight difference from the uninterrupted run: {diff:.3g}; "
          f"shrunk at step {shrink['step']}, grew back at step {grow['step']}")
