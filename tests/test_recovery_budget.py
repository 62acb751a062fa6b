"""The restart budget and the events that tell about failures and recoveries (rayrl.recovery), and the
non-finite-loss check: plain Python, no Ray."""

from __future__ import annotations

import pickle

import pytest

from rayrl.failures import InfraFailure, ProgramError, WorkerId, check_finite
from rayrl.recovery import MAX_BACKOFF_S, NEW_PROCESS, STANDBY, Recovery, RunFailed, regenerates, replacement_plan
from rayrl.runlog import EventLog, read_jsonl


@pytest.fixture
def events(tmp_path):
    return EventLog(tmp_path)


def _named(events: EventLog, name: str) -> list[dict]:
    return [e for e in read_jsonl(events.path) if e["event"] == name]


def test_counted_failures_back_off_exponentially_and_preemptions_are_free(events):
    r = Recovery(events, max_restarts=6, backoff_s=4.0)
    assert r.failed("actor[0]", "died", "n1") == 4.0
    assert r.failed("actor[0]", "notice", "n1", preemption=True) == 0.0
    assert r.failed("coordinator", "restarted", "n1", counted=False, event="coordinator_restarted") == 0.0
    assert [r.failed("rollout[0]", "died", "n2") for _ in range(4)] == [8.0, 16.0, MAX_BACKOFF_S, MAX_BACKOFF_S]
    assert r.restarts == 5
    r.step_finished(3)  # training went on: the next failure is not part of a crash loop
    assert r.failed("actor[1]", "died", "n1") == 4.0 and r.restarts == 6
    assert [e["counted"] for e in _named(events, "failure")] == [True, False, True, True, True, True, True]


def test_past_the_budget_the_run_fails_with_the_history(events):
    r = Recovery(events, max_restarts=1, backoff_s=0.0)
    r.failed("rollout[0]", "ActorDiedError: killed", "node-aaaaaaaaaa", pid=11)
    with pytest.raises(RunFailed) as caught:
        r.failed("actor[1]", "hang", "node-bbbbbbbbbb", pid=12)
    message = str(caught.value)
    assert message.startswith("run failed: recovery budget spent (runner.max_restarts=1); what died:")
    assert "rollout[0] (node node-aaa, pid 11): ActorDiedError: killed" in message
    assert "actor[1] (node node-bbb, pid 12): hang" in message
    (failed,) = _named(events, "run_failed")
    assert len(failed["history"]) == 2


def test_a_recovery_is_one_event_with_what_died_where_the_step_and_the_seconds(events):
    r = Recovery(events, max_restarts=3, backoff_s=0.0)
    r.failed("reference[0]", "ActorDiedError", "node-1", pid=7, failure_time=1.0)
    r.failed("actor[0]", "died again while rebuilding", "node-2")  # the clock keeps the first failure's time
    r.loaded_from("memory", start_s=2.0, load_s=0.5, sync_s=0.1)
    r.resumed(8)
    r.step_finished(9)
    r.step_finished(10)  # no recovery pending: nothing more
    (e,) = _named(events, "recovered")
    assert (e["what"], e["node"], e["resumed_from"], e["step"]) == ("actor[0]", "node-2", 8, 9)
    assert e["seconds_to_next_step"] > 1e9  # measured from time 1.0 (the first failure), not the second
    assert (e["source"], e["start_s"], e["load_s"], e["sync_s"]) == ("memory", 2.0, 0.5, 0.1)
    assert "resumed from step 8 (memory), step 9 finished" in e["message"]


def test_standbys_take_the_lost_places_when_enough_are_ready():
    lost = {"actor": {1}, "rollout": {0, 1}, "reference": {0}, "critic": None}
    assert replacement_plan(lost, {"actor": 1, "rollout": 1, "critic": 4}) == {
        "actor": STANDBY, "rollout": NEW_PROCESS, "reference": NEW_PROCESS, "critic": NEW_PROCESS}
    assert replacement_plan({"actor": {0, 1}}, {"actor": 2}) == {"actor": STANDBY}
    assert replacement_plan({"actor": set()}, {"actor": 2}) == {"actor": NEW_PROCESS}


