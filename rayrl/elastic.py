"""Elastic runs (``actor.min_world_size``, ``rollout.min_workers``): the size each worker group runs at.

When recovery has waited ``runner.resource_wait_s`` for a lost group's resources and they did not come back,
the group continues with as many workers as the free resources hold now, if that is at least its minimum
(else the wait counts as a failed recovery, as without a minimum). While a group runs below its configured
size, every step boundary checks the free resources (Ray's own accounting: no placement attempt); once the
missing workers fit, the coordinator saves that step and rebuilds the group at full size from it, so that no
step is redone. Each change is an event ``resized`` (role, from, to, step, reason).

The math does not depend on the size: the global batch, its order and the loss normalisation (the global
token count) are the same at any actor world size; only the float summation order of the gradient changes.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import ray

from rayrl.failures import InfraFailure, ResourcesUnavailable
from rayrl.runlog import EventLog
from rayrl.workers.roles import ACTOR, ROLLOUT, role_specs

log = logging.getLogger(__name__)


def bundles_that_fit(bundle: dict[str, float], free_nodes: list[dict[str, float]], limit: int) -> int:
    """How many placement-group bundles of ``bundle`` the free resources of ``free_nodes`` hold (a bundle
    lies on one node), at most ``limit``."""
    asked = {r: v for r, v in bundle.items() if v > 0}
    if not asked:
        return limit
    total = sum(min(math.floor(node.get(r, 0.0) / v + 1e-9) for r, v in asked.items()) for node in free_nodes)
    return min(total, limit)


def _take(free_nodes: list[dict[str, float]], bundle: dict[str, float], count: int) -> int:
    """Take up to ``count`` bundles out of ``free_nodes`` (in place, node by node); how many it took."""
    taken = 0
    for node in free_nodes:
        here = bundles_that_fit(bundle, [node], count - taken)
        for r, v in bundle.items():
            node[r] = node.get(r, 0.0) - here * v
        taken += here
    return taken


def free_per_node() -> list[dict[str, float]]:
    """The free CPUs and GPUs of each live node, as Ray's GCS accounts them (one call, no placement)."""
    try:
        from ray._private.state import available_resources_per_node  # no public per-node form in Ray 2.x

        nodes = list(available_resources_per_node().values())
    except Exception as err:  # noqa: BLE001 -- a private API: fall back to the cluster's total
        log.debug("no per-node free resources (%s): using the cluster's total", err)
        nodes = [ray.available_resources()]
    return [{r: float(n.get(r, 0.0)) for r in ("CPU", "GPU")} for n in nodes]


class Elastic:
    """The size every group of its own runs at (``sizes``), its configured size and elastic minimum."""

    def __init__(self, cfg: Any, events: EventLog) -> None:
        specs = [s for s in role_specs(cfg) if s.enabled(cfg) and s.host is None]
        self.events = events
        self.configured = {s.name: s.size(cfg) for s in specs}
        self.minimum = {s.name: s.minimum(cfg) for s in specs if s.minimum(cfg) is not None}
        self.bundles = {s.name: dict(zip(("CPU", "GPU"), s.resources(cfg))) for s in specs}
        self.sizes = dict(self.configured)
        self.hosted_rollout = ROLLOUT not in self.configured  # colocated: the engines live in the actor ranks

    def world_sizes(self) -> dict[str, int]:
        """Actor ranks and rollout engines at the current sizes (as trainer_state.json records them)."""
        return {ACTOR: self.sizes[ACTOR], ROLLOUT: self.sizes[ACTOR if self.hosted_rollout else ROLLOUT]}

    def resume(self, step: int) -> None:
        """This process replaces a dead coordinator or driver: start each elastic group at the size that fits
        now (``plan``) rather than its configured size, which could take the resources the other groups ran
        on and wait for the lost ones again; the group grows back as usual."""
        for role, size in self.plan(free_per_node()).items():
            if size != self.sizes[role]:
                self._resize(role, size, step, "what fits now, for a process that replaces a dead coordinator "
                             "or driver")

    def plan(self, free_nodes: list[dict[str, float]]) -> dict[str, int]:
        """The size of each elastic group when ``free_nodes`` are free: the other groups' workers placed first,
        then each elastic group's minimum, then what is left up to each configured size (never below the
        minimum: a group that does not fit waits for its resources)."""
        free = [dict(node) for node in free_nodes]
        for role in [r for r in self.configured if r not in self.minimum]:
            _take(free, self.bundles[role], self.configured[role])
        sizes = {role: _take(free, self.bundles[role], self.minimum[role]) for role in self.minimum}
        for role in self.minimum:
            sizes[role] += _take(free, self.bundles[role], self.configured[role] - sizes[role])
        return {role: max(self.minimum[role], size) for role, size in sizes.items()}

    def shrink(self, failure: InfraFailure, step: int) -> bool:
        """After ``failure``: when it is a group's resources not back within runner.resource_wait_s and the
        group is elastic, continue with as many workers as fit now, if at least its minimum; whether it
        resized. ``step``: the checkpoint the smaller group will start from."""
        if not isinstance(failure, ResourcesUnavailable):
            return False
        role = failure.workers[0].role
        size = self.shrink_size(role, free_per_node()) if role in self.minimum else None
        if size is None:
            return False
        self._resize(role, size, step, f"the resources of {self.sizes[role] - size} lost {role} worker(s) did not "
                     "come back within runner.resource_wait_s")
        return True

    def shrink_size(self, role: str, free_nodes: list[dict[str, float]]) -> int | None:
        """The size elastic group ``role`` continues with when its resources did not come back and
        ``free_nodes`` are free: as many workers as fit, if below its current size and at least its minimum;
        None: no resize (they fit again: the next attempt places them; or below the minimum: a failure)."""
        fit = bundles_that_fit(self.bundles[role], free_nodes, self.configured[role])
        if fit >= self.sizes[role]:
            return None
        if fit < self.minimum[role]:
            log.warning("%s: %d worker(s) fit, below its elastic minimum of %d: not resizing", role, fit,
                        self.minimum[role])
            return None
        return fit

    def growable(self) -> list[str]:
        """The groups below their configured size whose missing workers the free resources hold now (checked
        at step boundaries; nothing is asked of Ray while every group is at full size)."""
        return self.growable_in(free_per_node()) if self.sizes != self.configured else []

    def growable_in(self, free_nodes: list[dict[str, float]]) -> list[str]:
        """The groups below their configured size whose missing workers fit in ``free_nodes``."""
        short = {r: self.configured[r] - n for r, n in self.sizes.items() if n < self.configured[r]}
        return [r for r, missing in short.items() if bundles_that_fit(self.bundles[r], free_nodes, missing) >= missing]

    def grow(self, roles: list[str], step: int) -> None:
        """The groups ``roles`` go back to their configured size, from the checkpoint of ``step``."""
        for role in roles:
            self._resize(role, self.configured[role], step, "its resources are back")

    def _resize(self, role: str, to: int, step: int, reason: str) -> None:
        before, self.sizes[role] = self.sizes[role], to
        verb = "shrinks" if to < before else "grows back"
        self.events.emit("resized", f"{role} {verb} from {before} to {to} workers at step {step}: {reason}",
                         role=role, **{"from": before}, to=to, step=step, reason=reason)
