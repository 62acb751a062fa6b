"""The checkpoint manager: the async save life cycle, retention timing, custom managers and their config.

Unit tests drive DefaultCheckpointManager in-process with real participants that write real files (async
ones in a thread, released by the test). The end-to-end tests run the example MirrorManager through
run_main.sh twice on one run directory (a resume with more steps in between) to check retention from disk
and the mirror, and that the resumed run's config is the one in force (its LR schedule, the changed keys).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from examples.mirror_manager import MirrorConfig, MirrorManager
from rayrl.checkpoint import CheckpointError, file_digest, verify_checkpoint
from rayrl.checkpoint.format import TRACKER_FILE
from rayrl.checkpoint.manager import DefaultCheckpointManager
from rayrl.config import CheckpointConfig, ConfigError, load_config
from rayrl.failures import InfraFailure, WorkerId
from rayrl.managers import load_manager_class, resolve_manager
from rayrl.workers.policy import build_scheduler
from tests.support import FAST, REPO, read_events, read_metrics, run_dir, shared_ray_env

MIRROR = "examples.mirror_manager.MirrorManager"
COSINE = "actor.optim.lr_schedule=cosine"


class FileParticipant:
    """Writes ``<name>/part.bin``; with a ``gate`` it writes in a background thread once the gate opens."""

    FILE = "part.bin"
    active = 0  # writes started and not yet collected, over all instances
    most_active = 0

    def __init__(self, name: str, gate: threading.Event | None = None, fail: Exception | None = None) -> None:
        self.name, self.gate, self.fail = name, gate, fail
        self.thread: threading.Thread | None = None
        self.loaded: bytes | None = None

    def save(self, directory: str, async_save: bool) -> dict | None:
        self.path = Path(directory) / self.FILE
        self.path.parent.mkdir(parents=True)
        FileParticipant.active += 1
        FileParticipant.most_active = max(FileParticipant.most_active, FileParticipant.active)
        if self.gate is None:
            return self._written()
        self.thread = threading.Thread(target=self._write_later)
        self.thread.start()
        return None

    def _write_later(self) -> None:
        self.gate.wait(timeout=30)
        if self.fail is None:
            self.path.write_bytes(self.name.encode())

    def _written(self) -> dict:
        FileParticipant.active -= 1
        if self.fail is not None:
            raise self.fail
        if not self.path.exists():
            self.path.write_bytes(self.name.encode())
        return {self.FILE: file_digest(self.path)}

    def poll_save(self, block: bool) -> dict | None:
        assert self.thread is not None
        self.thread.join(timeout=30 if block else 0)
        return None if self.thread.is_alive() else self._written()

    def load(self, directory: str) -> None:
        self.loaded = (Path(directory) / self.FILE).read_bytes()


@pytest.fixture(autouse=True)
def _count_writers():
    FileParticipant.active = FileParticipant.most_active = 0


def _manager(tmp_path: Path, **cfg) -> DefaultCheckpointManager:
    return DefaultCheckpointManager(CheckpointConfig(**cfg), str(tmp_path / "checkpoints"))


def _temp_dirs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "checkpoints").glob(".tmp-*"))


def test_async_step_is_visible_only_once_complete_and_loads_back(tmp_path):
    mgr, gate = _manager(tmp_path), threading.Event()
    mgr.save(1, [FileParticipant("sync"), FileParticipant("async", gate)], {"global_step": 1})
    assert mgr.poll() is None
    assert mgr.list_steps() == [] and mgr.latest() is None and len(_temp_dirs(tmp_path)) == 1
    assert not (tmp_path / "checkpoints" / TRACKER_FILE).exists()
    gate.set()
    mgr.wait()
    assert mgr.list_steps() == [1] and _temp_dirs(tmp_path) == []
    assert (tmp_path / "checkpoints" / TRACKER_FILE).read_text().strip() == "1"
    parts = [FileParticipant("sync"), FileParticipant("async")]
    assert mgr.load(mgr.latest(), parts) == {"global_step": 1}
    assert [p.loaded for p in parts] == [b"sync", b"async"]


def test_next_save_waits_for_the_one_in_flight(tmp_path):
    mgr, gate = _manager(tmp_path), threading.Event()
    mgr.save(1, [FileParticipant("a", gate)], {"global_step": 1})
    second = threading.Thread(target=mgr.save, args=(2, [FileParticipant("a")], {"global_step": 2}))
    second.start()
    time.sleep(0.3)
    assert second.is_alive(), "the second save did not wait for the first"
    assert len(_temp_dirs(tmp_path)) == 1 and mgr.list_steps() == []
    gate.set()
    second.join(timeout=30)
    assert mgr.list_steps() == [1, 2]
    assert FileParticipant.most_active == 1


def test_background_failure_is_raised_at_the_next_poll_and_drops_only_that_step(tmp_path):
    mgr, gate = _manager(tmp_path), threading.Event()
    mgr.save(1, [FileParticipant("a")], {"global_step": 1})
    failing = FileParticipant("a", gate, fail=OSError(28, "No space left on device"))
    mgr.save(2, [failing], {"global_step": 2})
    gate.set()
    failing.thread.join()
    with pytest.raises(CheckpointError, match=r"background save of step 2 failed: OSError: .*No space left"):
        mgr.poll()
    assert mgr.list_steps() == [1] and mgr.latest().endswith("global_step_1") and _temp_dirs(tmp_path) == []
    mgr.wait()  # nothing in flight any more
    mgr.save(3, [FileParticipant("a")], {"global_step": 3})
    assert mgr.list_steps() == [1, 3]


def test_a_lost_worker_during_a_save_reaches_recovery_unchanged(tmp_path):
    mgr, gate = _manager(tmp_path), threading.Event()
    lost = InfraFailure(WorkerId("actor", 1), "ActorDiedError: the actor died unexpectedly")
    mgr.save(1, [FileParticipant("a", gate, fail=lost)], {"global_step": 1})
    gate.set()
    with pytest.raises(InfraFailure) as caught:
        mgr.wait()
    assert caught.value is lost
    assert _temp_dirs(tmp_path) == [] and mgr.list_steps() == []


def test_retention_deletes_only_after_the_new_step_is_committed(tmp_path):
    mgr, gate = _manager(tmp_path, max_to_keep=1), threading.Event()
    mgr.save(1, [FileParticipant("a")], {"global_step": 1})
    mgr.save(2, [FileParticipant("a", gate)], {"global_step": 2})
    assert mgr.list_steps() == [1], "the old step went before the new one was complete"
    gate.set()
    mgr.wait()
    assert mgr.list_steps() == [2]


def test_top_k_counts_steps_already_on_disk_after_a_resume(tmp_path):
    def save(mgr, step, reward):
        mgr.save(step, [FileParticipant("a")], {"global_step": step, "metrics": {"reward_mean": reward}})

    first = _manager(tmp_path)
    for step, reward in [(1, 0.9), (2, 0.1), (3, 0.5)]:
        save(first, step, reward)
    resumed = _manager(tmp_path, keep_top_k=2, metric="reward_mean")  # a new process: nothing in memory
    save(resumed, 4, 0.2)
    save(resumed, 5, 0.3)
    assert resumed.list_steps() == [1, 3, 5]  # the two best (1, 3) and the newest


# --------------------------------------------------------------------------- loading a manager class

class NoConstructor(DefaultCheckpointManager):
    def __init__(self) -> None:  # not (config, checkpoint_dir)
        super().__init__(CheckpointConfig(), "x")


class BadConfigClass(DefaultCheckpointManager):
    config_class = dict


@pytest.mark.parametrize("path, message", [
    ("examples.no_such_module.Manager", r"cannot import 'examples.no_such_module.Manager': ModuleNotFoundError"),
    ("examples.mirror_manager.NoSuchClass", r"cannot import 'examples.mirror_manager.NoSuchClass'"),
    ("NoDots", r"'NoDots' is not a dotted path"),
    ("examples.mirror_manager.log", r"'examples.mirror_manager.log' is not a class"),
    ("collections.OrderedDict", r"collections.OrderedDict does not implement the CheckpointManager protocol "
                                r"\(missing: prepare, save, poll, wait, abort, load, latest, list_steps\)"),
    ("tests.test_manager.NoConstructor", r"tests.test_manager.NoConstructor cannot be built as "
                                         r"NoConstructor\(config, checkpoint_dir\)"),
    ("tests.test_manager.BadConfigClass", r"tests.test_manager.BadConfigClass.config_class must be a dataclass subclassing "
                                          r"rayrl.config.CheckpointConfig"),
])
def test_unusable_manager_class_is_a_config_error_naming_it(path, message):
    with pytest.raises(ConfigError, match=r"^runner\.checkpoint\.manager_class: " + message):
        load_manager_class(path)


def test_manager_config_subclass_adds_keys_only_with_its_manager():
    loaded = load_config(None, [f"runner.checkpoint.manager_class={MIRROR}", "runner.checkpoint.mirror_dir=/m",
                                "runner.checkpoint.max_to_keep=3"])
    cls, cfg = resolve_manager(loaded)  # the loader kept mirror_dir; the manager's schema checks it
    assert cls is MirrorManager and type(cfg.runner.checkpoint) is MirrorConfig
    assert (cfg.runner.checkpoint.mirror_dir, cfg.runner.checkpoint.max_to_keep) == ("/m", 3)
    with pytest.raises(ConfigError, match=r"^runner\.checkpoint\.mirror_dir: unknown key"):
        load_config(None, ["runner.checkpoint.mirror_dir=/m"])
    typo = load_config(None, [f"runner.checkpoint.manager_class={MIRROR}", "runner.checkpoint.mirror_dri=/m"])
    with pytest.raises(ConfigError, match=r"^runner\.checkpoint\.mirror_dri: unknown key \(did you mean "
                                          r"runner\.checkpoint\.mirror_dir\?\)"):
        resolve_manager(typo)
    wrong_type = load_config(None, [f"runner.checkpoint.manager_class={MIRROR}", "runner.checkpoint.mirror_dir=[1]"])
    with pytest.raises(ConfigError, match=r"^runner\.checkpoint\.mirror_dir: "):
        resolve_manager(wrong_type)


def test_mirror_manager_keeps_a_verified_copy_of_exactly_the_kept_steps(tmp_path):
    mgr = MirrorManager(MirrorConfig(max_to_keep=2, mirror_dir=str(tmp_path / "mirror")),
                        str(tmp_path / "checkpoints"))
    for step in (1, 2, 3):
        mgr.save(step, [FileParticipant("a")], {"global_step": step})
    assert mgr.list_steps() == [2, 3]
    assert [s for s, _ in mgr.mirror.list_step_dirs()] == [2, 3]
    for step in (2, 3):
        verify_checkpoint(tmp_path / "mirror" / f"global_step_{step}", expected_step=step)
    assert (tmp_path / "mirror" / TRACKER_FILE).read_text().strip() == "3"


# --------------------------------------------------------------------------- end to end (run_main.sh)

def _run_main(out: Path, *overrides: str, timeout: float = 400) -> subprocess.CompletedProcess:
    cmd = ["bash", "run_main.sh", "--config", str(REPO / "configs/grpo_tiny.yaml"), f"runner.output_dir={out}",
           *FAST, *overrides]
    return subprocess.run(cmd, cwd=REPO, env=shared_ray_env(RAYRL_SKIP_SETUP="1"), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def _steps(root: Path) -> list[int]:
    return sorted(int(p.name.rpartition("_")[2]) for p in root.glob("global_step_*") if p.name[12:].isdigit())


@pytest.fixture(scope="module")
def mirrored_runs(tmp_path_factory):
    """Run 1: steps 1-4, a save every step, max_to_keep=2. Run 2, same command line but max_steps=8 and
    top-2 by reward_mean plus the newest: resumes from step 4 and rotates what run 1 left on disk too."""
    out = tmp_path_factory.mktemp("mirror")
    common = [f"runner.checkpoint.manager_class={MIRROR}", f"runner.checkpoint.mirror_dir={out / 'mirror'}",
              "runner.save_interval=1", COSINE]
    first = _run_main(out, *common, "runner.max_steps=4", "runner.checkpoint.max_to_keep=2")
    assert first.returncode == 0, first.stdout[-3000:]
    after_first = (_steps(run_dir(out) / "checkpoints"), _steps(out / "mirror"))
    second = _run_main(out, *common, "runner.max_steps=8", "runner.checkpoint.max_to_keep=1",
                       "runner.checkpoint.keep_top_k=2", "runner.checkpoint.metric=reward_mean")
    assert second.returncode == 0, second.stdout[-3000:]
    return out, after_first, first.stdout, second.stdout


def test_max_to_keep_keeps_the_newest_steps(mirrored_runs):
    _, (primary, mirror), _, _ = mirrored_runs
    assert primary == [3, 4]
    assert mirror == [3, 4]


def _uninterrupted_lrs(max_steps: int) -> list[float]:
    """The lr an uninterrupted run logs at steps 1..max_steps: the schedule read before each step's update."""
    cfg = load_config(str(REPO / "configs/grpo_tiny.yaml"), [COSINE, f"runner.max_steps={max_steps}"])
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.actor.optim.lr)
    scheduler = build_scheduler(optimizer, cfg.actor.optim, max_steps)
    lrs = []
    for _ in range(max_steps):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return lrs


