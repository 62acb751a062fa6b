"""Q2: how long is training blocked by an asynchronous save, against a synchronous save of the same state?

Two real ActorWorker ranks (benchmarks.lockstep) under the DefaultCheckpointManager: each rank has one
ShardedCheckpointIO with one reused stager and its own gloo group for async saves. An async save is timed
from the manager's save call until it returns (what the coordinator reports as blocking_s) plus the wait
for its staging that the ranks' next optimizer step would do, called at once: the worst case, with nothing
(no generation) to overlap the copy with; ``overhead.loop_blocked_async_save_vs_sync_save`` measures it in
a real run. Then the save is waited for (write, digests, commit), so saves never queue behind each other:
the coordinator sees exactly this when the save interval outlasts a write. The first async save also allocates the staging buffers (fresh
memory is slow here), so it is reported apart from the steady state.
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

from benchmarks.common import Figure, Settings, ratio_figure, timed
from benchmarks.lockstep import Lockstep, LockstepActorPart, manager, run_lockstep

NAME = "async"
TARGET = 0.10  # issue 5: async blocking <= 10% of a synchronous save
MIN_SAVES = 3


def run(settings: Settings) -> list[Figure]:
    saves = max(MIN_SAVES, settings.rounds + 2)
    res = run_lockstep(_measure, settings.state_gb, settings.work_dir / "async", saves)
    note = {"state_gb": round(res["bytes"] / 1e9, 3), "saves": saves,
            "first_async_blocking_s": round(res["blocking"][0], 3),
            "async_save_to_commit_s": round(statistics.median(res["total"]), 3)}
    return [ratio_figure("async", "blocking_vs_sync_save", res["blocking"][1:], "s", "sync_save", res["sync"],
                         TARGET, at_least=False, **note)]


def _measure(lead: Lockstep, root: Path, saves: int) -> dict:
    part = LockstepActorPart(lead)
    sync, background = manager(lead, root / "sync", async_save=False), manager(lead, root / "async", True)
    out: dict[str, list[float]] = {"sync": [], "blocking": [], "total": []}
    for step in range(1, saves + 1):
        out["sync"].append(timed(lambda: sync.save(step, [part], {"global_step": step}))[0])
        blocking = timed(lambda: background.save(step, [part], {"global_step": step}))[0]
        blocking += timed(lambda: lead.call("checkpoint_staged"))[0]  # the next optimizer step's wait
        out["blocking"].append(blocking)
        out["total"].append(blocking + timed(background.wait)[0])
        for kind in ("sync", "async"):  # one step on disk at a time
            shutil.rmtree(root / kind / f"global_step_{step}")
    return {"bytes": sum(lead.call("state_bytes")), **out}
