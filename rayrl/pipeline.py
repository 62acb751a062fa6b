"""The rollouts of the coming steps (rollout.async_steps = k): generation for steps N+1..N+k runs on the
rollout workers while step N trains.

Ordering does the synchronisation. A rollout worker runs the calls of one caller in the order they were
made, so a generation launched after the weights of version v were sent (and before the next ones) samples
with version v: step s is launched at the start of step s - k, when the engines hold version s - 1 - k
(the initial policy, version 0, for the first k + 1 steps), and the weights of step N are sent after step
N trained, without waiting for the generation in flight ahead of them. With k = 0 this is the synchronous
loop: launch, wait, train, sync.

What a checkpoint holds: the generations in flight are finished first (``settle``: they began at least a
step earlier), and their rollouts are saved with the prompts and the weight version that made them, next to
the data stream that already handed those prompts out, so that loader position and buffer agree and no
prompt is used twice or skipped. Nothing unfinished is saved: regenerating it would need the older weights
it was sampled with, which the checkpoint (of the newest weights) does not hold. After a resume the rollout
workers' sampling state (saved after those generations) continues where they stopped, so what is generated
next is what an uninterrupted run generates.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import ray

from rayrl.engines import Rollouts
from rayrl.workers.fleet import Fleet


def split_evenly(items: list, parts: int) -> list[list]:
    """Contiguous, near-equal chunks (the first ones one longer), so worker i always gets the same rows."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


@dataclass
class Ahead:
    """The rollouts of one step: in flight (``refs``) until finished (``rollouts``)."""

    step: int
    items: list[dict]  # the step's prompt items, as the data stream handed them out
    epoch: int
    indices: list[int]  # their positions in the dataset (the sample ledger)
    version: int  # the policy version (steps trained) that generates them
    refs: list[ray.ObjectRef] = field(default_factory=list)  # one generate call per rollout worker
    loads: list[ray.ObjectRef] = field(default_factory=list)  # weight loads queued on the workers before them
    rollouts: Rollouts | None = None
    wait_weights_s: float = 0.0  # how long the workers sat idle waiting for the weights they generate with

    def state(self) -> dict[str, Any]:
        """As a checkpoint holds it (finished only): plain containers and tensors, for weights_only loading."""
        return {"step": self.step, "items": self.items, "epoch": self.epoch, "indices": self.indices,
                "version": self.version,
                "wait_weights_s": self.wait_weights_s,
                "rollouts": {f.name: getattr(self.rollouts, f.name) for f in fields(Rollouts)}}

    @staticmethod
    def from_state(state: dict[str, Any]) -> Ahead:
        return Ahead(state["step"], state["items"], state["epoch"], state["indices"], state["version"],
                     rollouts=Rollouts(**state["rollouts"]), wait_weights_s=state["wait_weights_s"])


class RolloutPipeline:
    """Hands each step its rollouts, keeping generation up to ``k`` steps ahead of training."""

    def __init__(self, fleet: Fleet, cfg: Any, stream: Any) -> None:
        """``stream``: the data stream (rayrl.data.loader) the prompts come from."""
        self.fleet, self.stream = fleet, stream
        self.k, self.n = cfg.rollout.async_steps, cfg.rollout.n_samples_per_prompt
        self.max_steps = cfg.runner.max_steps
        self.version = 0  # the policy version the engines were last sent (weights_sent)
        self.ahead: dict[int, Ahead] = {}
        self.loads: list[ray.ObjectRef] = []  # weight loads sent since the last launch

    def take(self, step: int) -> Ahead:
        """The finished rollouts of ``step`` (waiting for them), after launching the generation of every
        step up to ``step + k`` not launched yet (and not past runner.max_steps)."""
        for s in range(step, min(step + self.k, self.max_steps) + 1):
            if s not in self.ahead:
                self._launch(s)
        ahead = self.ahead.pop(step)
        self._finish(ahead)
        return ahead

    @property
    def consumed_samples(self) -> int:
        """Prompts whose rollouts training has taken (the stream has handed out those ahead as well)."""
        return self.stream.consumed_samples - sum(len(a.items) for a in self.ahead.values())

    @property
    def busy(self) -> frozenset[str]:
        """The roles with generations in flight between steps (their workers answer nothing else until done)."""
        return frozenset({self.fleet.rollout.name}) if self.k > 0 else frozenset()

    def weights_sent(self, version: int, loads: list[ray.ObjectRef]) -> None:
        """The engines were sent the weights of ``version`` (``loads``: their load calls, maybe still queued
        behind a generation): the next launch samples with it."""
        self.version = version
        self.loads.extend(loads)

    def settle(self) -> None:
        """Finish every generation in flight (before a checkpoint: what it saves is finished)."""
        for step in sorted(self.ahead):
            self._finish(self.ahead[step])

    def _launch(self, step: int) -> None:
        items, epoch, indices = self.stream.next()
        rollout = self.fleet.rollout
        chunks = split_evenly(list(range(len(items))), rollout.size)
        refs = rollout.call_each("generate", [([items[i] for i in c], self.n, step, c[0] * self.n) for c in chunks])
        self.ahead[step] = Ahead(step, items, epoch, indices, self.version, refs, self.loads)
        self.loads = []

    def _finish(self, ahead: Ahead) -> None:
        if ahead.rollouts is not None:
            return
        name = self.fleet.rollout.name
        ahead.rollouts = Rollouts.concat(self.fleet.wait_all(ahead.refs, name))
        waited = self.fleet.wait_all(ahead.loads, name) if ahead.loads else []
        ahead.wait_weights_s = max((w for w in waited if w is not None), default=0.0)
        ahead.refs, ahead.loads = [], []

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The data stream's position and the finished rollouts it handed out prompts for (call ``settle``
        first: a generation in flight cannot be saved)."""
        unfinished = sorted(s for s, a in self.ahead.items() if a.rollouts is None)
        if unfinished:
            raise RuntimeError(f"the rollouts of steps {unfinished} are still being generated: settle() first")
        return {"stream": self.stream.state_dict(), "ahead": [self.ahead[s].state() for s in sorted(self.ahead)]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state["stream"])
        self.ahead = {a["step"]: Ahead.from_state(a) for a in state["ahead"]}
