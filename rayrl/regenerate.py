"""A rollout worker lost mid-generation, recovered in the job: its unfinished samples are generated again,
and training does not restart.

When only rollout workers are lost (each found dead, not hung; no actor or reference rank:
rayrl.recovery.regenerates), their places are taken in the job, by ready standbys when there are enough,
else by new processes in the lost workers' reservations (rayrl.recovery.replacement_plan), and each
replacement is sent, in order, what its predecessor had been sent and not finished: for every step still
generating, the weights of the version that step is pinned to (``reissue_calls``), then the same chunk
(items, n, step, first); last, the weights the next launch samples with. Seeds derive from (run seed, step,
first) (rayrl.engines.base), so the samples regenerated are those the lost worker would have made, bit for
bit, and ordering still pins every generation to its version (rayrl.pipeline). Nothing is loaded: the actor,
the reference and the other rollout workers keep their processes and state, and no step is redone.

It is a recovery like any other (events ``failure`` and ``recovered``, with ``regenerated``: the steps whose
samples were generated again), counted against runner.max_restarts. Whatever fails while it runs (no
replacement within the bounds, another worker lost, weights no longer in the object store) goes up to the
coordinator's full recovery, as the same incident: nothing weaker than reloading the newest checkpoint.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from rayrl.failures import InfraFailure, ProgramError, WorkerId
from rayrl.recovery import RunFailed, regenerates, replacement_plan
from rayrl.workers.roles import ROLLOUT

if TYPE_CHECKING:
    from rayrl.pipeline import RolloutPipeline

log = logging.getLogger(__name__)

LOAD, GENERATE = "load", "generate"
T = TypeVar("T")


def reissue_calls(pinned: list[tuple[int, int]], current: int) -> list[tuple[str, int]]:
    """What a replacement engine is sent, in order: for each step still generating (``pinned``: its step and
    the policy version it is pinned to) the weights of that version where they differ from what the engine
    holds (``(LOAD, version)``), then its chunk (``(GENERATE, step)``); last the weights of ``current``, the
    version the next launch samples with. A new engine holds version 0, the initial policy it builds."""
    calls: list[tuple[str, int]] = []
    holds = 0
    for step, version in sorted(pinned):
        if version != holds:
            calls.append((LOAD, version))
            holds = version
        calls.append((GENERATE, step))
    if current != holds:
        calls.append((LOAD, current))
    return calls


def retrying(pipeline: RolloutPipeline, call: Callable[[], T], reissue: bool = True) -> T:
    """``call()``, recovering in the job from the loss of rollout workers it meets (``recover``) and calling
    it again, until it succeeds; any other failure goes up as it is, and so does the loss when recovering
    from it in the job fails unexpectedly (the full recovery takes over)."""
    while True:
        try:
            return call()
        except InfraFailure as failure:
            try:
                recovered = recover(pipeline, failure, reissue)
            except (InfraFailure, ProgramError, RunFailed):
                raise
            except Exception as err:  # noqa: BLE001 -- nothing weaker than the full recovery
                log.warning("recovering from the loss of %s in the job failed (%s: %s); recovering from the "
                            "latest checkpoint", failure.what, type(err).__name__, err)
                raise failure from err
            if not recovered:
                raise


def recover(pipeline: RolloutPipeline, failure: InfraFailure, reissue: bool = True) -> bool:
    """Recover from ``failure`` in the job when it lost rollout workers only; False (nothing done) when not.
    ``reissue`` False: only replace them (the caller repeats the call that met the loss, e.g. a weight sync)."""
    fleet, recovery = pipeline.fleet, pipeline.recovery
    if recovery is None or fleet.host_of(ROLLOUT) is not None:  # colocated: a lost engine is a lost rank
        return False
    lost = fleet.lost_workers(failure)
    named = [WorkerId(ROLLOUT, i) for i in sorted(lost.get(ROLLOUT) or ())]
    dead = {w.index for w in fleet.find_dead(among=named)} if named and set(lost) == {ROLLOUT} else set()
    calls = reissue_calls(pipeline.pinned(), pipeline.version) if reissue else []
    if not regenerates(lost, dead, ROLLOUT) or not pipeline.holds_weights(calls):
        return False
    where = fleet.location(failure.workers)
    plan = replacement_plan(lost, fleet.standbys.ready({ROLLOUT}))
    time.sleep(recovery.failed(failure.what, failure.cause, failure.node or where["node"], where["pid"],
                               replaced=[ROLLOUT], replaced_by=plan, in_job=True))
    t0 = time.perf_counter()
    fleet.replace_workers(ROLLOUT, [w.index for w in named], plan[ROLLOUT])
    seconds: dict[str, Any] = {"start_s": time.perf_counter() - t0}
    steps = pipeline.reissue([w.index for w in named], calls) if reissue else []
    recovery.regenerated(steps, **seconds)
    return True
