"""The run's failure history, restart budget and backoff, and the events that tell about them.

Plain Python (no Ray): the coordinator reports each failure and each finished step; this decides whether
the budget allows another recovery and writes one events.jsonl line per failure and per recovery.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rayrl.runlog import EventLog

MAX_BACKOFF_S = 30.0
STANDBY, NEW_PROCESS = "standby", "new process"  # how a group that lost workers is made whole


def replacement_plan(lost: dict[str, set[int] | None], standbys: dict[str, int]) -> dict[str, str]:
    """How each group that lost workers is made whole: the lost workers' places taken by standbys of the
    role when enough are ready (the group's other workers keep their processes), else the whole group in
    new processes. ``lost``: per group, the indices lost (None: the whole group, or which is not known);
    ``standbys``: the ready standbys per role."""
    return {group: STANDBY if indices is not None and 0 < len(indices) <= standbys.get(group, 0) else NEW_PROCESS
            for group, indices in lost.items()}


def regenerates(lost: dict[str, set[int] | None], dead: set[int], role: str) -> bool:
    """Whether a failure is recovered in the job by regenerating (rayrl.regenerate) rather than by reloading
    the newest checkpoint: it lost workers of ``role`` (rollout) only, each known by index and found dead
    (``dead``: the indices of ``role`` whose process is gone; a hung worker is not, and goes the full way)."""
    indices = lost.get(role)
    return set(lost) == {role} and bool(indices) and indices <= dead


class RunFailed(RuntimeError):
    """Recovery budget exhausted; the message carries the history of what died."""


@dataclass
class _Pending:
    """The failure being recovered from, until the next step finishes."""

    failure_time: float
    fields: dict[str, Any] = field(default_factory=dict)
    replaced: set[str] | None = None  # the groups a counted recovery replaced (None: not such a recovery)
    replaced_by: dict[str, str] = field(default_factory=dict)  # group -> STANDBY | NEW_PROCESS
    in_job: bool = False  # being recovered in the job (rayrl.regenerate): a failure meanwhile is the same incident


def short(node: str | None) -> str:
    return node[:8] if node else "?"


class Recovery:
    """Counts recoveries against ``max_restarts`` (preemptions are free) and measures each one. The backoff
    before a rebuild doubles with each counted failure since training last finished a step: it slows a crash
    loop down, and a recovery that got training going again is not one (``max_restarts`` bounds the rest)."""

    def __init__(self, events: EventLog, max_restarts: int, backoff_s: float) -> None:
        self.events, self.max_restarts, self.backoff_s = events, max_restarts, backoff_s
        self.restarts = 0
        self.streak = 0  # counted failures since the last finished step
        self.history: list[str] = []
        self._pending: _Pending | None = None

    def failed(self, what: str, cause: str, node: str | None, pid: int | None = None, preemption: bool = False,
               counted: bool = True, failure_time: float | None = None, event: str = "failure",
               replaced: list[str] | None = None, replaced_by: dict[str, str] | None = None,
               in_job: bool = False) -> float:
        """Record a failure; returns the backoff to sleep before rebuilding, or raises RunFailed past the
        budget. Preemptions are not counted, nor (``counted=False``) losses that another budget bounds (the
        coordinator's: Ray's max_restarts; the driver's: run_main.sh's). A failure during a recovery keeps
        the first one's time: the clock runs until training does.

        A failure found while recovering (before the next step finished) that takes down a group the
        recovery had kept (a kept group failing on reload because its node was going down after all) is
        the same incident: not counted again (``same_incident``), and ``replaced`` becomes every group the
        incident replaced; so is the first failure that is not recovered in the job while a recovery in the
        job (``in_job``: rollout workers replaced, their samples regenerated, nothing reloaded) is pending:
        the fallback to the full recovery. ``replaced_by``: how each replaced group was made whole (standby
        or new process). One that hits only groups already replaced counts anew, so that a failure that
        keeps coming back cannot recover forever."""
        failure_time = failure_time or time.time()
        if self._pending is None:
            self._pending = _Pending(failure_time)
        counted = counted and not preemption
        earlier = self._pending.replaced
        same_incident = (counted and earlier is not None and replaced is not None
                         and (not set(replaced) <= earlier or (self._pending.in_job and not in_job)))
        self._pending.in_job = in_job
        if same_incident:
            counted = False
            replaced = sorted(earlier | set(replaced))
        if (counted or same_incident) and replaced is not None:
            self._pending.replaced = set(replaced)
        if replaced_by:
            self._pending.replaced_by.update(replaced_by)
        self.restarts += counted
        self.streak += counted
        where = f"node {short(node)}" + (f", pid {pid}" if pid else "")
        self.history.append(f"{time.strftime('%H:%M:%S', time.localtime(failure_time))} {what} ({where}): {cause}")
        fields = {"what": what, "cause": cause, "node": node, "pid": pid, "preemption": preemption}
        if replaced is not None:  # the worker groups restarted (the others were kept)
            fields["replaced"] = replaced
            fields["replaced_by"] = {g: self._pending.replaced_by.get(g, NEW_PROCESS) for g in replaced}
        if same_incident:
            fields["same_incident"] = True
        if in_job:
            fields["in_job"] = True
        self._pending.fields = fields
        if self.restarts > self.max_restarts:
            self.events.emit("failure", f"{what} ({where}) failed: {cause}", **fields, counted=counted,
                             restarts=self.restarts, max_restarts=self.max_restarts)
            message = f"run failed: recovery budget spent (runner.max_restarts={self.max_restarts})"
            self.events.emit("run_failed", message, history=self.history)
            raise RunFailed(f"{message}; what died:\n  " + "\n  ".join(self.history))
        delay = min(MAX_BACKOFF_S, self.backoff_s * 2 ** (self.streak - 1)) if counted else 0.0
        budget = (f"recovery {self.restarts}/{self.max_restarts}" if counted
                  else "found while recovering: the same incident, counted once" if same_incident
                  else "not counted against runner.max_restarts")
        restarting = (f"replacing {', '.join(f'{g} ({by})' for g, by in fields['replaced_by'].items())}, "
                      if replaced else "")
        how = "regenerating its unfinished samples in the job" if in_job else "recovering from the latest checkpoint"
        self.events.emit(event, f"{what} ({where}) failed: {cause}; {how} "
                         f"({restarting}{budget}{f', backoff {delay:.1f} s' if delay else ''})",
                         **fields, counted=counted, restarts=self.restarts, max_restarts=self.max_restarts,
                         backoff_s=delay)
        return delay

    def loaded_from(self, source: str, **seconds: float) -> None:
        """The rebuilt fleet was loaded from ``source`` (memory | storage); ``seconds``: how long each part
        of the recovery took (start_s: resources, processes, group; load_s; sync_s: the weight sync)."""
        if self._pending is not None:
            self._pending.fields.update(source=source, **seconds)

    def regenerated(self, steps: list[int], **seconds: float) -> None:
        """The lost rollout workers were replaced in the job and sent again what they had not finished: the
        samples of ``steps``, with the weights each was pinned to, which the pipeline held in the object
        store (``source`` memory; nothing is read from storage, nothing reloaded). ``seconds``: start_s,
        the replacement."""
        if self._pending is not None:
            self._pending.fields.update(source="memory", regenerated=steps, **seconds)

    def resumed(self, step: int) -> None:
        """The rebuilt fleet holds the state of ``step`` (0: a fresh start, nothing loaded: source None)."""
        if self._pending is not None:
            self._pending.fields["resumed_from"] = step
            self._pending.fields.setdefault("source", None)

    def step_finished(self, step: int) -> None:
        """The first finished step after a failure closes the recovery with its duration."""
        self.streak = 0
        pending, self._pending = self._pending, None
        if pending is None:
            return
        seconds = time.time() - pending.failure_time
        f = pending.fields
        if "regenerated" in f:  # training went on: the step that finished follows the one before the failure
            self.events.emit(
                "recovered", f"recovered in the job from the loss of {f['what']} (node {short(f['node'])}): "
                f"regenerated the samples of steps {f['regenerated']} (nothing reloaded), step {step} finished "
                f"{seconds:.1f} s after the failure", **f, resumed_from=step - 1, step=step,
                seconds_to_next_step=seconds)
            return
        self.events.emit(
            "recovered", f"recovered from the loss of {f['what']} (node {short(f['node'])}): resumed from step "
            f"{f.get('resumed_from', 0)} ({f.get('source') or 'nothing loaded'}), step {step} finished {seconds:.1f} s "
            "after the failure",
            **f, step=step, seconds_to_next_step=seconds)
