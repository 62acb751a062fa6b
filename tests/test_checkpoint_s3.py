"""Checkpoints on object storage, against a real S3 API (moto's server on 127.0.0.1, tests/s3_server.py).

The fast tests drive the storage layer and the default manager in-process, with participants that write
real objects, and DCP's fsspec writer and reader through ``ShardedCheckpointIO``: the commit order
(objects, manifest, tracker), an incomplete step ignored and cleaned up only once older than a valid one, a
corrupted object skipped, retention after a newer manifest only, the archive of ``resume_mode: disable``,
redacted credentials, and the error for a missing fsspec package. The end-to-end test (slow) runs rayrl with
``runner.checkpoint.dir=s3://...``: a kill -9 of the whole job in the middle of a save, the same command
resuming bit-exact, and a fresh run directory resuming from the bucket alone.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from rayrl.checkpoint import CheckpointError, CheckpointInvalid, verify_checkpoint
from rayrl.checkpoint.format import ACTOR_DIR, MANIFEST_FILE, TRACKER_FILE, TRAINER_STATE_FILE
from rayrl.checkpoint.layout import CheckpointDir
from rayrl.checkpoint.manager import DefaultCheckpointManager
from rayrl.checkpoint.storage import FsspecStorage, StorageUnavailable, storage_for
from rayrl.checkpoint.torch_files import read_torch, write_torch
from rayrl.config import REDACTED, CheckpointConfig, ConfigError, config_to_dict, load_config
from tests.s3_server import s3_server  # noqa: F401 -- the fixture
from tests.support import (
    RESUME_STEPS, actor_weights, assert_same_weights, env_for_tests, events_named, final_weights, kill_session,
    output_of, read_metrics, rewards, run_dir, run_rayrl, spawn_rayrl, uninterrupted_run,
    wait_running,
)



class RecordingStorage(FsspecStorage):
    """The real fsspec storage, noting every object written and every directory removed, in order; and in
    ``fs_acts`` what it asked of s3fs for deletes and copies, object by object."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.acts: list[tuple[str, str]] = []
        self.fs_acts: list[tuple[str, str]] = []
        self.fs = _RecordingFs(self.fs, self.fs_acts)

    def write_bytes(self, path, data) -> None:
        super().write_bytes(path, data)
        self.acts.append(("write", str(path)))

    def remove(self, path) -> None:
        super().remove(path)
        self.acts.append(("remove", str(path)))


class _RecordingFs:
    """An s3fs client passing every call through, noting deletes and copies (object, in order)."""

    def __init__(self, fs, acts: list[tuple[str, str]]) -> None:
        self._fs, self._acts = fs, acts

    def __getattr__(self, name: str):
        return getattr(self._fs, name)

    def rm_file(self, path: str) -> None:
        self._acts.append(("rm_file", path))
        self._fs.rm_file(path)

    def rm(self, path: str, recursive: bool = False) -> None:
        self._acts.append(("rm", path))
        self._fs.rm(path, recursive=recursive)

    def copy(self, src: str, dst: str) -> None:
        self._acts.append(("copy", dst))
        self._fs.copy(src, dst)


class S3Part:
    """Writes ``<name>/state.pt`` through the storage; with a ``gate`` only once the gate opens (an
    asynchronous save still in flight until then)."""

    def __init__(self, name: str, value: int, gate: threading.Event | None = None) -> None:
        self.name, self.value, self.gate = name, value, gate
        self.thread: threading.Thread | None = None
        self.loaded = None

    def save(self, directory: str, async_save: bool) -> dict | None:
        self.storage, self.path = storage_for(directory), f"{directory}/state.pt"
        if self.gate is None:
            return {"state.pt": write_torch(self.storage, self.path, {"value": self.value})}
        self.thread = threading.Thread(target=lambda: self.gate.wait(30))
        self.thread.start()
        return None

    def poll_save(self, block: bool) -> dict | None:
        self.thread.join(timeout=30 if block else 0)
        if self.thread.is_alive():
            return None
        return {"state.pt": write_torch(self.storage, self.path, {"value": self.value})}

    def load(self, directory: str) -> None:
        self.loaded = read_torch(storage_for(directory), f"{directory}/state.pt")["value"]


def _manager(url: str, **cfg) -> DefaultCheckpointManager:
    mgr = DefaultCheckpointManager(CheckpointConfig(**cfg), url)
    mgr.storage = mgr.dir.storage = RecordingStorage(url)
    return mgr


