"""Saves that go wrong, with real processes: SIGKILLs in the middle of saves (at chosen points and at random
moments) and a save into a full filesystem. Whatever happens, resume finds a complete checkpoint, never a
half one, and the run ends bit-exact with an uninterrupted one.

Kills at exact points use a test-only ``sitecustomize`` (written below into a temp dir put first on
PYTHONPATH, so every process of the run loads it): a Python audit hook that SIGKILLs its own process when
it is about to open, create or rename a planned path (or makes that call fail with a given errno, the
full-disk fallback where no small tmpfs can be mounted). rayrl's code is not touched; each point fires once.
"""

from __future__ import annotations

import errno
import json
import random
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rayrl.checkpoint.manifest import verify_checkpoint
from tests.support import (
    RECOVERY_STEPS, REPO, assert_same_weights, checkpoints_dir, env_for_tests, events_named, final_weights,
    kill_session, output_of, rayrl_cmd, rewards, run_rayrl, spawn_rayrl, tracker_step, uninterrupted_run,
)

MAX_STEPS = 20  # RECOVERY_STEPS' (the uninterrupted run every fault test here compares with)

_HOOK = r'''
"""Test-only fault injection, written by tests/test_save_faults.py: SIGKILL this process at planned points."""
import json
import os
import signal
import threading
import time
import re


def _install(plan_path):
    with open(plan_path) as f:
        plan = json.load(f)
    points = [(i, p, re.compile(p["pattern"])) for i, p in enumerate(plan["points"])]
    busy = threading.local()

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def fire(i, p, event, path):
        try:
            fd = os.open(os.path.join(plan["dir"], f"fired-{i}.json"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # every point fires once, whichever process gets there first
        os.write(fd, json.dumps({"pid": os.getpid(), "time": time.time(), "event": event, "path": path}).encode())
        os.close(fd)
        if p.get("errno"):  # fail this one call as the OS would (e.g. ENOSPC) instead of dying
            raise OSError(p["errno"], os.strerror(p["errno"]), path)
        if p.get("delay"):
            threading.Thread(target=lambda: (time.sleep(p["delay"]), die()), daemon=True).start()
        else:
            die()

    def hook(event, args):
        if event not in ("open", "os.rename", "os.mkdir") or getattr(busy, "on", False):
            return
        try:
            path = os.fsdecode(os.fspath(args[1] if event == "os.rename" else args[0]))
        except TypeError:  # a file descriptor
            return
        busy.on = True
        try:
            for i, p, rx in points:
                if p["event"] == event and rx.search(path) and os.path.exists(p.get("requires") or "/"):
                    fire(i, p, event, path)
        finally:
            busy.on = False

    import sys
    sys.addaudithook(hook)


if os.environ.get("RAYRL_TEST_KILL_PLAN"):
    _install(os.environ["RAYRL_TEST_KILL_PLAN"])
'''


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    return uninterrupted_run(tmp_path_factory, *RECOVERY_STEPS)


def _tmp(step: int) -> str:
    return rf"/checkpoints/\.tmp-global_step_{step}-[^/]+"


