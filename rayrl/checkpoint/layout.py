"""The ``checkpoints/`` directory: step names, atomic commit, tracker, resume discovery, archive, clean-up.

Crash safety comes from the order of operations in ``commit``: a step is written into a hidden temp
sibling, its manifest last, then renamed into place (one atomic rename on one filesystem), and only then
is the tracker rewritten. Every state a crash can leave is one ``find_resume_point`` handles:

- a ``.tmp-*`` dir (with or without a manifest): never a step name, ignored; ``cleanup_temp_dirs`` removes it;
- a new step in place but the tracker still old: the tracker is only a hint, the newer valid step wins;
- a tracker naming a missing or damaged step: logged, the newest valid step wins;
- a ``global_step_N`` without a valid manifest (written by something else, or damaged later):
  moved aside as ``global_step_N.corrupt-<UTC time>`` when an older valid step exists, never deleted,
  never used; with no valid step at all, ``NoValidCheckpoint`` (nothing moved: no silent fresh start).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable

from rayrl.checkpoint.errors import CheckpointError, CheckpointInvalid, NoValidCheckpoint
from rayrl.checkpoint.format import ARCHIVE_PREFIX, MANIFEST_FILE, STEP_PREFIX, TEMP_PREFIX, TRACKER_FILE, step_dir_name
from rayrl.checkpoint.manifest import verify_checkpoint
from rayrl.checkpoint.safe_io import atomic_write_text, fsync_dir, fsync_tree, temp_name

log = logging.getLogger(__name__)

_STEP_RE = re.compile(re.escape(STEP_PREFIX) + r"(0|[1-9][0-9]*)")
_ASIDE_RE = re.compile(re.escape(STEP_PREFIX) + r"[0-9]+\.(corrupt|replaced|superseded)-[0-9]{8}-[0-9]{6}(-[0-9]+)?")
_ARCHIVE_RE = re.compile(re.escape(ARCHIVE_PREFIX) + r"([0-9]+)")


def parse_step(name: str) -> int | None:
    """The step of an exact ``global_step_<N>`` name (no leading zeros, no suffix), else None."""
    m = _STEP_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def _check_step(step: int) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative int, got {step!r}")
    return step


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


class CheckpointDir:
    """One run's ``checkpoints/`` directory. Start-up methods (``find_resume_point``,
    ``cleanup_temp_dirs``, ``archive_existing``) assume no save is in flight."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def step_dir(self, step: int) -> Path:
        return self.root / step_dir_name(_check_step(step))

    def list_step_dirs(self) -> list[tuple[int, Path]]:
        """All ``global_step_N`` directories, oldest first (complete or not: see ``find_resume_point``)."""
        if not self.root.is_dir():
            return []
        found = [(parse_step(p.name), p) for p in self.root.iterdir() if p.is_dir() and not p.is_symlink()]
        return sorted((s, p) for s, p in found if s is not None)

    # -- writing -------------------------------------------------------------------------------------

    def new_temp_dir(self, step: int) -> Path:
        """A fresh hidden sibling to write step ``step`` into (same filesystem as its final place)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / temp_name(step_dir_name(_check_step(step)))
        path.mkdir()
        return path

    def commit(self, temp_dir: str | os.PathLike[str], step: int) -> Path:
        """Make a fully written temp dir (manifest included) the step's directory, then the tracker's.

        An existing directory for the same step (a resumed run saving that step again) is swapped out
        atomically and kept as ``global_step_N.replaced-<time>``: never merged, never a moment without it.
        """
        temp = Path(temp_dir)
        if temp.parent.resolve() != self.root.resolve() or not temp.name.startswith(TEMP_PREFIX):
            raise CheckpointError(temp, f"not a temp dir of {self.root}")
        if not (temp / MANIFEST_FILE).is_file():
            raise CheckpointError(temp, f"no {MANIFEST_FILE}: write the manifest before committing")
        fsync_tree(temp)
        final = self.step_dir(step)
        if not final.exists():
            os.rename(temp, final)
        elif _rename_exchange(temp, final):
            fsync_dir(self.root)
            self.move_aside(temp, step, "replaced")
        else:  # no atomic swap here: the old step is absent for the moment between two renames
            self.move_aside(final, step, "replaced")
            os.rename(temp, final)
        fsync_dir(self.root)
        self.write_tracker(step)
        log.debug("Committed checkpoint %s", final)
        return final

    def move_aside(self, path: Path, step: int, tag: str) -> Path:
        """Rename to ``global_step_N.<tag>-<UTC time>[-i]``, a name no discovery ever picks."""
        base = f"{step_dir_name(step)}.{tag}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        target, i = self.root / base, 0
        while target.exists():
            i += 1
            target = self.root / f"{base}-{i}"
        os.rename(path, target)
        fsync_dir(self.root)
        return target

    # -- tracker -------------------------------------------------------------------------------------

    def read_tracker(self) -> int | None:
        """The step the tracker names; None (with a warning) if it is missing or holds garbage."""
        path = self.root / TRACKER_FILE
        try:
            text = path.read_text(encoding="utf-8").strip()
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
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.root / TRACKER_FILE, f"{_check_step(step)}\n")

    # -- start-up ------------------------------------------------------------------------------------

    def find_resume_point(self, check_checksums: bool = True,
                          checked_on_load: Callable[[str], bool] | None = None) -> tuple[int, Path] | None:
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
        steps = self.list_step_dirs()
        invalid: list[tuple[int, Path, str]] = []
        chosen: tuple[int, Path] | None = None
        for step, path in reversed(steps):
            try:  # a step that newer invalid ones would be moved aside for is verified in full first
                verify_checkpoint(path, check_checksums=check_checksums, expected_step=step,
                                  checked_on_load=None if invalid else checked_on_load)
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
            log.warning("Checkpoint %s is invalid (%s); moved aside to %s", path, reason, aside.name)
        if tracker != chosen[0]:
            log.warning(
                "Checkpoint tracker names step %s but the newest valid checkpoint is step %d; tracker rewritten",
                tracker,
                chosen[0],
            )
            self.write_tracker(chosen[0])
        return chosen

    def cleanup_temp_dirs(self) -> list[Path]:
        """Remove ``.tmp-*`` leftovers of interrupted saves, deletes and writes in the root."""
        if not self.root.is_dir():
            return []
        removed = []
        for path in sorted(self.root.iterdir()):
            if not path.name.startswith(TEMP_PREFIX):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            log.info("Removed leftover %s of an interrupted checkpoint operation", path)
            removed.append(path)
        return removed

    def archive_existing(self) -> Path | None:
        """Move every step, set-aside step and the tracker into the next ``run_<k>/``; None if nothing.

        A crash part-way leaves the rest in place; the next call archives it into ``run_<k+1>/``:
        nothing is lost or merged.
        """
        if not self.root.is_dir():
            return None
        entries = [
            p
            for p in sorted(self.root.iterdir())
            if parse_step(p.name) is not None or _ASIDE_RE.fullmatch(p.name) or p.name == TRACKER_FILE
        ]
        if not entries:
            return None
        entries.sort(key=lambda p: p.name != TRACKER_FILE)  # tracker first: never names an archived step
        indices = [int(m.group(1)) for p in self.root.iterdir() if (m := _ARCHIVE_RE.fullmatch(p.name))]
        target = self.root / f"{ARCHIVE_PREFIX}{max(indices, default=-1) + 1}"
        target.mkdir()
        for path in entries:
            os.rename(path, target / path.name)
        fsync_dir(target)
        fsync_dir(self.root)
        log.info("Archived %d checkpoint entries of an earlier run into %s", len(entries), target)
        return target

    def delete_step(self, step: int) -> bool:
        """Delete a step (retention). Renamed to a ``.tmp-`` name first so a crash mid-delete leaves
        nothing that looks like a step. False if it does not exist (a retried call)."""
        path = self.step_dir(step)
        if not path.is_dir():
            return False
        if self.read_tracker() == step:
            raise CheckpointError(path, "the tracker names this step; refusing to delete the latest checkpoint")
        doomed = self.root / temp_name(f"delete-{path.name}")
        os.rename(path, doomed)
        fsync_dir(self.root)
        shutil.rmtree(doomed)
        log.info("Deleted checkpoint %s", path)
        return True