def _save(mgr: DefaultCheckpointManager, step: int) -> None:
    mgr.save(step, [S3Part("a", step), S3Part("b", -step)], {"global_step": step, "metrics": {}})


def _names(s3, url: str) -> list[str]:
    fs = s3.fs()
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(url, detail=False)) if fs.exists(url) else []


def test_objects_then_manifest_then_tracker_and_an_unfinished_save_is_no_step(s3_server, tmp_path):
    url = s3_server.url("commit")
    mgr = _manager(url)
    _save(mgr, 1)
    writes = [p.removeprefix(url + "/") for act, p in mgr.storage.acts if act == "write"]
    assert writes == [f"global_step_1/{TRAINER_STATE_FILE}", f"global_step_1/{MANIFEST_FILE}", TRACKER_FILE]
    files = verify_checkpoint(f"{url}/global_step_1")["files"]  # the parts' objects, written before all that
    assert sorted(files) == ["a/state.pt", "b/state.pt", TRAINER_STATE_FILE]

    gate = threading.Event()
    mgr.save(2, [S3Part("a", 2), S3Part("b", -2, gate)], {"global_step": 2, "metrics": {}})
    assert mgr.poll() is None  # "b" still writing: objects of step 2 are there, its manifest is not
    fresh = CheckpointDir(url)  # what a process starting now sees
    assert fresh.list_step_dirs()[-1][0] == 2 and not fresh.has_manifest(f"{url}/global_step_2")
    assert fresh.find_resume_point() == (1, f"{url}/global_step_1") and fresh.read_tracker() == 1
    gate.set()
    mgr.wait()
    assert CheckpointDir(url).find_resume_point() == (2, f"{url}/global_step_2")


def test_an_incomplete_step_is_ignored_and_removed_only_once_older_than_a_valid_one(s3_server):
    url = s3_server.url("incomplete")
    mgr = _manager(url)
    _save(mgr, 1)
    fs = s3_server.fs()
    fs.pipe(f"{url}/global_step_3/leftover.bin", b"half of a save cut short")  # no manifest
    assert mgr.prepare(None, "auto", False) == f"{url}/global_step_1"
    assert "global_step_3" in _names(s3_server, url)  # newer than the newest valid step: left alone
    _save(mgr, 2)
    assert mgr.prepare(None, "auto", False) == f"{url}/global_step_2" and "global_step_3" in _names(s3_server, url)
    _save(mgr, 3)  # saving that step again clears the leftover first
    assert not fs.exists(f"{url}/global_step_3/leftover.bin") and verify_checkpoint(f"{url}/global_step_3")
    fs.pipe(f"{url}/global_step_4/x", b"leftover")
    _save(mgr, 5)
    assert mgr.prepare(None, "auto", False) == f"{url}/global_step_5"
    assert "global_step_4" not in _names(s3_server, url)  # older than a valid step now: removed


def test_a_corrupted_object_is_skipped_and_the_step_moved_aside(s3_server):
    url = s3_server.url("corrupt")
    mgr = _manager(url)
    _save(mgr, 1)
    _save(mgr, 2)
    fs = s3_server.fs()
    obj = f"{url}/global_step_2/a/state.pt"
    data = bytearray(fs.cat(obj))
    data[-30] ^= 0xFF  # same size, other bytes
    fs.pipe(obj, bytes(data))
    with pytest.raises(CheckpointInvalid, match="checksum mismatch for a/state.pt"):
        verify_checkpoint(f"{url}/global_step_2")
    assert mgr.prepare(None, "auto", False) == f"{url}/global_step_1"
    names = _names(s3_server, url)
    assert "global_step_2" not in names and any(n.startswith("global_step_2.corrupt-") for n in names), names
    assert CheckpointDir(url).read_tracker() == 1
    parts = [S3Part("a", 0), S3Part("b", 0)]
    state = mgr.load(mgr.latest(), parts)
    assert state["global_step"] == 1 and [p.loaded for p in parts] == [1, -1]


