"""Q1: how close to the disk's speed are rayrl's saves and loads?

Two real ActorWorker ranks (benchmarks.lockstep) hold an FSDP2 Llama with AdamW state. Each round measures,
on the same bytes and the same disk, one after another (so slow spells of the shared disk hit all alike):
  disk     each rank writes its share to its own file from a reused buffer + fsync; reads it back
  rayrl    synchronous save through the DefaultCheckpointManager (DCP shards, digests, manifest, commit);
           load = what resuming does: find + verify (checksums) the latest step, then every rank loads it
  dcp      plain dcp.save / dcp.load (+ set_state_dict) of the same state dict
  torch    full state dict gathered to rank 0, torch.save + fsync; torch.load on rank 0 + broadcast
  s3       rayrl's save and resume (as ``rayrl``) with ``runner.checkpoint.dir`` on an S3 server: moto's, on
           127.0.0.1 in this process (``benchmarks.s3_target``), when moto and s3fs are installed. A figure
           with no target: a loopback server measures the overhead of the object-store path, not a cloud.
The page cache is dropped before every read when the container allows it (reported as caches_dropped).
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

from benchmarks.common import Figure, Settings, can_drop_caches, ratio_figure, timed
from benchmarks.lockstep import Lockstep, LockstepActorPart, manager, run_lockstep
from benchmarks.s3_target import s3_target

NAME = "io"
TARGET = 0.8  # issue 7: save and load at >= 80% of the disk's sequential bandwidth
METHODS = ("disk", "rayrl", "dcp", "torch")


def run(settings: Settings) -> list[Figure]:
    dropped = can_drop_caches()
    with s3_target() as s3_url:  # the ranks (spawned below) reach it through the AWS_* variables it sets
        res = run_lockstep(_measure, settings.state_gb, settings.work_dir / "io", settings.rounds, dropped, s3_url)
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
        if f"s3_{op}" in rate:
            figs.append(ratio_figure("io", f"s3_{op}_vs_local_disk", rate[f"s3_{op}"], "GB/s", f"rayrl_{op}",
                                     rate[f"rayrl_{op}"], **note, s3="moto server on 127.0.0.1"))
    return figs


def _measure(lead: Lockstep, root: Path, rounds: int, drop: bool, s3_url: str | None) -> dict:
    times: dict[str, list[float]] = defaultdict(list)
    for r in range(rounds):
        where = root / f"round{r}"
        for name, (save, load) in _methods(lead, where, s3_url and f"{s3_url}/round{r}").items():
            times[f"{name}_save"].append(timed(save)[0])
            if drop:
                lead.call("drop_caches")
            times[f"{name}_load"].append(timed(load)[0])
        shutil.rmtree(where)
    return {"bytes": sum(lead.call("state_bytes")), "times": dict(times)}


def _methods(lead: Lockstep, root: Path, s3_root: str | None) -> dict:
    """(save, load) per method, each under its own directory of ``root`` (``s3``: of ``s3_root``)."""
    for name in ("disk", "torch"):  # rayrl's manager and dcp.save make their own
        (root / name).mkdir(parents=True)
    part = LockstepActorPart(lead)

    def rayrl(checkpoint_dir: str):
        mgr = manager(lead, checkpoint_dir, async_save=False)

        def resume() -> None:
            step_dir = mgr.prepare(None, "auto", restarted=False)
            assert step_dir is not None, "the save left nothing to resume from"
            mgr.load(step_dir, [part])

        return lambda: mgr.save(1, [part], {"global_step": 1}), resume

    def pair(method: str, path: Path):
        return lambda: lead.call(f"{method}_save", str(path)), lambda: lead.call(f"{method}_load", str(path))

    methods = {"disk": pair("disk", root / "disk"), "rayrl": rayrl(str(root / "rayrl")),
               "dcp": pair("dcp", root / "dcp"), "torch": pair("torch", root / "torch" / "full.pt")}
    if s3_root is not None:
        methods["s3"] = rayrl(s3_root)
    return methods
