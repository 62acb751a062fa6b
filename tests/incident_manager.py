"""A checkpoint manager (runner.checkpoint.manager_class) for tests/test_recovery_incident.py that brings
on, at known moments and with real process deaths, the failures that recovery itself must survive.

- the save of steps 2 and 4 kills the reference worker once it returns: the next step loses it, and recovery
  replaces the reference group and keeps the actor group (a lost rollout worker would not do: its samples
  are regenerated in the job, with nothing reloaded);
- the first load (that first recovery reloading the kept actor group) kills actor rank 0 first: a second
  failure found while recovering from the first;
- the recovery after step 4's kill fails in ``prepare`` with a RuntimeError: an error inside recovery.
"""

from __future__ import annotations

import ray

from rayrl.checkpoint.manager import DefaultCheckpointManager


class IncidentManager(DefaultCheckpointManager):
    def __init__(self, config, checkpoint_dir: str) -> None:
        super().__init__(config, checkpoint_dir)
        self.loads = 0
        self.killed_at: list[int] = []

    def save(self, step, participants, trainer_state) -> None:
        super().save(step, participants, trainer_state)
        if step in (2, 4) and step not in self.killed_at:
            self.killed_at.append(step)
            rollout = next(p for p in participants if p.name == "rollout")
            ray.kill(rollout.fleet.reference.workers[0], no_restart=True)

    def load(self, step_dir, participants):
        self.loads += 1
        if self.loads == 1:
            actor = next(p for p in participants if p.name == "actor")
            ray.kill(actor.fleet.actor.workers[0], no_restart=True)
        return super().load(step_dir, participants)

    def prepare(self, resume_dir, resume_mode, restarted):
        if 4 in self.killed_at:
            raise RuntimeError("prepare failed while recovering (injected by the test's manager)")
        return super().prepare(resume_dir, resume_mode, restarted)