def _kill_plan(ckpts: Path, rng: random.Random) -> list[dict]:
    """Ten kills in the saves of steps 2..11 (one save per step): first at exact points of a save, then
    at random moments after a random process starts writing its part."""
    q = re.escape(str(ckpts))
    exact = [
        # (step, who dies, where): "who" is implied by the path only that process writes
        dict(step=2, event="open", pattern=_tmp(2) + r"/actor/__1_0\.distcp$"),  # rank 1, between shard writes
        dict(step=3, event="open", pattern=_tmp(3) + r"/actor/\.metadata\.tmp$"),  # rank 0: shards, no metadata
        dict(step=4, event="open", pattern=_tmp(4) + r"/\.tmp-manifest\.json-"),  # coordinator: all but manifest
        dict(step=5, event="os.rename", pattern=rf"^{q}/global_step_5$"),  # coordinator: before the commit rename
        dict(step=6, event="open", pattern=rf"^{q}/\.tmp-latest_checkpointed_iteration\.txt-",  # coordinator:
             requires=str(ckpts / "global_step_6")),  # between the rename and the tracker update
        dict(step=7, event="open", pattern=_tmp(7) + r"/rollout/\.tmp-worker_0\.pt-"),  # rollout worker
        dict(step=8, event="open", pattern=_tmp(8) + r"/actor/\.tmp-extra_state_rank_0\.pt-"),  # rank 0 first
    ]
    starts = {  # the first act of each process in a save: a random delay after it, it dies
        "coordinator": ("os.mkdir", lambda s: _tmp(s) + "$"),
        "actor[0]": ("open", lambda s: _tmp(s) + r"/actor/\.tmp-extra_state_rank_0\.pt-"),
        "actor[1]": ("open", lambda s: _tmp(s) + r"/actor/\.tmp-extra_state_rank_1\.pt-"),
        "rollout[0]": ("open", lambda s: _tmp(s) + r"/rollout/\.tmp-worker_0\.pt-"),
    }
    randomized = []
    for step in (9, 10, 11):
        who = rng.choice(sorted(starts))
        event, pattern = starts[who]
        randomized.append(dict(step=step, event=event, pattern=pattern(step), who=who,
                               delay=round(rng.uniform(0.001, 0.4), 3)))
    return exact + randomized


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_kills_during_saves_always_resume_from_a_complete_checkpoint_and_end_bit_exact(uninterrupted, tmp_path):
    seed = random.randrange(1 << 30)
    ckpts = checkpoints_dir(tmp_path)
    plan = {"dir": str(tmp_path / "fired"), "points": _kill_plan(ckpts, random.Random(seed))}
    env = _env_with_plan(tmp_path, plan)
    overrides = [*RECOVERY_STEPS, "runner.save_interval=1", "runner.max_restarts=30"]
    proc = spawn_rayrl(tmp_path, *overrides, env=env)
    try:
        proc.wait(timeout=1500)
    finally:
        kill_session(proc)
    out = output_of(proc)
    context = f"seed {seed}, plan {json.dumps(plan['points'], indent=1)}\n{out[-5000:]}"
    assert proc.returncode == 0, context
    fired = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in (tmp_path / "fired").iterdir()}
    assert sorted(fired) == list(range(len(plan["points"]))), context  # every planned kill happened

    # after each exact kill the run resumed from the newest complete step, never from a half one; a rollout
    # worker killed after its part was written (a random delay) may be recovered in the job, with no resume
    resumed = [(e["time"], e["step"]) for e in events_named(tmp_path, "resumed")]
    in_job = [e["time"] for e in events_named(tmp_path, "recovered") if "regenerated" in e]
    newest_complete = {2: 1, 3: 2, 4: 3, 5: 4, 6: 6, 7: 6, 8: 7}  # step 6: renamed, tracker still at 5
    for i, point in enumerate(plan["points"]):
        after = [step for t, step in resumed if t > fired[i]["time"]]
        assert after or (point.get("who") == "rollout[0]" and any(t > fired[i]["time"] for t in in_job)), (
            f"no resume after kill {i} ({point})\n{context}")
        if point["step"] in newest_complete and "delay" not in point:
            assert after[0] == newest_complete[point["step"]], f"kill {i} ({point}): resumed from {after[0]}"
    assert not list(ckpts.glob("*.corrupt-*")), context  # no half-written step was ever visible as a step
    assert not list(ckpts.glob(".tmp-*")), context
    assert rewards(tmp_path) == rewards(uninterrupted), context
    assert_same_weights(final_weights(tmp_path, MAX_STEPS), final_weights(uninterrupted, MAX_STEPS))


def _env_with_plan(tmp_path: Path, plan: dict) -> dict[str, str]:
    """The test environment with the fault hook loaded by every process of the run, following ``plan``."""
    Path(plan["dir"]).mkdir()
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(_HOOK)
    env = env_for_tests(RAYRL_TEST_KILL_PLAN=str(tmp_path / "plan.json"))
    env["PYTHONPATH"] = f"{hook_dir}:{env['PYTHONPATH']}"
    return env


def _small_fs_available(tmp_path: Path) -> bool:
    """Whether this machine lets us mount a tmpfs in a private user and mount namespace (no root needed)."""
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    mount = f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(probe))}"
    return subprocess.run(["unshare", "-rm", "sh", "-c", mount], capture_output=True).returncode == 0


