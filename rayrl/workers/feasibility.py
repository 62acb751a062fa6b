"""Whether the cluster can ever hold the run's workers, checked once at start-up.

Ray keeps a request no node can satisfy pending for ever (it calls it infeasible): without this check the
run would wait ``runner.resource_wait_s`` for it, and again after every restart. On the Ray instance rayrl
started itself (this machine, which cannot grow) such a request is a config error (exit 2) naming the key,
what it asks and what the cluster has. A cluster whose autoscaler reported its node types (Ray's autoscaler
v2, KubeRay) is checked against what it can grow to. On any other cluster that rayrl joined, a node that has
the resource may be down for the moment (a relaunch after a node loss) or still joining (a job started with
the head node): what it lacks is waited for as any lost resource is, and the log says what and which key to
change if no such node will come.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger(__name__)

_EPS = 1e-9
_KEYS = {"CPU": "num_cpus_per_worker", "GPU": "num_gpus_per_worker"}
_SIZE_KEYS = {"actor": "actor.world_size", "rollout": "rollout.num_workers"}


@dataclass(frozen=True)
class Demand:
    """``count`` workers of ``role``, each asking for ``bundle`` (one placement-group bundle)."""

    role: str
    count: int
    bundle: dict[str, float]


def run_demands(cfg: Any) -> list[Demand]:
    """What the run's worker groups ask of the cluster (as workers/fleet.py requests it)."""
    roles = [("actor", cfg.actor.world_size), ("rollout", cfg.rollout.num_workers)]
    if cfg.reference.enabled:
        roles.append(("reference", 1))
    if cfg.runner.placement == "colocated":  # the others live in the actor ranks' processes (roles.role_specs)
        roles = roles[:1]
    out = []
    for role, count in roles:
        spec = getattr(cfg, role)
        bundle = {"CPU": float(spec.num_cpus_per_worker)}
        if spec.num_gpus_per_worker > 0:
            bundle["GPU"] = float(spec.num_gpus_per_worker)
        out.append(Demand(role, count, bundle))
    return out


def never_fits(demands: list[Demand], node_shapes: list[dict[str, float]],
               capacity: dict[str, float] | None) -> str | None:
    """Why ``demands`` can never be placed on nodes of ``node_shapes`` with ``capacity`` in all (None:
    unbounded), as one line starting with the config key at fault; None when they can."""
    for d in demands:
        if not any(_fits(d.bundle, shape) for shape in node_shapes):
            short = [r for r in d.bundle
                     if max((s.get(r, 0.0) for s in node_shapes), default=0.0) + _EPS < d.bundle[r]]
            resource = (short or [r for r in ("GPU", "CPU") if r in d.bundle])[0]
            return (f"{d.role}.{_KEYS[resource]}: each {d.role} worker asks for {_fmt(d.bundle)}, and no node of "
                    f"this cluster has that (nodes: {', '.join(_fmt(s) for s in node_shapes) or 'none'})")
    if capacity is None:
        return None
    for resource in sorted({r for d in demands for r in d.bundle}):
        asked = {d.role: d.count * d.bundle[resource] for d in demands if resource in d.bundle}
        have = capacity.get(resource, 0.0)
        if sum(asked.values()) > have + _EPS:
            alone = [r for r, v in asked.items() if v > have + _EPS]  # a group larger than the whole cluster
            role = alone[0] if alone else max(asked, key=lambda r: asked[r])
            key = _SIZE_KEYS.get(role, f"{role}.{_KEYS[resource]}") if alone else f"{role}.{_KEYS[resource]}"
            parts = ", ".join(f"{r} {v:g}" for r, v in asked.items())
            return (f"{key}: the workers ask for {sum(asked.values()):g} {resource} in all ({parts}); "
                    f"the whole cluster has {have:g}")
    return None


def cluster_problem(cfg: Any, own_instance: bool, report: Callable[[str], None] = log.info) -> str | None:
    """Why the run's workers can never be placed on this cluster (see the module docstring), one line
    naming the key; None when they can. ``own_instance``: rayrl started this Ray (a node that cannot grow)."""
    import ray

    demands = run_demands(cfg)
    nodes = [_resources(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    growth = None if own_instance else _autoscaler_node_types()
    if growth is None:
        capacity = {r: sum(n.get(r, 0.0) for n in nodes) for r in {r for n in nodes for r in n}}
        problem = never_fits(demands, nodes, capacity)
        if problem is None or own_instance:
            return None if problem is None else f"{problem}; the cluster does not autoscale"
        report(f"waiting for nodes to join this cluster (at most runner.resource_wait_s="
               f"{cfg.runner.resource_wait_s:g} s per attempt): {problem}; if no such node will come, change that key")
        return None
    shapes, limit = growth
    problem = never_fits(demands, nodes + shapes, limit)
    if problem is not None:
        return f"{problem}, nor can its autoscaler add one"
    now = never_fits(demands, nodes, None)
    if now is not None:
        report(f"waiting for the autoscaler: {now}")
    return None


def _autoscaler_node_types() -> tuple[list[dict[str, float]], dict[str, float] | None] | None:
    """The node shapes the cluster's autoscaler may add and its resource limits, or None when no autoscaler
    reported a config (a static cluster, or Ray's v1 autoscaler, which reports none)."""
    try:
        from ray._private.state import state  # Ray Train v2 reads the same record for the same check

        config = state.get_cluster_config()
        if config is None or not config.node_group_configs:
            return None
        shapes = [_resources(dict(g.resources)) for g in config.node_group_configs if g.max_count != 0]
        limits = state.get_max_resources_from_cluster_config()
    except Exception as err:  # noqa: BLE001 -- a private API: without it, assume no autoscaler
        log.debug("no autoscaler config: %s", err)
        return None
    return shapes, ({r: float(v) for r, v in limits.items()} if limits else None)


def _resources(raw: dict[str, Any]) -> dict[str, float]:
    return {r: float(raw[r]) for r in ("CPU", "GPU") if r in raw}


def _fits(bundle: dict[str, float], shape: dict[str, float]) -> bool:
    return all(shape.get(r, 0.0) + _EPS >= v for r, v in bundle.items())


def _fmt(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{r}: {v:g}" for r, v in sorted(resources.items())) + "}"