def test_retention_deletes_only_after_a_newer_manifest(s3_server):
    url = s3_server.url("retention")
    mgr = _manager(url, max_to_keep=1)
    _save(mgr, 1)
    _save(mgr, 2)
    acts = [(a, p.rsplit("/", 2)[-2:]) for a, p in mgr.storage.acts]
    manifest_2 = acts.index(("write", ["global_step_2", MANIFEST_FILE]))
    removed_1 = next(i for i, (a, p) in enumerate(acts) if a == "remove" and p[-1] == "global_step_1")
    assert manifest_2 < removed_1
    assert _names(s3_server, url) == ["global_step_2", TRACKER_FILE]
    deletes = [(op, p) for op, p in mgr.storage.fs_acts if "/global_step_1" in p]
    assert deletes[0] == ("rm_file", f"{url[len('s3://'):]}/global_step_1/{MANIFEST_FILE}"), deletes  # first
    with pytest.raises(CheckpointError):  # a save that fails deletes nothing
        mgr.save(3, [S3Part("a", 3), _Failing()], {"global_step": 3, "metrics": {}})
    assert mgr.latest() == f"{url}/global_step_2"


class _Failing:
    name = "failing"

    def save(self, directory: str, async_save: bool) -> dict | None:
        return None

    def poll_save(self, block: bool) -> dict | None:
        raise OSError("the writer lost its connection")


def test_resume_mode_disable_archives_in_the_bucket(s3_server):
    url = s3_server.url("archive")
    mgr = _manager(url)
    _save(mgr, 1)
    _save(mgr, 2)
    assert mgr.prepare(None, "disable", False) is None
    assert _names(s3_server, url) == ["run_0"]
    assert _names(s3_server, f"{url}/run_0") == ["global_step_1", "global_step_2", TRACKER_FILE]
    for step in (1, 2):
        verify_checkpoint(f"{url}/run_0/global_step_{step}", expected_step=step)
    acts = mgr.storage.fs_acts
    copies = [p for op, p in acts if op == "copy" and "/run_0/global_step_1/" in p]
    assert copies[-1].endswith(f"run_0/global_step_1/{MANIFEST_FILE}") and len(copies) == 4  # the copy: manifest last
    source = [(op, p) for op, p in acts if op != "copy" and "/archive/global_step_1" in p]
    assert source[0] == ("rm_file", f"{url[len('s3://'):]}/global_step_1/{MANIFEST_FILE}")  # the source: first
    assert acts.index(("copy", copies[-1])) < acts.index(source[0])
    _save(mgr, 1)
    assert mgr.prepare(None, "disable", False) is None and _names(s3_server, url) == ["run_0", "run_1"]


