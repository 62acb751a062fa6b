"""A custom checkpoint manager: rayrl's default one, plus a copy of every committed step in a second directory.

    bash run_main.sh runner.checkpoint.manager_class=examples.mirror_manager.MirrorManager \
        runner.checkpoint.mirror_dir=/mnt/backup/grpo-tiny

It shows what a manager of one's own usually needs (docs/checkpoint_manager.md has the whole protocol):

- keys of its own: ``config_class`` names a subclass of ``rayrl.config.CheckpointConfig``; with this manager
  named, ``runner.checkpoint.mirror_dir`` is accepted in YAML files and on the command line and type-checked
  against that class when the manager is chosen (``rayrl.managers``);
- acting on complete steps: ``on_committed`` runs once a step is committed (manifest written, renamed into
  place, tracker moved) and retention has run, so it never copies a half-written step;
- crash safety of its own: the copy goes into a hidden temp dir, is checked against the step's manifest and
  only then renamed into place, so the mirror is itself a valid checkpoints directory (``runner.resume_dir``
  can point into it) holding exactly the primary's steps.

The copy runs in the coordinator at a step boundary and blocks training while it runs: fine for a local
disk; a slow remote store would copy in a thread of its own and finish it in ``wait()``.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rayrl.checkpoint.layout import CheckpointDir
from rayrl.checkpoint.manager import DefaultCheckpointManager
from rayrl.checkpoint.manifest import verify_checkpoint
from rayrl.config import CheckpointConfig

log = logging.getLogger(__name__)


@dataclass
class MirrorConfig(CheckpointConfig):
    """``runner.checkpoint`` with the mirror's own key."""

    mirror_dir: Optional[str] = None  # where the copies go; null = "<checkpoints dir>_mirror" next to it


class MirrorManager(DefaultCheckpointManager):
    """Saves, resumes and rotates like the default manager; mirrors each committed step."""

    config_class = MirrorConfig

    def __init__(self, config: MirrorConfig, checkpoint_dir: str) -> None:
        super().__init__(config, checkpoint_dir)
        self.mirror = CheckpointDir(config.mirror_dir or f"{checkpoint_dir.rstrip('/')}_mirror")

    def prepare(self, resume_dir: str | None, resume_mode: str, restarted: bool) -> str | None:
        self.mirror.cleanup_temp_dirs()  # copies a crash interrupted
        return super().prepare(resume_dir, resume_mode, restarted)

    def on_committed(self, step: int, step_dir: Path) -> None:
        temp = self.mirror.new_temp_dir(step)
        shutil.copytree(step_dir, temp, dirs_exist_ok=True)
        verify_checkpoint(temp, check_checksums=True, expected_step=step)  # the copy is what was saved
        self.mirror.commit(temp, step)
        kept = set(self.list_steps())
        for old, _ in self.mirror.list_step_dirs():
            if old not in kept:  # rotated out of the primary (retention): rotate it out here too
                self.mirror.delete_step(old)
        log.info("Mirrored checkpoint global_step_%d to %s", step, self.mirror.root)