def test_resume_with_more_steps_follows_the_new_schedule_and_lists_the_changed_keys(mirrored_runs):
    """Run 2 raises max_steps from 4 to 8: steps 5-8 decay over 8 steps (not the schedule of run 1 that the
    checkpoint's scheduler state came from), and the keys that differ from the checkpoint's are listed once."""
    out, _, _, second = mirrored_runs
    got = {m["step"]: m["lr"] for m in read_metrics(out)}
    assert [got[s] for s in range(1, 5)] == _uninterrupted_lrs(4), got  # run 1: a 4-step decay
    want = _uninterrupted_lrs(8)
    assert [got[s] for s in range(5, 9)] == want[4:], (got, want)
    assert want[7] > 3e-3 * 0.1  # an 8-step cosine run has not reached the floor (min_lr_ratio) by step 8
    (changed,) = [e for e in read_events(out) if e["event"] == "config_changed"]
    assert changed["step"] == 4
    assert changed["changed"] == {"runner.max_steps": [4, 8], "runner.checkpoint.max_to_keep": [2, 1],
                                  "runner.checkpoint.keep_top_k": [None, 2],
                                  "runner.checkpoint.metric": [None, "reward_mean"]}, changed
    assert "runner.max_steps: 4 -> 8" in second


def test_after_resume_top_k_keeps_the_best_and_the_newest(mirrored_runs):
    out, _, _, second = mirrored_runs
    assert re.search(r"Resumed from \S*global_step_4: next step 5", second), second[-3000:]
    rewards = {m["step"]: m["reward_mean"] for m in read_metrics(out)}
    assert sorted(rewards) == list(range(1, 9))
    on_disk = [3, 4, 5, 6, 7, 8]  # run 1 left 3 and 4; ties go to the newer step
    best = sorted(on_disk, key=lambda s: (-rewards[s], -s))[:2]
    assert _steps(run_dir(out) / "checkpoints") == sorted(set(best) | {8})
    for step in _steps(run_dir(out) / "checkpoints"):  # each kept step's own metrics ranked it
        state = json.loads((run_dir(out) / f"checkpoints/global_step_{step}/trainer_state.json").read_text())
        assert state["metrics"]["reward_mean"] == rewards[step]