def test_dcp_shards_are_written_and_checked_through_the_store(s3_server):
    from rayrl.checkpoint.sharded import ShardedCheckpointIO

    url = s3_server.url("dcp")
    io = ShardedCheckpointIO(0, None)
    state = {"model": {"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(5)}, "optimizer": {"lr": 0.5}}

    class DcpPart:
        name = "actor"

        def save(self, directory: str, async_save: bool) -> dict:
            io.save(directory, state, async_save=False)
            return io.wait()

    mgr = _manager(url)
    mgr.save(1, [DcpPart()], {"global_step": 1, "metrics": {}})
    manifest = verify_checkpoint(f"{url}/global_step_1")
    assert any(name.endswith(".distcp") for name in manifest["files"]) and "actor/.metadata" in manifest["files"]
    loaded = {"model": {"w": torch.zeros(3, 4), "b": torch.zeros(5)}, "optimizer": {"lr": 0.0}}
    io.load(f"{url}/global_step_1/actor", loaded)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["optimizer"]["lr"] == 0.5
    fs = s3_server.fs()
    shard = next(p for p in fs.find(f"{url}/global_step_1/actor") if p.endswith(".distcp"))
    data = bytearray(fs.cat(shard))
    data[len(data) // 2] ^= 0x01
    fs.pipe(shard, bytes(data))
    with pytest.raises(CheckpointInvalid, match="actor/__0_0.distcp"):
        io.load(f"{url}/global_step_1/actor", loaded)
    io.close()


def test_credentials_in_storage_options_are_redacted_and_a_missing_package_is_named(s3_server):
    """The secret is a storage option (credentials); gcsfs is not installed here (gs:// URLs)."""
    secret = s3_server.secrets[1]
    cfg = load_config(None, ["runner.checkpoint.dir=s3://b/p", f"runner.checkpoint.storage_options.secret={secret}"])
    assert cfg.runner.checkpoint.storage_options == {"secret": secret}
    assert not s3_server.leaked(json.dumps(config_to_dict(cfg)))
    with pytest.raises(StorageUnavailable, match=r"pip install gcsfs"):
        storage_for("gs://bucket/run")
    from rayrl.main import validate  # the driver's start-up check: exit 2 with this one line

    with pytest.raises(ConfigError, match=r"^runner.checkpoint.dir: gs:// needs a package .*pip install gcsfs"):
        validate(load_config(None, ["runner.checkpoint.dir=gs://bucket/run"]))


# ---------------------------------------------------------------- end to end: rayrl with its checkpoints in S3


def _weights_in_bucket(s3, step_url: str, tmp: Path) -> dict[str, torch.Tensor]:
    """The model tensors of a step in the bucket, read with torch's own DCP converter from a local copy."""
    s3.fs().get(f"{step_url}/{ACTOR_DIR}/", f"{tmp}/{ACTOR_DIR}/", recursive=True)
    return actor_weights(tmp)


_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_run_on_s3_survives_a_kill_mid_save_and_resumes_from_the_bucket_alone(s3_server, tmp_path_factory,
                                                                               tmp_path):
    """kill -9 of the whole job while step 4 is being written to the bucket (its objects there, its
    manifest not): the same command resumes from step 2 and ends bit-exact with an uninterrupted run on
    local disk. Then a fresh, empty run directory with only the bucket (credentials now passed in
    storage_options) resumes from the newest step there. No credential is in anything the runs wrote."""
    reference = uninterrupted_run(tmp_path_factory, *RESUME_STEPS)
    url = s3_server.url("e2e")
    command = (f"runner.checkpoint.dir={url}", *RESUME_STEPS)
    env = env_for_tests()  # a Ray of its own, which the kill takes down too; credentials in the environment
    fs = s3_server.fs()

    def mid_save_of_step_4() -> bool:
        objects = fs.find(f"{url}/global_step_4")
        return bool(objects) and not any(o.endswith(MANIFEST_FILE) for o in objects)

    proc = spawn_rayrl(tmp_path / "a", *command, env=env)
    try:
        wait_running(proc, mid_save_of_step_4, timeout=240, what="the save of step 4")
    finally:
        kill_session(proc)
    outputs = [output_of(proc)]
    assert not fs.exists(f"{url}/global_step_4/{MANIFEST_FILE}"), "the kill came after the save"
    assert tracker_step_in(fs, url) == 2, outputs[0][-3000:]

    resumed = run_rayrl(tmp_path / "a", *command, env=env)
    outputs.append(resumed.stdout)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert [(e["step"], e["path"]) for e in events_named(tmp_path / "a", "resumed")] == [(2, f"{url}/global_step_2")]
    assert rewards(tmp_path / "a") == rewards(reference)
    assert_same_weights(_weights_in_bucket(s3_server, f"{url}/global_step_6", tmp_path / "w6"),
                        final_weights(reference, 6))
    assert not (run_dir(tmp_path / "a") / "checkpoints").exists()  # nothing local but the logs

    key, secret = s3_server.secrets
    from_bucket = run_rayrl(tmp_path / "fresh", *command, "runner.max_steps=8",
                            f"runner.checkpoint.storage_options.key={key}",
                            f"runner.checkpoint.storage_options.secret={secret}",
                            env={k: v for k, v in env.items() if k not in _CREDENTIAL_VARS})
    outputs.append(from_bucket.stdout)
    assert from_bucket.returncode == 0, from_bucket.stdout[-3000:]
    assert [e["step"] for e in events_named(tmp_path / "fresh", "resumed")] == [6]
    assert [m["step"] for m in read_metrics(tmp_path / "fresh")] == [7, 8]
    state = json.loads(fs.cat(f"{url}/global_step_8/{TRAINER_STATE_FILE}"))
    assert state["config"]["runner"]["checkpoint"]["storage_options"] == {"key": REDACTED, "secret": REDACTED}

    from rayrl.export import export_hf  # python -m rayrl.export takes the step's URL as well

    export_hf(f"{url}/global_step_8", tmp_path / "hf")
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    written += [fs.cat(o) for o in fs.find(url)]
    leaks = [s for blob in written + [o.encode() for o in outputs] for s in s3_server.leaked(blob)]
    assert not leaks, "a credential was written or printed"


def tracker_step_in(fs, url: str) -> int | None:
    try:
        return int(fs.cat(f"{url}/{TRACKER_FILE}").decode().strip())
    except FileNotFoundError:
        return None
