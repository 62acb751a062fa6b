"""The ``checkpoints/`` directory: step names, commit, tracker, resume discovery, archive, clean-up.

The directory may be local or an fsspec URL (``rayrl.checkpoint.storage`` holds the difference, the commit
rule). Crash safety comes from the order of operations: a step's files are written, its manifest last, then
it is published (locally: written in a hidden temp sibling and renamed into place; on an object store the
manifest itself is the commit), and only then is the tracker rewritten. Every state a crash can leave is
one ``find_resume_point`` handles:

- a ``.tmp-*`` dir (with or without a manifest): never a step name, ignored; ``cleanup_temp_dirs`` removes it;
- on an object store, a ``global_step_N/`` prefix without a manifest (a save cut short): never a step,
  ignored; removed by ``cleanup_temp_dirs`` once a newer valid step exists, or when step N is saved again;
- a new step in place but the tracker still old: the tracker is only a hint, the newer valid step wins;
- a tracker naming a missing or damaged step: logged, the newest valid step wins;
- a ``global_step_N`` without a valid manifest (written by something else, or damaged later):
  moved aside as ``global_step_N.corrupt-<UTC time>`` when an older valid step exists, never deleted,
  never used; with no valid step at all, ``NoValidCheckpoint`` (nothing moved: no silent fresh start).
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Callable

from rayrl.checkpoint.errors import CheckpointError, CheckpointInvalid, NoValidCheckpoint
from rayrl.checkpoint.format import ARCHIVE_PREFIX, MANIFEST_FILE, STEP_PREFIX, TRACKER_FILE, step_dir_name
from rayrl.checkpoint.manifest import verify_checkpoint
from rayrl.checkpoint.storage import Storage, storage_for

log = logging.getLogger(__name__)

_STEP_RE = re.compile(re.escape(STEP_PREFIX) + r"(0|[1-9][0-9]*)")
_ASIDE_RE = re.compile(re.escape(STEP_PREFIX) + r"[0-9]+\.(corrupt|replaced|superseded)-[0-9]{8}-[0-9]{6}(-[0-9]+)?")
_ARCHIVE_RE = re.compile(re.escape(ARCHIVE_PREFIX) + r"([0-9]+)")

StepPath = Path | str  # a local Path, or a URL string on an fsspec filesystem


def parse_step(name: str) -> int | None:
    """The step of an exact ``global_step_<N>`` name (no leading zeros, no suffix), else None."""
    m = _STEP_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def _check_step(step: int) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative int, got {step!r}")
    return step


class CheckpointDir:
    """One run's ``checkpoints/`` directory, local or an fsspec URL. Start-up methods (``find_resume_point``,
    ``cleanup_temp_dirs``, ``archive_existing``) assume no save is in flight."""

    def __init__(self, root: str | os.PathLike[str], storage: Storage | None = None) -> None:
        self.storage = storage if storage is not None else storage_for(root)
        self.root: StepPath = self.storage.join(root)

    def _path(self, *names: str) -> StepPath:
        return self.storage.join(self.root, *names)

    def step_dir(self, step: int) -> StepPath:
        return self._path(step_dir_name(_check_step(step)))

    def list_step_dirs(self) -> list[tuple[int, StepPath]]:
        """All ``global_step_N`` directories, oldest first (complete or not: see ``find_resume_point``)."""
        found = [(parse_step(name), self._path(name)) for name in self.storage.listdir(self.root)]
        return sorted((s, p) for s, p in found if s is not None and self.storage.isdir(p))

    def has_manifest(self, step_dir: StepPath) -> bool:
        return self.storage.isfile(self.storage.join(step_dir, MANIFEST_FILE))

    # -- writing -------------------------------------------------------------------------------------

    def new_temp_dir(self, step: int) -> StepPath:
        """Where to write step ``step``: a fresh hidden sibling locally, the step's own place on an object store."""
        return self.storage.stage(self.step_dir(step), lambda path: self.move_aside(path, step, "replaced"))

    def commit(self, temp_dir: StepPath, step: int) -> StepPath:
        """Publish a fully written step (manifest included), then point the tracker at it.

        An existing directory for the same step (a resumed run saving that step again) is kept as
        ``global_step_N.replaced-<time>``: never merged (locally swapped out atomically where Linux can).
        """
        final = self.step_dir(step)
        self.storage.check_staging(temp_dir, final)
        if not self.storage.isfile(self.storage.join(temp_dir, MANIFEST_FILE)):
            raise CheckpointError(temp_dir, f"no {MANIFEST_FILE}: write the manifest before committing")
        self.storage.publish(temp_dir, final, lambda path: self.move_aside(path, step, "replaced"))
        self.write_tracker(step)
        log.debug("Committed checkpoint %s", final)
        return final

    def move_aside(self, path: StepPath, step: int, tag: str) -> StepPath:
        """Move to ``global_step_N.<tag>-<UTC time>[-i]``, a name no discovery ever picks."""
        base = f"{step_dir_name(step)}.{tag}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        target, i = self._path(base), 0
        while self.storage.exists(target):
            i += 1
            target = self._path(f"{base}-{i}")
        self.storage.move(path, target)
        return target

    # -- tracker -------------------------------------------------------------------------------------

    def read_tracker(self) -> int | None:
        """The step the tracker names; None (with a warning) if it is missing or holds garbage."""
        path = self._path(TRACKER_FILE)
        try:
            text = self.storage.read_bytes(path).decode("utf-8").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            log.warning("Ignoring unreadable checkpoint tracker %s: %s", path, e)
            return None
        if not text.isdigit() or not text.isascii():
            log.warning("Ignoring checkpoint tracker %s with unexpected content %r", path, text[:80])
            return None
        return int(text)

    def write_tracker(self, step: int) -> None:
        self.storage.makedirs(self.root)
        self.storage.write_bytes(self._path(TRACKER_FILE), f"{_check_step(step)}\n".encode())

    def remove_tracker(self) -> None:
        if self.storage.isfile(self._path(TRACKER_FILE)):
            self.storage.remove(self._path(TRACKER_FILE))

    # -- start-up ------------------------------------------------------------------------------------

    def committed_step_dirs(self) -> list[tuple[int, StepPath]]:
        """The steps discovery considers, oldest first: every step directory locally (where only a rename
        makes one), only those with a manifest on an object store (without one, a save cut short)."""
        steps = self.list_step_dirs()
        if self.storage.commits_by_rename:
            return steps
        return [(s, p) for s, p in steps if self.has_manifest(p)]

    def find_resume_point(self, check_checksums: bool = True,
                          checked_on_load: Callable[[str], bool] | None = None) -> tuple[int, StepPath] | None:
        """The newest step whose manifest verifies; None when there is no step and no tracker.

        Newer steps that are incomplete or fail a checksum are moved aside, but only once an older valid
        step is found to resume from. When steps exist (or the tracker names one) and none verifies, this
        raises ``NoValidCheckpoint`` naming each step and why, with nothing moved. An ``OSError`` while
        reading (EIO, ESTALE, EACCES, a network filesystem's timeout) propagates: it is not damage.
        Older steps are not verified (cheap). The tracker is only a hint: it is rewritten to the step
        chosen when it disagrees. Files ``checked_on_load`` names get their size checked, not their
        checksum: their loader checks that as it reads them (except in a step chosen over invalid newer
        ones: that one is checked in full before they are moved aside).
        """
        tracker = self.read_tracker()
        steps = self.committed_step_dirs()
        invalid: list[tuple[int, StepPath, str]] = []
        chosen: tuple[int, StepPath] | None = None
        for step, path in reversed(steps):
            try:  # a step that newer invalid ones would be moved aside for is verified in full first
                verify_checkpoint(path, check_checksums=check_checksums, expected_step=step,
                                  checked_on_load=None if invalid else checked_on_load, storage=self.storage)
            except CheckpointInvalid as e:
                invalid.append((step, path, e.reason))
                continue
            chosen = (step, path)
            break
        if chosen is None:
            if steps or tracker is not None:
                raise NoValidCheckpoint(self.root, {step: reason for step, _, reason in invalid})
            return None
        for step, path, reason in invalid:
            aside = self.move_aside(path, step, "corrupt")
            log.warning("Checkpoint %s is invalid (%s); moved aside to %s", path, reason, self.storage.name(aside))
        if tracker != chosen[0]:
            log.warning(
                "Checkpoint tracker names step %s but the newest valid checkpoint is step %d; tracker rewritten",
                tracker,
                chosen[0],
            )
            self.write_tracker(chosen[0])
        return chosen

    def cleanup_temp_dirs(self) -> list[StepPath]:
        """Remove leftovers of interrupted saves, deletes and writes: ``.tmp-*`` entries locally; on an
        object store the steps without a manifest older than the newest one with a manifest (a newer one
        is left alone until that step is saved again)."""
        removed = list(self.storage.leftovers(self.root))
        if not self.storage.commits_by_rename:
            committed = [s for s, _ in self.committed_step_dirs()]
            removed += [p for s, p in self.list_step_dirs() if committed and s < committed[-1]
                        and s not in committed]
        for path in removed:
            self.storage.remove(path)
            log.info("Removed leftover %s of an interrupted checkpoint operation", path)
        return removed

    def archive_existing(self) -> StepPath | None:
        """Move every step, set-aside step and the tracker into the next ``run_<k>/``; None if nothing.

        A crash part-way leaves the rest in place; the next call archives it into ``run_<k+1>/``:
        nothing is lost or merged.
        """
        names = self.storage.listdir(self.root)
        entries = [n for n in names if parse_step(n) is not None or _ASIDE_RE.fullmatch(n) or n == TRACKER_FILE]
        if not entries:
            return None
        entries.sort(key=lambda n: n != TRACKER_FILE)  # tracker first: never names an archived step
        indices = [int(m.group(1)) for n in names if (m := _ARCHIVE_RE.fullmatch(n))]
        target = self._path(f"{ARCHIVE_PREFIX}{max(indices, default=-1) + 1}")
        self.storage.makedirs(target)
        for name in entries:
            self.storage.move(self._path(name), self.storage.join(target, name))
        log.info("Archived %d checkpoint entries of an earlier run into %s", len(entries), target)
        return target

    def delete_step(self, step: int) -> bool:
        """Delete a step (retention) so that a crash part-way leaves nothing that looks like a step
        (locally renamed to a ``.tmp-`` name first; on an object store its manifest goes first).
        False if it does not exist (a retried call)."""
        path = self.step_dir(step)
        if not self.storage.isdir(path):
            return False
        if self.read_tracker() == step:
            raise CheckpointError(path, "the tracker names this step; refusing to delete the latest checkpoint")
        self.storage.remove(path)
        log.info("Deleted checkpoint %s", path)
        return True