def test_a_save_into_a_full_filesystem_leaves_the_earlier_checkpoints_loadable(uninterrupted, tmp_path):
    """The run's directory on a real 1.5 MB tmpfs (in a private mount namespace): two checkpoints fit, the
    third save fails with ENOSPC. The run stops with the error named, no temp dir is left, the earlier
    checkpoints verify, and resuming from them (on a normal disk) ends bit-exact. Where no such tmpfs can
    be mounted, the fault hook makes the third save's first shard fail with ENOSPC instead."""
    small, kept = tmp_path / "small", tmp_path / "kept"
    small.mkdir()
    if _small_fs_available(tmp_path):
        kept.mkdir()
        run = shlex.join(rayrl_cmd(small, *RECOVERY_STEPS))
        script = (f"mount -t tmpfs -o size=1536k tmpfs {shlex.quote(str(small))} || exit 97\n"
                  f"{run}\nrc=$?\ncp -a {shlex.quote(str(small))}/. {shlex.quote(str(kept))}/\nexit $rc\n")
        proc = subprocess.run(["unshare", "-rm", "bash", "-c", script], cwd=REPO, env=env_for_tests(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    else:
        kept = small
        plan = {"dir": str(tmp_path / "fired"), "points": [
            dict(event="open", pattern=_tmp(12) + r"/actor/__0_0\.distcp$", errno=errno.ENOSPC)]}
        proc = subprocess.run(rayrl_cmd(small, *RECOVERY_STEPS), cwd=REPO, env=_env_with_plan(tmp_path, plan),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 3, proc.stdout[-4000:]  # stopped: a program error, not relaunched
    assert "No space left on device" in proc.stdout, proc.stdout[-4000:]
    ckpts = checkpoints_dir(kept)
    steps = sorted(int(p.name.split("_")[-1]) for p in ckpts.glob("global_step_*"))
    assert steps and steps == [4, 8][:len(steps)], steps
    assert not list(ckpts.glob(".tmp-*")), sorted(p.name for p in ckpts.iterdir())  # the failed save is gone
    assert tracker_step(kept) == steps[-1]
    for step in steps:
        verify_checkpoint(ckpts / f"global_step_{step}", check_checksums=True)
        assert_same_weights(final_weights(kept, step), final_weights(uninterrupted, step))

    resumed = run_rayrl(kept, *RECOVERY_STEPS)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"Resumed from {ckpts / f'global_step_{steps[-1]}'}" in resumed.stdout
    assert rewards(kept) == rewards(uninterrupted)
    assert_same_weights(final_weights(kept, MAX_STEPS), final_weights(uninterrupted, MAX_STEPS))


_FULL_DISK_PROBE = """
import sys
from torch.distributed.checkpoint.api import CheckpointException
from rayrl.checkpoint.sharded import _plain_errors
try:
    with _plain_errors(sys.argv[1] + "/actor", "write"):  # torch's zip writer on a full disk says only this:
        raise CheckpointException("write", {0: (RuntimeError("unexpected pos 704 vs 598"), None),
                                            1: (OSError(28, "No space left on device"), None)})
except Exception as err:
    print(err)
"""


def test_a_write_failing_on_a_full_filesystem_says_so_first(tmp_path):
    """The CheckpointError of a DCP write that failed on a (nearly) full filesystem starts with the OS's
    words, whatever rank 0 raised: the rank that got ENOSPC may come after a long cause, and the message is
    shortened at its end on its way to the console. On a real 64 KB tmpfs where this machine can mount one in
    a private namespace; on this test's own (roomy) disk the same failure gets no such note."""
    causes = "(rank 0: RuntimeError: unexpected pos 704 vs 598; rank 1: OSError: [Errno 28] No space left on device)"
    probe = [sys.executable, "-c", _FULL_DISK_PROBE]
    roomy = subprocess.run([*probe, str(tmp_path)], cwd=REPO, env=env_for_tests(), capture_output=True, text=True,
                           timeout=120)
    assert f"/actor: DCP write failed {causes}" in roomy.stdout, roomy.stdout + roomy.stderr[-3000:]
    if _small_fs_available(tmp_path):
        small = tmp_path / "small"
        small.mkdir()
        script = f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(small))} && {shlex.join([*probe, str(small)])}"
        full = subprocess.run(["unshare", "-rm", "bash", "-c", script], cwd=REPO, env=env_for_tests(),
                              capture_output=True, text=True, timeout=120)
        assert f"/actor: DCP write failed: No space left on device (65536 bytes free) {causes}" in full.stdout, (
            full.stdout + full.stderr[-3000:])
