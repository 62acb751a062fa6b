"""The worker roles of a run, as one table: what the fleet builds for each role and how.

A role's properties (its class, how many workers, how they are placed, what each reserves, what its
constructor gets) live here and nowhere else; the fleet iterates the table. A new role property (standbys,
an elastic minimum size, colocated placement) is a field of ``RoleSpec``, not a branch in the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from rayrl.workers.actor import ActorWorker
from rayrl.workers.colocated import ColocatedActorWorker
from rayrl.workers.reference import ReferenceWorker
from rayrl.workers.rollout import RolloutWorker

ACTOR, ROLLOUT, REFERENCE = "actor", "rollout", "reference"


@dataclass(frozen=True)
class RoleSpec:
    """One role. ``size(cfg)`` workers of ``cls``, one per placement-group bundle of the role's config
    section resources (``num_cpus_per_worker``, ``num_gpus_per_worker``), placed with ``strategy``;
    worker i is built as ``cls(*args(cfg, i, size))``. ``process_group``: the workers join one
    torch.distributed group (``setup(master_addr, master_port)``) once they are all up. ``host``: the role
    whose processes host this one (runner.placement colocated): it has no workers of its own, one per host
    worker instead, and its calls go to the host's ``hosted`` method. ``minimum(cfg)``: the fewest workers
    the role may continue with when lost resources do not come back (None: not elastic; rayrl.elastic).
    ``standbys(cfg)``: spare workers of the role, started with the fleet, that take a lost worker's place
    (rayrl.workers.standby)."""

    name: str
    cls: type
    size: Callable[[Any], int]
    args: Callable[[Any, int, int], tuple]
    strategy: str = "PACK"
    enabled: Callable[[Any], bool] = lambda cfg: True
    process_group: bool = False
    host: str | None = None
    minimum: Callable[[Any], int | None] = lambda cfg: None
    standbys: Callable[[Any], int] = lambda cfg: 0

    def resources(self, cfg: Any) -> tuple[float, float]:
        """CPUs and GPUs that each worker of this role reserves."""
        section = getattr(cfg, self.name)
        return section.num_cpus_per_worker, section.num_gpus_per_worker


ROLES: tuple[RoleSpec, ...] = (
    RoleSpec(ACTOR, ActorWorker, size=lambda cfg: cfg.actor.world_size,
             args=lambda cfg, rank, size: (cfg, rank, size), process_group=True,
             minimum=lambda cfg: cfg.actor.min_world_size, standbys=lambda cfg: cfg.runner.standby.actor),
    RoleSpec(ROLLOUT, RolloutWorker, size=lambda cfg: cfg.rollout.num_workers,
             args=lambda cfg, index, size: (cfg, index), strategy="SPREAD",
             minimum=lambda cfg: cfg.rollout.min_workers, standbys=lambda cfg: cfg.runner.standby.rollout),
    RoleSpec(REFERENCE, ReferenceWorker, size=lambda cfg: 1, args=lambda cfg, index, size: (cfg, index),
             enabled=lambda cfg: cfg.reference.enabled),
)


def role_specs(cfg: Any) -> tuple[RoleSpec, ...]:
    """The roles of a run as its ``runner.placement`` lays them out: ``split``, each in processes of its own
    (``ROLES``); ``colocated``, the rollout engines and the reference hosted by the actor ranks, one of
    each per rank."""
    if cfg.runner.placement == "split":
        return ROLES
    return tuple(replace(spec, cls=ColocatedActorWorker) if spec.name == ACTOR
                 else replace(spec, host=ACTOR, size=lambda cfg: cfg.actor.world_size, minimum=lambda cfg: None)
                 for spec in ROLES)
