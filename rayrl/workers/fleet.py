"""The three worker groups of a run (actor, rollout, reference): built together, torn down together."""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from rayrl.failures import gather
from rayrl.workers.actor import ActorWorker
from rayrl.workers.group import WorkerGroup
from rayrl.workers.reference import ReferenceWorker
from rayrl.workers.rollout import RolloutWorker

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0


class Fleet:
    """Owns every worker of a run; the coordinator talks to workers only through this."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.actor = WorkerGroup("actor", ActorWorker, cfg.actor.world_size,
                                 cfg.actor.num_cpus_per_worker, cfg.actor.num_gpus_per_worker)
        self.rollout = WorkerGroup("rollout", RolloutWorker, cfg.rollout.num_workers,
                                   cfg.rollout.num_cpus_per_worker, cfg.rollout.num_gpus_per_worker, "SPREAD")
        self.reference = (WorkerGroup("reference", ReferenceWorker, 1, cfg.reference.num_cpus_per_worker,
                                      cfg.reference.num_gpus_per_worker) if cfg.reference.enabled else None)

    @property
    def groups(self) -> list[WorkerGroup]:
        return [g for g in (self.actor, self.rollout, self.reference) if g is not None]

    def start(self) -> None:
        """Wait for resources, create every worker and join the actor ranks into one torch group."""
        for g in self.groups:
            g.wait_ready(self.cfg.runner.resource_wait_s)
        cfg = self.cfg
        self.actor.spawn(lambda i: (cfg, i, cfg.actor.world_size))
        self.rollout.spawn(lambda i: (cfg, i))
        if self.reference is not None:
            self.reference.spawn(lambda i: (cfg, i))
        single_node = len(set(self.actor.node_ids())) == 1
        addr, port = self.wait(self.actor.workers[0].rendezvous_address.remote(single_node), "actor[0]")
        self.wait_all(self.actor.call("setup", addr, port), "actor")
        self.wait_all([w.ping.remote() for g in self.groups for w in g.workers], "startup")

    def labelled(self) -> list[tuple[str, ray.actor.ActorHandle]]:
        return [(f"{g.name}[{i}]", w) for g in self.groups for i, w in enumerate(g.workers)]

    def find_dead(self) -> list[str]:
        """Workers whose process or node is gone (busy ones, e.g. blocked in a collective, are alive)."""
        probes = [(label, w.ping.remote()) for label, w in self.labelled()]
        dead = []
        for label, ref in probes:
            try:
                ray.get(ref, timeout=PROBE_TIMEOUT_S)
            except RayActorError:
                dead.append(label)
            except GetTimeoutError:
                pass
        return dead

    def wait_all(self, refs: list[ray.ObjectRef], what: str) -> list[Any]:
        labels = [f"{what}[{i}]" for i in range(len(refs))] if len(refs) > 1 or "[" not in what else [what]
        return gather(refs, labels, self.cfg.runner.step_timeout_s, self.find_dead)

    def wait(self, ref: ray.ObjectRef, what: str) -> Any:
        return gather([ref], [what], self.cfg.runner.step_timeout_s, self.find_dead)[0]

    def preemption_notices(self) -> list[str]:
        """Workers that received SIGTERM since they started."""
        labelled = self.labelled()
        pings = self.wait_all([w.ping.remote() for _, w in labelled], "ping")
        return [label for (label, _), p in zip(labelled, pings) if p["preemption_notice"]]

    def node_of(self, label: str) -> str | None:
        name, _, rest = label.partition("[")
        for g in self.groups:
            if g.name == name and g.pg is not None:
                try:
                    return g.node_ids()[int(rest.rstrip("]"))]
                except (ValueError, IndexError):
                    return None
        return None

    def shutdown(self) -> None:
        for g in self.groups:
            g.kill()
