"""A group of identical Ray actors co-scheduled in one placement group (one group per role)."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Callable

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rayrl.failures import ResourcesUnavailable, WorkerId

log = logging.getLogger(__name__)


class WorkerGroup:
    """``size`` actors of ``cls``, one per bundle of a placement group; calls fan out and return refs."""

    def __init__(self, name: str, cls: type, size: int, num_cpus: float, num_gpus: float,
                 strategy: str = "PACK", owner: str = "") -> None:
        """``owner`` tags the placement group's name (``rayrl-<owner>-<name>-<unique>``) so that a restarted
        coordinator can find and remove the groups its dead predecessor left (see remove_leftovers)."""
        self.name, self.cls, self.size = name, cls, size
        bundle = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus > 0 else {})}
        self.bundle, self.num_cpus, self.num_gpus = bundle, num_cpus, num_gpus
        self.pg = placement_group([dict(bundle) for _ in range(size)], strategy=strategy,
                                  name=f"{_prefix(owner)}{name}-{uuid.uuid4().hex[:8]}")
        self.workers: list[ray.actor.ActorHandle] = []
        # the bundle each worker sits in (None: a standby that took a place, with resources of its own), and
        # the bundles whose worker was lost and replaced by a standby: free for the next standby
        self.bundle_of: list[int | None] = list(range(size))
        self.vacated: list[int] = []

    def wait_ready(self, timeout_s: float, report: Callable[[str], None] = log.info) -> None:
        """Wait for the placement group, reporting what is awaited every so often. Past the bound it is an
        infrastructure failure (counted against runner.max_restarts): the cluster may still grow back."""
        start = time.monotonic()
        next_report = start + 2.0  # quiet when the resources are there at once
        ready_ref = self.pg.ready()
        while not ray.wait([ready_ref], timeout=1.0)[0]:
            now = time.monotonic()
            if now - start >= timeout_s:
                raise ResourcesUnavailable(WorkerId(self.name), f"resources {self.size} x {self.bundle} not available within "
                                   f"runner.resource_wait_s={timeout_s:g} s (free: {_free()})")
            if now >= next_report:
                report(f"waiting for resources for {self.name}: {self.size} x {self.bundle} "
                       f"({now - start:.0f} s of runner.resource_wait_s={timeout_s:g}; free: {_free()})")
                next_report = now + 15.0

    def spawn(self, make_args: Callable[[int], tuple]) -> None:
        """Create one actor per bundle; ``make_args(i)`` gives actor i's constructor arguments."""
        self.workers = [self._actor(i, make_args(i)) for i in range(self.size)]

    def respawn(self, index: int, args: tuple) -> None:
        """A new process in place ``index``, whose worker was lost, in the reservation that worker held: its
        bundle (freed by its death) or, where a standby with resources of its own had taken the place, a
        bundle a lost worker vacated, else resources of its own like a standby's."""
        try:
            ray.kill(self.workers[index], no_restart=True)
        except Exception:  # noqa: BLE001 -- already dead
            pass
        bundle = self.bundle_of[index]
        if bundle is None and self.vacated:
            bundle = self.vacated.pop()
        self.bundle_of[index] = bundle
        self.workers[index] = self._actor(bundle, args)

    def _actor(self, bundle: int | None, args: tuple) -> ray.actor.ActorHandle:
        strategy: Any = ("DEFAULT" if bundle is None else
                         PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=bundle))
        return ray.remote(self.cls).options(
            num_cpus=self.num_cpus, num_gpus=self.num_gpus, scheduling_strategy=strategy,
            max_restarts=0, max_task_retries=0,
        ).remote(*args)

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[ray.ObjectRef]:
        """The same call on every worker."""
        return [getattr(w, method).remote(*args, **kwargs) for w in self.workers]

    def call_each(self, method: str, per_worker_args: list[tuple]) -> list[ray.ObjectRef]:
        """Worker i gets ``per_worker_args[i]``."""
        return [getattr(w, method).remote(*a) for w, a in zip(self.workers, per_worker_args)]

    def node_ids(self) -> list[str]:
        """The node of each bundle (after wait_ready)."""
        table = ray.util.placement_group_table(self.pg)
        nodes = table.get("bundles_to_node_id", {})
        return [nodes.get(i, "?") for i in range(self.size)]

    def kill(self) -> None:
        """Kill every actor and release the placement group; safe to call twice."""
        for w in self.workers:
            try:
                ray.kill(w, no_restart=True)
            except Exception:  # already dead
                pass
        self.workers = []
        if self.pg is not None:
            try:
                remove_placement_group(self.pg)
            except Exception:
                pass
            self.pg = None


def _free() -> dict[str, float]:
    """The cluster's free resources, without placement-group and per-node bookkeeping entries."""
    return {k: v for k, v in ray.available_resources().items()
            if k not in ("memory", "object_store_memory") and "_group_" not in k and not k.startswith("node:")}


def _prefix(owner: str) -> str:
    return f"rayrl-{owner}-"


def remove_leftovers(owner: str) -> list[str]:
    """Remove the placement groups a previous incarnation of ``owner`` created; returns their names.

    Ray removes a placement group with its creator only once the creator is dead for good: when it restarts
    the creator (the coordinator, after its process died), the old groups stay and hold their resources."""
    removed = []
    for info in ray.util.placement_group_table().values():
        name = info.get("name", "")
        if name.startswith(_prefix(owner)) and info.get("state") != "REMOVED":
            try:
                remove_placement_group(ray.util.get_placement_group(name))
                removed.append(name)
            except ValueError:  # removed in the meantime
                pass
    return removed


class HostedGroup:
    """A role that lives in another group's processes (runner.placement colocated), one per host worker:
    its calls go to the host workers' ``hosted`` method, which passes them on to the role's object there."""

    def __init__(self, name: str, host: WorkerGroup) -> None:
        self.name, self.host = name, host

    @property
    def size(self) -> int:
        return self.host.size

    def call(self, method: str, *args: Any) -> list[ray.ObjectRef]:
        """The same call on every host worker's copy of the role."""
        return [w.hosted.remote(self.name, method, *args) for w in self.host.workers]

    def call_each(self, method: str, per_worker_args: list[tuple]) -> list[ray.ObjectRef]:
        """Host worker i's copy gets ``per_worker_args[i]``."""
        return [w.hosted.remote(self.name, method, *a) for w, a in zip(self.host.workers, per_worker_args)]
