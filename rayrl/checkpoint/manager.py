"""The CheckpointManager protocol and the default manager.

The manager is the one place that decides where a run starts (resume, archive, fresh), saves and loads a
step, lists valid steps and waits for saves in flight. It knows nothing of GRPO: what a step holds comes
from *participants*, each writing its own part under a subdirectory (the coordinator provides them).
A save is staged into a hidden temporary sibling; it becomes visible (manifest, rename, tracker) only
when every participant has finished, so a crash at any moment leaves the previous set intact.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

from rayrl.checkpoint.errors import CheckpointError
from rayrl.checkpoint.layout import CheckpointDir
from rayrl.checkpoint.manifest import build_manifest, verify_checkpoint, write_manifest
from rayrl.checkpoint.retention import select_steps_to_delete
from rayrl.checkpoint.safe_io import atomic_write_json

log = logging.getLogger(__name__)

TRAINER_STATE_FILE = "trainer_state.json"
Digests = dict[str, dict]


class Participant(Protocol):
    """One role's share of a checkpoint, written under ``<step dir>/<name>/``."""

    name: str

    def save(self, directory: str, async_save: bool) -> Digests | None:
        """Write (or, async, stage) this part; digests of the files when already complete, else None."""

    def poll_save(self, block: bool) -> Digests | None:
        """Digests once an async write has finished (re-raising its error), else None."""

    def load(self, directory: str) -> None:
        """Restore this part from ``directory``."""


@runtime_checkable
class CheckpointManager(Protocol):
    """What the runtime needs from a checkpoint manager; built as ``Cls(config, checkpoint_dir)``."""

    def prepare(self, resume_dir: str | None, resume_mode: str, restarted: bool) -> str | None:
        """Decide where to start: the step directory to load, or None for a fresh start."""

    def save(self, step: int, participants: Sequence[Participant], trainer_state: dict[str, Any]) -> None:
        """Save step ``step``; may return before the files are written (async)."""

    def poll(self) -> int | None:
        """Commit a finished async save (returns its step), raise its error; never blocks."""

    def wait(self) -> None:
        """Block until no save is in flight (committing it)."""

    def abort(self) -> None:
        """Drop a save in flight whose writers are gone; never touches committed steps."""

    def load(self, step_dir: str, participants: Sequence[Participant]) -> dict[str, Any]:
        """Restore every participant from ``step_dir``; returns the trainer state."""

    def latest(self) -> str | None:
        """The newest valid step directory of this run, or None."""

    def list_steps(self) -> list[int]:
        """Steps with a complete checkpoint on disk."""


@dataclass
class _Pending:
    step: int
    temp_dir: Path
    participants: list[Participant]
    digests: Digests = field(default_factory=dict)
    waiting: list[Participant] = field(default_factory=list)


