"""The rollouts of the coming steps (rollout.async_steps = k): generation for steps N+1..N+k runs on the
rollout workers while step N trains.

Ordering does the synchronisation. A rollout worker runs the calls of one caller in the order they were
made, so a generation launched after the weights of version v were sent (and before the next ones) samples
with version v: step s is launched at the start of step s - k, when the engines hold version s - 1 - k
(the initial policy, version 0, for the first k + 1 steps), and the weights of step N are sent after step
N trained, without waiting for the generation in flight ahead of them. With k = 0 this is the synchronous
loop: launch, wait, train, sync.

A lost rollout worker: the pipeline holds (as object-store refs, with rollout.async_steps > 0) the weights of
every version a generation still in flight is pinned to, and the chunk each worker was given, so that a
replacement regenerates what was lost, in order and bit-identically, in the job (rayrl.regenerate); with
k = 0 the one version pinned is the actors' current weights, fetched again when needed.

What a checkpoint holds: the generations in flight are finished first (``settle``: they began at least a
step earlier), and their rollouts are saved with the prompts and the weight version that made them, next to
the data stream that already handed those prompts out, so that loader position and buffer agree and no
prompt is used twice or skipped. Nothing unfinished is saved: regenerating it would need the older weights
it was sampled with, which the checkpoint (of the newest weights) does not hold. Sampling seeds derive from
the step and the sample (rayrl.engines.base), so what is generated after a resume is what an uninterrupted
run generates.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import ray

from rayrl.engines import Rollouts
from rayrl.regenerate import GENERATE, LOAD, retrying
from rayrl.workers.fleet import Fleet
from rayrl.workers.roles import ROLLOUT

if TYPE_CHECKING:
    from rayrl.recovery import Recovery


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
    loads: dict[int, ray.ObjectRef] = field(default_factory=dict)  # worker -> weight load queued before its call
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

    def __init__(self, fleet: Fleet, cfg: Any, stream: Any, recovery: Recovery | None = None) -> None:
        """``stream``: the data stream (rayrl.data.loader) the prompts come from; ``recovery``: the run's
        failure record, for the recovery in the job of lost rollout workers (None: none, they fail the step)."""
        self.fleet, self.stream, self.recovery = fleet, stream, recovery
        self.k, self.n = cfg.rollout.async_steps, cfg.rollout.n_samples_per_prompt
        self.max_steps = cfg.runner.max_steps
        self.version = 0  # the policy version the engines were last sent (weights_sent)
        self.ahead: dict[int, Ahead] = {}
        self.loads: dict[int, ray.ObjectRef] = {}  # worker -> its weight load sent since the last launch
        self.weights: dict[int, ray.ObjectRef] = {}  # version -> its weights, while a generation is pinned to it

    def take(self, step: int) -> Ahead:
        """The finished rollouts of ``step`` (waiting for them), after launching the generation of every
        step up to ``step + k`` not launched yet (and not past runner.max_steps)."""
        for s in range(step, min(step + self.k, self.max_steps) + 1):
            if s not in self.ahead:
                self._launch(s)
        self._finish(self.ahead[step])  # still listed while it runs: a lost chunk of it is regenerated too
        return self.ahead.pop(step)

    @property
    def consumed_samples(self) -> int:
        """Prompts whose rollouts training has taken (the stream has handed out those ahead as well)."""
        return self.stream.consumed_samples - sum(len(a.items) for a in self.ahead.values())

    @property
    def busy(self) -> frozenset[str]:
        """The roles with generations in flight between steps (their workers answer nothing else until done)."""
        return frozenset({self.fleet.rollout.name}) if self.k > 0 else frozenset()

    def weights_sent(self, version: int, loads: list[ray.ObjectRef], weights: ray.ObjectRef | None = None) -> None:
        """The engines were sent the weights of ``version`` (``loads``: their load calls, one per engine, maybe
        still queued behind a generation; ``weights``: the object-store ref they load, held while generations
        pinned to it run ahead of training): the next launch samples with it."""
        self.version = version
        self.loads = dict(enumerate(loads))
        if weights is not None and self.k > 0:
            self.weights[version] = weights
        self._release_weights()

    def settle(self) -> None:
        """Finish every generation in flight, and make sure every rollout worker is there (a lost one is
        replaced in the job): before a checkpoint, which saves what is finished and each worker's file."""
        for step in sorted(self.ahead):
            self._finish(self.ahead[step])
        rollout = self.fleet.rollout
        if self.fleet.host_of(ROLLOUT) is None:  # colocated: an engine lives and dies with its actor rank
            retrying(self, lambda: self.fleet.wait_all(rollout.call("ping"), rollout.name))

    def _launch(self, step: int) -> None:
        items, epoch, indices = self.stream.next()
        rollout = self.fleet.rollout
        refs = rollout.call_each("generate", [self._chunk_call(items, step, rollout.size, i)
                                              for i in range(rollout.size)])
        self.ahead[step] = Ahead(step, items, epoch, indices, self.version, refs, self.loads)
        self.loads = {}

    def _chunk_call(self, items: list[dict], step: int, workers: int, index: int) -> tuple:
        """The generate arguments of worker ``index``'s chunk of a step's ``items`` (the same chunk, with the
        same seed, whoever is sent it: a replacement regenerates it bit for bit)."""
        chunk = split_evenly(list(range(len(items))), workers)[index]
        return [items[i] for i in chunk], self.n, step, chunk[0] * self.n

    def _finish(self, ahead: Ahead) -> None:
        """Wait for the rollouts of ``ahead``, regenerating in the job what a lost rollout worker had not
        finished (rayrl.regenerate)."""
        if ahead.rollouts is not None:
            return
        name = self.fleet.rollout.name

        def wait() -> tuple[list[Rollouts], list[Any]]:
            loads = sorted(ahead.loads)
            return (self.fleet.wait_all(ahead.refs, name),
                    self.fleet.wait_all([ahead.loads[i] for i in loads], name, loads))

        parts, waited = retrying(self, wait)
        ahead.rollouts = Rollouts.concat(parts)
        ahead.wait_weights_s = max((w for w in waited if w is not None), default=0.0)
        ahead.refs, ahead.loads = [], {}
        self._release_weights()

    # ---------------------------------------------------------------- a lost rollout worker
    def pinned(self) -> list[tuple[int, int]]:
        """(step, weight version) of every generation not finished, in step order."""
        return [(step, a.version) for step, a in sorted(self.ahead.items()) if a.rollouts is None]

    def holds_weights(self, calls: list[tuple[str, int]]) -> bool:
        """Whether the weights of every version ``calls`` loads can be had: held, or the current ones
        (the actors have them)."""
        return all(version in self.weights or version == self.version for kind, version in calls if kind == LOAD)

    def reissue(self, indices: list[int], calls: list[tuple[str, int]]) -> list[int]:
        """Send the new workers in places ``indices`` ``calls`` (rayrl.regenerate.reissue_calls): each
        unfinished step's chunk, the one their predecessors had, after the weights it is pinned to; the
        steps whose chunks were sent again."""
        weights = {version: self._weights_of(version) for kind, version in calls if kind == LOAD}
        unfinished = {a.step: a for a in self.ahead.values() if a.rollouts is None}
        for index in indices:
            worker, load = self.fleet.rollout.workers[index], None
            for kind, value in calls:
                if kind == LOAD:
                    load = worker.load_weights.remote(weights[value])
                    continue
                ahead = unfinished[value]
                ahead.refs[index] = worker.generate.remote(*self._chunk_call(ahead.items, ahead.step,
                                                                             len(ahead.refs), index))
                ahead.loads.pop(index, None)
                if load is not None:
                    ahead.loads[index] = load
                load = None
            self.loads.pop(index, None)
            if load is not None:
                self.loads[index] = load
        return [step for kind, step in calls if kind == GENERATE]

    def _weights_of(self, version: int) -> ray.ObjectRef:
        """The weights of ``version``: held, or (the current version, not held: synchronous) the actors'."""
        if version in self.weights:
            return self.weights[version]
        refs = self.fleet.actor.call("full_state_dict")
        self.fleet.wait_all(refs, self.fleet.actor.name)
        return refs[0]

    def _release_weights(self) -> None:
        """Let go of the weights no unfinished generation is pinned to and no launch will sample with."""
        keep = {version for _, version in self.pinned()} | {self.version}
        self.weights = {v: ref for v, ref in self.weights.items() if v in keep}

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