def test_the_recovered_event_says_how_each_group_was_replaced(events):
    r = Recovery(events, max_restarts=3, backoff_s=0.0)
    r.failed("actor[1]", "ActorDiedError", "node-1", replaced=["actor"], replaced_by={"actor": STANDBY})
    r.failed("rollout[0]", "died while reloading", "node-1", replaced=["rollout"],
             replaced_by={"rollout": NEW_PROCESS})  # the same incident: both groups
    r.resumed(8)
    r.step_finished(9)
    (e,) = _named(events, "recovered")
    assert e["replaced"] == ["actor", "rollout"], e
    assert e["replaced_by"] == {"actor": STANDBY, "rollout": NEW_PROCESS}, e
    assert "replacing actor (standby), rollout (new process)" in _named(events, "failure")[1]["message"]


def test_only_dead_rollout_workers_are_recovered_in_the_job():
    assert regenerates({"rollout": {0, 2}}, dead={0, 1, 2}, role="rollout")
    assert not regenerates({"rollout": {0}}, dead=set(), role="rollout")  # hung, not dead: the full way
    assert not regenerates({"rollout": {0}, "actor": {1}}, dead={0}, role="rollout")  # an actor rank too
    assert not regenerates({"rollout": None}, dead={0}, role="rollout")  # the group, not known workers
    assert not regenerates({"rollout": set()}, dead={0}, role="rollout")


def test_a_recovery_in_the_job_counts_once_with_its_fallback_and_says_what_was_regenerated(events):
    r = Recovery(events, max_restarts=2, backoff_s=0.0)
    r.failed("rollout[0]", "ActorDiedError", "node-1", replaced=["rollout"], replaced_by={"rollout": STANDBY},
             in_job=True)
    r.regenerated([5, 6], start_s=1.5)
    r.step_finished(5)
    (e,) = _named(events, "recovered")
    assert (e["regenerated"], e["resumed_from"], e["step"], e["source"], e["start_s"]) == ([5, 6], 4, 5, "memory", 1.5)
    assert e["in_job"] and "regenerated the samples of steps [5, 6] (nothing reloaded)" in e["message"], e
    assert "regenerating its unfinished samples in the job" in _named(events, "failure")[0]["message"]

    r.failed("rollout[0]", "ActorDiedError", "node-1", replaced=["rollout"], replaced_by={"rollout": NEW_PROCESS},
             in_job=True)  # again: counted again (a failure that keeps coming back)
    r.failed("rollout[1]", "no replacement", "node-1", replaced=["rollout"])  # its fallback: the same incident
    assert [f["counted"] for f in _named(events, "failure")] == [True, True, False] and r.restarts == 2
    r.resumed(4)
    r.step_finished(5)
    last = _named(events, "recovered")[-1]
    assert "regenerated" not in last and last["resumed_from"] == 4, last


def test_failures_survive_pickling_as_ray_ships_them():
    infra = pickle.loads(pickle.dumps(InfraFailure([WorkerId("actor", 1), WorkerId("actor", 0)], "hang", "n", True)))
    assert (infra.what, infra.cause, infra.node, infra.preemption) == ("actor[1], actor[0]", "hang", "n", True)
    assert infra.workers == (WorkerId("actor", 1), WorkerId("actor", 0)) and infra.node_lost
    program = pickle.loads(pickle.dumps(ProgramError("rollout[0]", ValueError("bad row 3"))))
    assert str(program) == "rollout[0] raised ValueError: bad row 3" and isinstance(program.cause, ValueError)


def test_a_non_finite_loss_or_gradient_is_a_program_error():
    check_finite({"loss": 0.5, "grad_norm": 1.0}, step=3)
    with pytest.raises(ProgramError, match=r"step 3 raised FloatingPointError: non-finite loss=nan"):
        check_finite({"loss": float("nan"), "grad_norm": 1.0}, step=3)
    with pytest.raises(ProgramError, match=r"non-finite grad_norm=inf"):
        check_finite({"loss": 0.1, "grad_norm": float("inf")}, step=4)
