"""A group of identical Ray actors co-scheduled in one placement group (one group per role)."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

log = logging.getLogger(__name__)


class ResourcesUnavailable(RuntimeError):
    """The cluster did not offer a group's resources within the wait bound."""


class WorkerGroup:
    """``size`` actors of ``cls``, one per bundle of a placement group; calls fan out and return refs."""

    def __init__(self, name: str, cls: type, size: int, num_cpus: float, num_gpus: float,
                 strategy: str = "PACK") -> None:
        self.name, self.cls, self.size = name, cls, size
        bundle = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus > 0 else {})}
        self.bundle, self.num_cpus, self.num_gpus = bundle, num_cpus, num_gpus
        self.pg = placement_group([dict(bundle) for _ in range(size)], strategy=strategy,
                                  name=f"rayrl-{name}")
        self.workers: list[ray.actor.ActorHandle] = []

    def wait_ready(self, timeout_s: float) -> None:
        """Wait for the placement group, logging what is awaited; raise ResourcesUnavailable past the bound."""
        deadline = time.monotonic() + timeout_s
        next_log = 0.0
        while True:
            ready, _ = ray.wait([self.pg.ready()], timeout=min(5.0, max(0.1, deadline - time.monotonic())))
            if ready:
                return
            now = time.monotonic()
            if now >= deadline:
                raise ResourcesUnavailable(
                    f"{self.name}: {self.size} x {self.bundle} not available within {timeout_s:.0f} s "
                    f"(cluster has {ray.available_resources()})")
            if now >= next_log:
                log.info("waiting for resources for %s: %d x %s (available: %s)",
                         self.name, self.size, self.bundle, ray.available_resources())
                next_log = now + 10.0

    def spawn(self, make_args: Callable[[int], tuple]) -> None:
        """Create one actor per bundle; ``make_args(i)`` gives actor i's constructor arguments."""
        remote_cls = ray.remote(self.cls)
        for i in range(self.size):
            strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i)
            handle = remote_cls.options(
                num_cpus=self.num_cpus, num_gpus=self.num_gpus, scheduling_strategy=strategy,
                max_restarts=0, max_task_retries=0,
            ).remote(*make_args(i))
            self.workers.append(handle)

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
