"""Standby workers (``runner.standby.<role>``): spare processes of a role, started with the fleet and kept
waiting with their imports done and what can be built without a group built (``warm``), that take a lost
worker's place in recovery instead of a new process (which would pay the imports, the model build and, on
GPU, CUDA's and the engine's start-up).

Each standby reserves what a worker of its role reserves (a GPU on GPU). The first ones are placed on a node
that holds none of the role's workers and has room where the cluster has one (a soft preference: Ray places
them elsewhere when that node fills up meanwhile; with no such node, wherever room appears first); one started after a standby took a lost worker's place goes into the
reservation the lost worker freed (its placement-group bundle), so the run never holds more than it
asked for at the start, and only at the next step boundary, so that it does not slow the recovery down. A
standby lost while idle is replaced at the next step boundary too, with no recovery.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from rayrl.failures import NODE_ERRORS
from rayrl.workers.group import WorkerGroup
from rayrl.workers.roles import RoleSpec

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
LOST = (RayActorError, *NODE_ERRORS)


@dataclass
class Standby:
    """One spare: its handle, its last probe not yet looked at (``warm`` at first, then a ``ping``), where it
    runs once it answered (``info``: node, pid), and the bundle of its role's placement group it sits in
    (None: resources of its own)."""

    handle: ray.actor.ActorHandle
    probe: ray.ObjectRef
    bundle: int | None
    pg: Any = None
    info: dict[str, Any] | None = None
    answered: bool = False  # answered the last probe: ready to take a place


class Standbys:
    """The spare workers of every role that asks for some."""

    def __init__(self, cfg: Any, specs: dict[str, RoleSpec], emit: Callable[..., None]) -> None:
        self.cfg, self.specs, self.emit = cfg, specs, emit
        self.targets = {name: spec.standbys(cfg) for name, spec in specs.items()
                        if spec.host is None and spec.standbys(cfg) > 0}
        self.pool: dict[str, list[Standby]] = {name: [] for name in self.targets}
        self.started = 0  # standbys started so far: each gets an index beyond its role's workers

    def top_up(self, groups: dict[str, WorkerGroup], where: dict[Any, dict[str, Any]]) -> None:
        """Start the standbys missing from each role's count (in the background: nothing waits for them)."""
        for role, target in self.targets.items():
            while len(self.pool[role]) < target:
                self.pool[role].append(self._start(groups[role], where))

    def _start(self, group: WorkerGroup, where: dict[Any, dict[str, Any]]) -> Standby:
        spec = self.specs[group.name]
        bundle = group.vacated.pop() if group.vacated else None
        if bundle is not None:  # the reservation a lost worker freed
            strategy: Any = PlacementGroupSchedulingStrategy(group.pg, placement_group_bundle_index=bundle)
        else:
            node = self._other_node(group, where)
            strategy = NodeAffinitySchedulingStrategy(node, soft=True) if node else "DEFAULT"
        handle = ray.remote(spec.cls).options(
            num_cpus=group.num_cpus, num_gpus=group.num_gpus, scheduling_strategy=strategy,
            max_restarts=0, max_task_retries=0,
        ).remote(*spec.args(self.cfg, group.size + self.started, group.size))
        self.started += 1
        return Standby(handle, handle.warm.remote(), bundle, group.pg if bundle is not None else None)

    def _other_node(self, group: WorkerGroup, where: dict[Any, dict[str, Any]]) -> str | None:
        """A live node that holds none of the group's workers and has room for one now, the one with the
        fewest of this role's standbys; None when there is none (then Ray places the standby wherever room
        appears, e.g. on a node that joins later: pinned to a full node, it would wait for that one alone)."""
        from ray._private.state import available_resources_per_node  # no public per-node form in Ray 2.x

        busy = {info["node"] for w, info in where.items() if w.role == group.name} | set(group.node_ids())
        spares = [s.info["node"] for s in self.pool[group.name] if s.info]
        nodes = [node for node, free in available_resources_per_node().items() if node not in busy
                 and all(free.get(k, 0) >= v for k, v in group.bundle.items())]
        return min(nodes, key=spares.count, default=None)

    def tend(self, groups: dict[str, WorkerGroup], where: dict[Any, dict[str, Any]]) -> None:
        """At a step boundary, without waiting: look at each standby's last probe (a standby that answered
        for the first time is ready: event ``standby_ready``; one whose process or node is gone: event
        ``standby_lost``, no recovery), probe again, and start the standbys missing."""
        for role, spares in self.pool.items():
            for spare in list(spares):
                if ray.wait([spare.probe], timeout=0)[0]:
                    self._look(role, spare, spare.probe)
                    if spare in spares:
                        spare.probe = spare.handle.ping.remote()
        self.top_up(groups, where)

    def _look(self, role: str, spare: Standby, ref: ray.ObjectRef) -> None:
        """Take in a probe's answer; a standby found lost leaves the pool. A program error in a standby
        (its ``warm``) is raised: the workers of its role would meet it too."""
        try:
            info = ray.get(ref)
        except LOST as err:
            self.pool[role].remove(spare)
            where = f"node {spare.info['node'][:8]}, pid {spare.info['pid']}" if spare.info else "not yet started"
            self.emit("standby_lost", f"standby {role} ({where}) lost while idle: {type(err).__name__}; "
                      "starting another (no recovery)", role=role, **(spare.info or {}))
            return
        spare.answered = True
        if spare.info is None:
            spare.info = {"node": info["node"], "pid": info["pid"]}
            self.emit("standby_ready", f"standby {role} ready (node {info['node'][:8]}, pid {info['pid']})",
                      role=role, **spare.info)

    def ready(self, roles: set[str]) -> dict[str, int]:
        """How many standbys of each of ``roles`` answer a probe now (bounded; one still starting is not
        waited for): those recovery may use."""
        spares = [(role, s) for role in roles & set(self.pool) for s in list(self.pool[role])]
        for role, spare in spares:  # one that finished starting since the last step boundary counts too
            if spare.info is None and ray.wait([spare.probe], timeout=0)[0]:
                self._look(role, spare, spare.probe)
        started = [(role, s) for role, s in spares if s.info is not None and s in self.pool[role]]
        probes = [s.handle.ping.remote() for _, s in started]
        done = set(ray.wait(probes, num_returns=len(probes), timeout=PROBE_TIMEOUT_S)[0]) if probes else set()
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        for (role, spare), probe in zip(started, probes):
            spare.answered = False
            if probe in done:
                self._look(role, spare, probe)
            spare.answered = spare.answered and spare.info["node"] in alive
        return {role: sum(s.answered for s in self.pool[role]) for role in roles & set(self.pool)}

    def take(self, role: str, count: int) -> list[Standby]:
        """``count`` of the standbys of ``role`` that answered the last ``ready`` probe, out of the pool."""
        chosen = [s for s in self.pool[role] if s.answered][:count]
        self.pool[role] = [s for s in self.pool[role] if s not in chosen]
        return chosen

    def release(self, group: WorkerGroup) -> None:
        """Kill the standbys that sit in ``group``'s placement group, which is about to be removed (they would
        die with it); the next step boundary starts others."""
        for role, spares in self.pool.items():
            for spare in [s for s in spares if s.pg is not None and s.pg is group.pg]:
                spares.remove(spare)
                _kill(spare.handle)

    def shutdown(self) -> None:
        for spares in self.pool.values():
            for spare in spares:
                _kill(spare.handle)
            spares.clear()


def _kill(handle: ray.actor.ActorHandle) -> None:
    try:
        ray.kill(handle, no_restart=True)
    except Exception:  # noqa: BLE001 -- already dead
        pass
