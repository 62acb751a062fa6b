"""The CheckpointManager protocol and the default manager.

The manager is the one place that decides where a run starts (resume, archive, fresh), saves and loads a
step, lists valid steps and waits for saves in flight. It knows nothing of GRPO: what a step holds comes
from *participants*, each writing its own part under a subdirectory (the coordinator provides them).
A save is staged into a hidden temporary sibling; it becomes visible (manifest, rename, tracker) only
when every participant has finished, so a crash at any moment leaves the previous set intact.

Asynchronous saves: at most one is in flight; the coordinator polls at every step boundary (where a background
failure surfaces as a ``CheckpointError`` naming the step) and waits before the next save and at the end.
docs/checkpoint_manager.md describes the protocol, the participants and how to write a manager of one's own.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from rayrl.checkpoint.errors import CheckpointError, CheckpointInvalid, NoValidCheckpoint, WorkerLost
from rayrl.checkpoint.format import M_STEP, M_TOTAL_BYTES, TRAINER_STATE_FILE
from rayrl.checkpoint.layout import CheckpointDir, StepPath, parse_step
from rayrl.checkpoint.manifest import build_manifest, is_dcp_data, verify_checkpoint, write_manifest
from rayrl.checkpoint.retention import select_steps_to_delete
from rayrl.checkpoint.storage import Storage, storage_for

log = logging.getLogger(__name__)

Digests = dict[str, dict]


class Participant(Protocol):
    """One role's share of a checkpoint, written under ``<step dir>/<name>/``.

    Digests map each file's path relative to ``directory`` to ``{"size": int, "crc32": "8 hex digits"}``
    (``rayrl.checkpoint.manifest.file_digest``); the manager digests any file a participant did not report.
    """

    name: str

    def save(self, directory: str, async_save: bool) -> Digests | None:
        """Write (or, async, stage) this part; digests of the files when already complete, else None
        (then ``poll_save`` is called until it returns them). Returns only once the state is captured:
        training may change it right after."""

    def poll_save(self, block: bool) -> Digests | None:
        """Digests once an async write has finished (re-raising its error), else None; ``block`` waits."""

    def load(self, directory: str) -> None:
        """Restore this part from ``directory``."""


@runtime_checkable
class CheckpointManager(Protocol):
    """What the runtime needs from a checkpoint manager; built as ``Cls(config, checkpoint_dir)`` in the
    coordinator (``rayrl.managers``). ``config`` is ``runner.checkpoint``: an instance of the class's optional
    ``config_class`` attribute (a dataclass subclassing ``rayrl.config.CheckpointConfig`` that adds the
    manager's keys), else of ``CheckpointConfig``. Errors that mean workers are gone (``WorkerLost``, e.g. the
    runtime's ``rayrl.failures.InfraFailure``) must propagate unchanged from every method, so that the
    runtime recovers."""

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
    temp_dir: StepPath
    participants: list[Participant]
    digests: Digests = field(default_factory=dict)
    waiting: list[Participant] = field(default_factory=list)


class DefaultCheckpointManager:
    """Atomic per-step directories, async saves, manifest-verified resume, retention from disk.
    Subclasses can act on each committed step through ``on_committed``."""

    def __init__(self, config: Any, checkpoint_dir: str) -> None:
        self.config = config
        self.storage = storage_for(checkpoint_dir, getattr(config, "storage_options", None))
        self.dir = CheckpointDir(checkpoint_dir, self.storage)
        self._pending: _Pending | None = None

    # -------------------------------------------------------------- where to start
    def prepare(self, resume_dir: str | None, resume_mode: str, restarted: bool) -> str | None:
        for leftover in self.dir.cleanup_temp_dirs():
            log.info("Removed an unfinished save left by a crash: %s", leftover)
        own = self.latest()
        if restarted or (own is not None and resume_mode == "auto" and
                         (resume_dir is None or self._started_from(own, resume_dir))):
            # after this run's first checkpoint every recovery resumes from it, never the original resume_dir:
            # a relaunch with the same command (run_main.sh) finds its own steps descend from that resume_dir
            return own if own is not None else self._checked(resume_dir)
        if resume_mode == "disable" and resume_dir is None:
            archive = self.dir.archive_existing()
            if archive is not None:
                log.info("resume_mode=disable: archived earlier checkpoints into %s", archive)
            return None
        if resume_dir is not None:
            step = verify_checkpoint(resume_dir, check_checksums=self.config.verify_checksums,
                                     checked_on_load=is_dcp_data, storage=self._storage_of(resume_dir))[M_STEP]
            self._supersede_after(step, resume_dir)
            return resume_dir
        return None

    def _supersede_after(self, step: int, resume_dir: str) -> None:
        """Move this run's steps after ``step`` aside (never delete): starting again from ``resume_dir``
        abandons them, and a later auto-resume must not jump back onto that abandoned timeline."""
        moved = False
        for later, path in self.dir.list_step_dirs():
            if later > step and not self.storage.same(path, resume_dir):
                aside = self.dir.move_aside(path, later, "superseded")
                log.warning("Resuming from %s (step %d): moved this run's later %s aside to %s",
                            resume_dir, step, self.storage.name(path), self.storage.name(aside))
                moved = True
        if moved:
            remaining = self.dir.list_step_dirs()
            if remaining:
                self.dir.write_tracker(remaining[-1][0])
            else:
                self.dir.remove_tracker()

    def latest(self) -> str | None:
        found = self.dir.find_resume_point(check_checksums=self.config.verify_checksums, checked_on_load=is_dcp_data)
        return str(found[1]) if found else None

    def list_steps(self) -> list[int]:
        return [s for s, p in self.dir.list_step_dirs() if self.dir.has_manifest(p)]

    # -------------------------------------------------------------- save
    def save(self, step: int, participants: Sequence[Participant], trainer_state: dict[str, Any]) -> None:
        self.wait()
        temp = self.dir.new_temp_dir(step)
        pending = _Pending(step, temp, list(participants))
        try:
            for p in participants:
                digests = p.save(str(self.storage.join(temp, p.name)), self.config.async_save)
                if digests is None:
                    pending.waiting.append(p)
                else:
                    pending.digests.update(_prefixed(p.name, digests))
            self.storage.write_bytes(self.storage.join(temp, TRAINER_STATE_FILE),
                                     (json.dumps(trainer_state, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        except BaseException:
            self._pending = pending
            self.abort()
            raise
        self._pending = pending
        self._advance(block=not self.config.async_save)  # commits now unless something is still writing

    def poll(self) -> int | None:
        return self._advance(block=False)

    def wait(self) -> None:
        self._advance(block=True)

    def _advance(self, block: bool) -> int | None:
        """Collect finished parts; commit once all are done. A failure drops the step (the previous
        steps stay as they are) and is raised as a CheckpointError, except a lost worker (``WorkerLost``:
        the runtime recovers from it; it is not a failed save)."""
        pending = self._pending
        if pending is None:
            return None
        try:
            for p in list(pending.waiting):
                digests = p.poll_save(block)
                if digests is not None:
                    pending.digests.update(_prefixed(p.name, digests))
                    pending.waiting.remove(p)
            if pending.waiting:
                return None
        except BaseException as err:
            self.abort()
            if not isinstance(err, Exception) or isinstance(err, WorkerLost):
                raise
            raise CheckpointError(pending.temp_dir, f"background save of step {pending.step} failed: "
                                  f"{type(err).__name__}: {err}") from err
        return self._commit()

    def _commit(self) -> int:
        pending, self._pending = self._pending, None
        assert pending is not None
        try:
            manifest = build_manifest(pending.temp_dir, known=pending.digests, storage=self.storage)
            write_manifest(pending.temp_dir, manifest, pending.step, storage=self.storage)
            final = self.dir.commit(pending.temp_dir, pending.step)
        except BaseException:
            self.storage.discard(pending.temp_dir)
            raise
        log.info("Saved checkpoint %s (%.1f MB)", final, manifest[M_TOTAL_BYTES] / 1e6)
        self._apply_retention(protected={pending.step})
        self.on_committed(pending.step, final)
        return pending.step

    def on_committed(self, step: int, step_dir: StepPath) -> None:
        """Hook for subclasses: step ``step`` is complete in ``step_dir`` and retention has run. Called in
        the coordinator at a step boundary (or at the end of the run): it blocks training while it runs,
        and an exception stops the run."""

    def abort(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self.storage.discard(pending.temp_dir)
            log.warning("Dropped the unfinished save of step %d", pending.step)

    def _apply_retention(self, protected: set[int]) -> None:
        cfg = self.config
        if cfg.max_to_keep is None and cfg.keep_top_k is None:
            return
        steps = self.list_steps()
        metrics = {s: self._read_metrics(self.dir.step_dir(s)) for s in steps} if cfg.keep_top_k else {}
        newest = max(protected)
        if cfg.keep_top_k and cfg.metric not in metrics.get(newest, {}):
            log.warning("Retention: step %d has no metric %r (it has: %s); keep_top_k ranks it last",
                        newest, cfg.metric, ", ".join(sorted(metrics.get(newest, {}))) or "none")
        doomed = select_steps_to_delete(steps, metrics, cfg.max_to_keep, cfg.keep_top_k, cfg.metric,
                                        cfg.metric_mode, protected)
        for step in doomed:
            self.dir.delete_step(step)
            log.info("Retention: deleted checkpoint global_step_%d", step)

    # -------------------------------------------------------------- load
    def load(self, step_dir: str, participants: Sequence[Participant]) -> dict[str, Any]:
        storage = self._storage_of(step_dir)
        state = json.loads(storage.read_bytes(storage.join(step_dir, TRAINER_STATE_FILE)))
        try:
            for p in participants:
                p.load(str(storage.join(step_dir, p.name)))
        except Exception as err:
            invalid = _invalid_cause(err)
            if invalid is None:
                raise
            self._set_aside(step_dir, invalid)
            raise invalid from err
        return state

    def _storage_of(self, path: str) -> Storage:
        """The storage of a step directory: a ``resume_dir`` may live on another filesystem than this run's."""
        return storage_for(path, getattr(self.config, "storage_options", None))

    def _checked(self, step_dir: str | None) -> str | None:
        if step_dir is not None:
            verify_checkpoint(step_dir, check_checksums=self.config.verify_checksums, checked_on_load=is_dcp_data,
                              storage=self._storage_of(step_dir))
        return step_dir

    def _started_from(self, step_dir: str, resume_dir: str) -> bool:
        """Whether the run that wrote ``step_dir`` was started with this ``runner.resume_dir``."""
        try:
            recorded = json.loads(self.storage.read_bytes(self.storage.join(step_dir, TRAINER_STATE_FILE))
                                  ).get("config", {}).get("runner", {}).get("resume_dir")
        except (OSError, ValueError, AttributeError):
            return False
        return isinstance(recorded, str) and self._storage_of(resume_dir).same(recorded, resume_dir)

    def _read_metrics(self, step_dir: StepPath) -> dict[str, Any]:
        try:
            return json.loads(self.storage.read_bytes(self.storage.join(step_dir, TRAINER_STATE_FILE))).get("metrics", {})
        except (OSError, ValueError):
            return {}

    def _set_aside(self, step_dir: str, err: CheckpointInvalid) -> None:
        """A step of this run found damaged while loading (its DCP files are checked as they are read)
        is moved aside like one found damaged at discovery, so that the next ``prepare`` passes over it;
        only when an older step verifies, else NoValidCheckpoint naming each step (nothing moved)."""
        path = self.storage.join(step_dir)
        step = parse_step(self.storage.name(path))
        if step is None or not self.storage.same(self.storage.parent(path), self.dir.root):
            return
        reasons = {step: err.reason}
        for older, older_path in reversed([(s, p) for s, p in self.dir.list_step_dirs() if s < step]):
            try:  # in full: only a step known good is worth moving this one aside for
                verify_checkpoint(older_path, check_checksums=self.config.verify_checksums, expected_step=older,
                                  storage=self.storage)
                break
            except CheckpointInvalid as e:
                reasons[older] = e.reason
        else:  # no valid step to fall back to: nothing moved, no silent fresh start
            raise NoValidCheckpoint(self.dir.root, reasons) from err
        aside = self.dir.move_aside(path, step, "corrupt")
        log.warning("Checkpoint %s is invalid (%s); moved aside to %s", path, err.reason, aside.name)


def _invalid_cause(err: BaseException | None) -> CheckpointInvalid | None:
    """The CheckpointInvalid behind an error from a worker (wrapped by Ray and by the fleet), if any."""
    for _ in range(8):
        if err is None or isinstance(err, CheckpointInvalid):
            return err
        cause = getattr(err, "cause", None)
        err = cause if isinstance(cause, BaseException) else err.__cause__
    return None


def _prefixed(name: str, digests: Digests) -> Digests:
    return {f"{name}/{rel}" if name else rel: d for rel, d in digests.items()}