def test_deletions_follow_the_commit_of_a_newer_step(mirrored_runs):
    _, _, first, second = mirrored_runs
    for log in (first, second):
        saved = None
        deleted = 0
        for line in log.splitlines():
            if m := re.search(r"Saved checkpoint \S*global_step_(\d+) ", line):
                saved = int(m.group(1))
            elif m := re.search(r"Retention: deleted checkpoint global_step_(\d+)", line):
                assert saved is not None and int(m.group(1)) < saved, line
                deleted += 1
        assert deleted >= 2


def test_mirror_example_holds_exactly_the_primary_steps(mirrored_runs):
    out, _, _, second = mirrored_runs
    primary = run_dir(out) / "checkpoints"
    assert _steps(out / "mirror") == _steps(primary)
    for step in _steps(primary):
        copy = out / "mirror" / f"global_step_{step}"
        verify_checkpoint(copy, expected_step=step)
        assert (copy / "manifest.json").read_bytes() == (primary / f"global_step_{step}/manifest.json").read_bytes()
    assert "Mirrored checkpoint global_step_8" in second


@pytest.mark.parametrize("path", ["examples.no_such_module.Manager", "collections.OrderedDict"])
def test_bad_manager_class_exits_2_naming_it(tmp_path, path):
    proc = _run_main(tmp_path, f"runner.checkpoint.manager_class={path}", timeout=120)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert f"runner.checkpoint.manager_class: " in proc.stdout and path in proc.stdout
    assert "Traceback" not in proc.stdout
    assert not (tmp_path / "t").exists()  # refused before anything ran