class DefaultCheckpointManager:
    """Atomic per-step directories, async saves, manifest-verified resume, retention from disk."""

    def __init__(self, config: Any, checkpoint_dir: str) -> None:
        self.config = config
        self.dir = CheckpointDir(checkpoint_dir)
        self._pending: _Pending | None = None

    # -------------------------------------------------------------- where to start
    def prepare(self, resume_dir: str | None, resume_mode: str, restarted: bool) -> str | None:
        for leftover in self.dir.cleanup_temp_dirs():
            log.info("Removed an unfinished save left by a crash: %s", leftover)
        own = self.latest()
        if restarted or (own is not None and resume_mode == "auto" and resume_dir is None):
            # after this run's first checkpoint every recovery resumes from it, never the original resume_dir
            return own if own is not None else _checked(resume_dir, self.config.verify_checksums)
        if resume_mode == "disable" and resume_dir is None:
            archive = self.dir.archive_existing()
            if archive is not None:
                log.info("resume_mode=disable: archived earlier checkpoints into %s", archive)
            return None
        if resume_dir is not None:
            return _checked(resume_dir, self.config.verify_checksums)
        return None

    def latest(self) -> str | None:
        found = self.dir.find_resume_point(check_checksums=self.config.verify_checksums)
        return str(found[1]) if found else None

    def list_steps(self) -> list[int]:
        return [s for s, p in self.dir.list_step_dirs() if (p / "manifest.json").is_file()]

    # -------------------------------------------------------------- save
    def save(self, step: int, participants: Sequence[Participant], trainer_state: dict[str, Any]) -> None:
        self.wait()
        temp = self.dir.new_temp_dir(step)
        pending = _Pending(step, temp, list(participants))
        try:
            for p in participants:
                digests = p.save(str(temp / p.name), self.config.async_save)
                if digests is None:
                    pending.waiting.append(p)
                else:
                    pending.digests.update(_prefixed(p.name, digests))
            atomic_write_json(temp / TRAINER_STATE_FILE, trainer_state)
        except BaseException:
            self._pending = pending
            self.abort()
            raise
        self._pending = pending
        if not pending.waiting:
            self._commit()

    def poll(self) -> int | None:
        return self._advance(block=False)

    def wait(self) -> None:
        self._advance(block=True)

    def _advance(self, block: bool) -> int | None:
        pending = self._pending
        if pending is None:
            return None
        try:
            for p in list(pending.waiting):
                digests = p.poll_save(block)
                if digests is not None:
                    pending.digests.update(_prefixed(p.name, digests))
                    pending.waiting.remove(p)
        except BaseException as err:
            self.abort()
            raise CheckpointError(pending.temp_dir, f"background save of step {pending.step} failed: {err}") from err
        if pending.waiting:
            return None
        return self._commit()

    def _commit(self) -> int:
        pending, self._pending = self._pending, None
        assert pending is not None
        try:
            manifest = build_manifest(pending.temp_dir, known=pending.digests)
            write_manifest(pending.temp_dir, manifest, pending.step)
            final = self.dir.commit(pending.temp_dir, pending.step)
        except BaseException:
            shutil.rmtree(pending.temp_dir, ignore_errors=True)
            raise
        log.info("Saved checkpoint %s (%.1f MB)", final, manifest["total_bytes"] / 1e6)
        self._apply_retention(protected={pending.step})
        return pending.step

    def abort(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            shutil.rmtree(pending.temp_dir, ignore_errors=True)
            log.warning("Dropped the unfinished save of step %d", pending.step)

    def _apply_retention(self, protected: set[int]) -> None:
        cfg = self.config
        if cfg.max_to_keep is None and cfg.keep_top_k is None:
            return
        steps = self.list_steps()
        metrics = {s: _read_metrics(self.dir.step_dir(s)) for s in steps} if cfg.keep_top_k else {}
        doomed = select_steps_to_delete(steps, metrics, cfg.max_to_keep, cfg.keep_top_k, cfg.metric,
                                        cfg.metric_mode, protected)
        for step in doomed:
            self.dir.delete_step(step)
            log.info("Retention: deleted checkpoint global_step_%d", step)

    # -------------------------------------------------------------- load
    def load(self, step_dir: str, participants: Sequence[Participant]) -> dict[str, Any]:
        import json

        with open(os.path.join(step_dir, TRAINER_STATE_FILE)) as f:
            state = json.load(f)
        for p in participants:
            p.load(os.path.join(step_dir, p.name))
        return state


def _checked(step_dir: str | None, check_checksums: bool) -> str | None:
    if step_dir is not None:
        verify_checkpoint(step_dir, check_checksums=check_checksums)
    return step_dir


def _prefixed(name: str, digests: Digests) -> Digests:
    return {f"{name}/{rel}" if name else rel: d for rel, d in digests.items()}


def _read_metrics(step_dir: Path) -> dict[str, Any]:
    import json

    try:
        with open(step_dir / TRAINER_STATE_FILE) as f:
            return json.load(f).get("metrics", {})
    except (OSError, ValueError):
        return {}


def load_manager_class(path: str | None) -> type:
    """The manager class named by ``runner.checkpoint.manager_class`` (default when None), checked
    against the protocol; raises ConfigError naming the class and what is missing."""
    from rayrl.config import ConfigError

    if path is None:
        return DefaultCheckpointManager
    key = "runner.checkpoint.manager_class"
    module_name, _, cls_name = path.rpartition(".")
    if not module_name:
        raise ConfigError(f"{key}: {path!r} is not a dotted path 'pkg.module.Class'")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{key}: cannot import {path!r}: {err}") from None
    if not inspect.isclass(cls):
        raise ConfigError(f"{key}: {path!r} is not a class")
    required = [m for m in _protocol_methods() if not callable(getattr(cls, m, None))]
    if required:
        raise ConfigError(f"{key}: {path} does not implement the CheckpointManager protocol "
                         f"(missing: {', '.join(required)})")
    return cls


def _protocol_methods() -> list[str]:
    return [n for n, v in vars(CheckpointManager).items() if callable(v) and not n.startswith("_")]
