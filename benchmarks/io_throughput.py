"""Q1: how close to the disk's speed are rayrl's saves and loads?

Two real ActorWorker ranks (benchmarks.lockstep) hold an FSDP2 Llama with AdamW state. Each round measures,
on the same bytes and the same disk, one after another (so slow spells of the shared disk hit all alike):
  disk     each rank writes its share to its own file from a reused buffer + fsync; reads it back
  rayrl    synchronous save through the DefaultCheckpointManager (DCP shards, digests, manifest, commit);
           load = what resuming does: find + verify (checksums) the latest step, then every rank loads it
  dcp      plain dcp.save / dcp.load (+ set_state_dict) of the same state dict
  torch    full state dict gathered to rank 0, torch.save + fsync; torch.load on rank 0 + broadcast
The page cache is dropped before every read when the container allows it (reported as caches_dropped).
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

from benchmarks.common import Figure, Settings, can_drop_caches, ratio_figure, timed
from benchmarks.lockstep import Lockstep, LockstepActorPart, manager, run_lockstep

NAME = "io"
TARGET = 0.8  # issue 7: save and load at >= 80% of the disk's sequential bandwidth
METHODS = ("disk", "rayrl", "dcp", "torch")


def run(settings: Settings) -> list[Figure]:
    dropped = can_drop_caches()
    res = run_lockstep(_measure, settings.state_gb, settings.work_dir / "io", settings.rounds, dropped)
    gb = res["bytes"] / 1e9
    rate = {k: [gb / t for t in ts] for k, ts in res["times"].items()}
    note = {"state_gb": round(gb, 3), "caches_dropped": dropped, "rounds": settings.rounds}
    figs = []
    for op, disk in (("save", "disk_write"), ("load", "disk_read")):
        figs.append(ratio_figure("io", f"rayrl_{op}_vs_disk", rate[f"rayrl_{op}"], "GB/s", disk,
                                 rate[f"disk_{op}"], TARGET, **note))
        for base in ("dcp", "torch"):
            figs.append(ratio_figure("io", f"rayrl_{op}_vs_{base}", rate[f"rayrl_{op}"], "GB/s",
                                     f"{base}_{op}", rate[f"{base}_{op}"], **note))
    return figs


def _measure(lead: Lockstep, root: Path, rounds: int, drop: bool) -> dict:
    times: dict[str, list[float]] = defaultdict(list)
    for r in range(rounds):
        where = root / f"round{r}"
        for name, (save, load) in _methods(lead, where).items():
            times[f"{name}_save"].append(timed(save)[0])
            if drop:
                lead.call("drop_caches")
            times[f"{name}_load"].append(timed(load)[0])
        shutil.rmtree(where)
    return {"bytes": sum(lead.call("state_bytes")), "times": dict(times)}


def _methods(lead: Lockstep, root: Path) -> dict:
    """(save, load) per method, each under its own directory of ``root``."""
    for name in ("disk", "torch"):  # rayrl's manager and dcp.save make their own
        (root / name).mkdir(parents=True)
    mgr, part = manager(lead, root / "rayrl", async_save=False), LockstepActorPart(lead)

    def resume() -> None:
        step_dir = mgr.prepare(None, "auto", restarted=False)
        assert step_dir is not None, "the save left nothing to resume from"
        mgr.load(step_dir, [part])

    def pair(method: str, path: Path):
        return lambda: lead.call(f"{method}_save", str(path)), lambda: lead.call(f"{method}_load", str(path))

    return {"disk": pair("disk", root / "disk"),
            "rayrl": (lambda: mgr.save(1, [part], {"global_step": 1}), resume),
            "dcp": pair("dcp", root / "dcp"),
            "torch": pair("torch", root / "torch" / "full.pt")}
