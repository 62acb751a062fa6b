"""The newest checkpoint kept in host memory (``runner.checkpoint.memory_replicas: 1``), so that recovery
loads it from there instead of reading storage.

At each save every actor rank hands over a copy of its own shards and extra state (RNG, LR step), which Ray
keeps in the object store of the rank's node, and the next rank on another node takes a second copy into
its node's object store. Both are objects the coordinator owns, so they outlive the worker processes that
made them (a killed rank's copy is still there for its replacement); only losing the node loses one, and
losing both nodes, or the coordinator, loses the copy. The small parts (data position and rollouts ahead,
trainer state) stay in the coordinator's memory; the rollout engines have no state to copy (their seeds
derive from the step: rayrl.engines.base). A copy becomes the one recovery may use once its
step is committed in storage, so that memory and storage always agree on what the newest step is; it is
used only while it is that newest step and every rank's shards have a copy on a live node. Either way the
state loaded is the committed step's, bit for bit.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import ray

from rayrl.failures import WorkerId

if TYPE_CHECKING:
    from rayrl.pipeline import RolloutPipeline
    from rayrl.runlog import EventLog
    from rayrl.workers.fleet import Fleet

log = logging.getLogger(__name__)

GB = 1 << 30
LOCATE_TIMEOUT_MS = 5000
INLINE_LIMIT_BYTES = 100 * 1024  # Ray's max_direct_call_object_size: smaller objects live in their owner


@dataclass
class MemoryStep:
    """One step's state in memory: per actor rank its copies (own node first, then the peer's), each with
    the node that holds it (the node of the rank that made or took it)."""

    step: int
    trainer_state: dict[str, Any]
    data_state: dict[str, Any]
    actor_copies: list[list[tuple[ray.ObjectRef, str]]]


def peer_ranks(nodes: list[str]) -> list[int | None]:
    """For each rank (``nodes[r]``: its node), the rank that holds its second copy: rank r + d for the
    smallest shift d that puts every rank's copy on another node (each rank then holds one peer's copy);
    where no shift does, the next rank on another node, else the next rank; None for a single rank."""
    size = len(nodes)
    for shift in range(1, size):
        if all(nodes[(r + shift) % size] != nodes[r] for r in range(size)):
            return [(r + shift) % size for r in range(size)]
    peers: list[int | None] = []
    for rank in range(size):
        ring = [(rank + k) % size for k in range(1, size)]
        elsewhere = [p for p in ring if nodes[p] != nodes[rank]]
        peers.append((elsewhere or ring or [None])[0])
    return peers


class MemoryReplicas:
    """Keeps the newest committed step (and the one being saved) in memory; chooses it at recovery."""

    def __init__(self, config: Any, events: EventLog) -> None:
        """``config``: runner.checkpoint (memory_replicas, memory_budget_gb)."""
        self.enabled = bool(config.memory_replicas)
        self.budget_gb = config.memory_budget_gb
        self.events = events
        self.pending: MemoryStep | None = None  # saved, not yet known to be committed
        self.committed: MemoryStep | None = None
        self.loading = False  # a recovery from memory has not reached a finished step yet

    def on_save(self, step: int, fleet: Fleet, trainer_state: dict[str, Any], data: RolloutPipeline) -> None:
        """Right after the save of ``step`` was started (before the next step changes any state): take the
        copies. The actor ranks make and pass on theirs in the background (the coordinator does not wait)."""
        if not self.enabled:
            return
        actor = fleet.actor
        if not self._within_budget(fleet):
            return
        own = actor.call("memory_copy")
        nodes = [fleet.where[WorkerId(actor.name, r)]["node"] for r in range(actor.size)]
        copies = [[(ref, nodes[rank])] for rank, ref in enumerate(own)]
        for rank, peer in enumerate(peer_ranks(nodes)):
            if peer is not None:
                copies[rank].append((actor.workers[peer].hold_copy.remote(own[rank]), nodes[peer]))
        self.pending = MemoryStep(step, copy.deepcopy(trainer_state), copy.deepcopy(data.state_dict()), copies)

    def _within_budget(self, fleet: Fleet) -> bool:
        """Asked once: whether two copies of the largest rank's shards (its own and a peer's) fit in
        runner.checkpoint.memory_budget_gb; said in events.jsonl either way (event ``memory_replicas``)."""
        if self.committed is not None or self.pending is not None:
            return True
        per_rank = 2 * max(fleet.wait_all(fleet.actor.call("memory_copy_nbytes"), fleet.actor.name))
        fits = self.budget_gb is None or per_rank <= self.budget_gb * GB
        where = "host memory (Ray's object store)"
        message = (f"memory replicas: {per_rank / 1e6:.1f} MB of {where} per actor rank (its own shards and a "
                   f"peer's)" if fits else
                   f"WARNING: memory replicas off: {per_rank / GB:.2f} GB per actor rank (its own shards and a "
                   f"peer's) exceeds runner.checkpoint.memory_budget_gb={self.budget_gb:g}; recovery reads storage")
        self.events.emit("memory_replicas", message, bytes_per_rank=per_rank, enabled=fits, budget_gb=self.budget_gb)
        self.enabled = fits
        return fits

    def promote(self, committed_steps: Callable[[], list[int]]) -> None:
        """The copy being saved becomes the one to recover from once its step is committed in storage."""
        if self.pending is not None and self.pending.step in committed_steps():
            self.committed, self.pending = self.pending, None

    def usable(self, committed_steps: Callable[[], list[int]]) -> MemoryStep | None:
        """The copy to recover from: the newest committed step, with a copy of every rank's shards on a
        live node; None (storage) otherwise, or when a recovery from memory failed before a step."""
        if not self.enabled or self.loading:
            return None
        self.promote(committed_steps)
        steps = committed_steps()
        kept = self.committed
        if kept is None or not steps or kept.step != max(steps):
            return None
        return kept if all(self._surviving(copies) is not None for copies in kept.actor_copies) else None

    def _surviving(self, copies: list[tuple[ray.ObjectRef, str]]) -> ray.ObjectRef | None:
        """The first of a rank's copies whose holding node is alive and that Ray still locates (or that is
        small enough for Ray to keep in the coordinator's own memory); None when every copy was lost with its
        node. The holding node, not any node Ray lists: the peer that took a rank's copy also has an unpinned
        copy of the rank's own one, which Ray may evict, and which a lost node then leaves unrecoverable."""
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        try:
            found = ray.experimental.get_object_locations([ref for ref, _ in copies], timeout_ms=LOCATE_TIMEOUT_MS)
        except Exception as err:  # noqa: BLE001 -- a copy that cannot be located is not used
            log.warning("could not locate the memory copies: %s", err)
            return None
        for ref, node in copies:
            where = found.get(ref, {})
            if node in alive and node in (where.get("node_ids") or []):
                return ref
            size = where.get("object_size")
            if not where.get("node_ids") and size is not None and size < INLINE_LIMIT_BYTES and _holds_value(ref):
                return ref  # in the coordinator's own memory: Ray keeps objects this small with their owner
        return None

    def load(self, kept: MemoryStep, fleet: Fleet, data: RolloutPipeline) -> dict[str, Any]:
        """Load ``kept`` into every worker and ``data`` (the data stream and the rollouts ahead of
        training); returns its trainer state."""
        self.loading = True
        chosen = [self._surviving(copies) for copies in kept.actor_copies]
        actor = fleet.actor
        loads = actor.call_each("load_memory_copy", [(ref, kept.step) for ref in chosen])
        fleet.wait_checkpoint(loads, actor.name, f"loading step {kept.step} from memory")
        data.load_state_dict(copy.deepcopy(kept.data_state))
        return copy.deepcopy(kept.trainer_state)

    def step_finished(self) -> None:
        self.loading = False


def _holds_value(ref: ray.ObjectRef) -> bool:
    """Whether a small object in the coordinator's memory is a copy, not the error Ray keeps in its place
    when the task that was to make it failed (its worker or node died first)."""
    try:
        ray.get(ref, timeout=LOCATE_TIMEOUT_MS / 1000)
        return True
    except Exception:  # noqa: BLE001 -- any error: that copy is not there
        return False
