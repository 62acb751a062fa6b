"""The three worker groups of a run (actor, rollout, reference): built together, torn down together."""

from __future__ import annotations

import logging
from typing import Any, Callable

import ray
from ray.exceptions import RayActorError

from rayrl.failures import gather
from rayrl.workers.actor import ActorWorker
from rayrl.workers.group import WorkerGroup
from rayrl.workers.reference import ReferenceWorker
from rayrl.workers.rollout import RolloutWorker

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0


class Fleet:
    """Owns every worker of a run; the coordinator talks to workers only through this."""

    def __init__(self, cfg: Any, owner: str = "") -> None:
        """``owner``: the coordinator's actor id, which tags the placement groups (group.remove_leftovers)."""
        self.cfg = cfg
        self.actor = WorkerGroup("actor", ActorWorker, cfg.actor.world_size,
                                 cfg.actor.num_cpus_per_worker, cfg.actor.num_gpus_per_worker, owner=owner)
        self.rollout = WorkerGroup("rollout", RolloutWorker, cfg.rollout.num_workers,
                                   cfg.rollout.num_cpus_per_worker, cfg.rollout.num_gpus_per_worker, "SPREAD",
                                   owner=owner)
        self.reference = (WorkerGroup("reference", ReferenceWorker, 1, cfg.reference.num_cpus_per_worker,
                                      cfg.reference.num_gpus_per_worker, owner=owner)
                          if cfg.reference.enabled else None)
        self.where: dict[str, dict[str, Any]] = {}  # label -> {"node", "pid"}, from the start-up pings

    @property
    def groups(self) -> list[WorkerGroup]:
        return [g for g in (self.actor, self.rollout, self.reference) if g is not None]

    def start(self, report: Callable[[str], None] = log.info) -> None:
        """Wait for resources, create every worker and join the actor ranks into one torch group.
        Start-up (processes importing torch, joining the group) is bounded like the wait for resources,
        not by the step timeout: a step is seconds, a cold start on a busy node may be much longer."""
        runner = self.cfg.runner
        for g in self.groups:
            g.wait_ready(runner.resource_wait_s, report)
        cfg = self.cfg
        self.actor.spawn(lambda i: (cfg, i, cfg.actor.world_size))
        self.rollout.spawn(lambda i: (cfg, i))
        if self.reference is not None:
            self.reference.spawn(lambda i: (cfg, i))
        bound = max(runner.step_timeout_s, runner.resource_wait_s)
        labelled = self.labelled()
        pings = {label: w.ping.remote() for label, w in labelled}
        ranks = [f"actor[{i}]" for i in range(self.actor.size)]
        self._locate(ranks, self._gather([pings[r] for r in ranks], ranks, bound))
        single_node = len({self.where[r]["node"] for r in ranks}) == 1
        addr, port = self.wait(self.actor.workers[0].rendezvous_address.remote(single_node), "actor[0]")
        # The ranks build the sharded policy while the other workers are still starting (it overlaps).
        others = [label for label, _ in labelled if label not in ranks]
        results = self._gather(self.actor.call("setup", addr, port) + [pings[lb] for lb in others],
                               ranks + others, bound)
        self._locate(others, results[len(ranks):])

    def _locate(self, labels: list[str], pings: list[dict[str, Any]]) -> None:
        self.where.update({label: {"node": p["node"], "pid": p["pid"]} for label, p in zip(labels, pings)})

    def labelled(self) -> list[tuple[str, ray.actor.ActorHandle]]:
        return [(f"{g.name}[{i}]", w) for g in self.groups for i, w in enumerate(g.workers)]

    def find_dead(self) -> list[str]:
        """Workers whose process or node is gone. Only an error answer means dead: a busy worker (e.g.
        blocked in a collective) does not answer a ping within the probe bound and counts as alive."""
        labelled = self.labelled()
        probes = [w.ping.remote() for _, w in labelled]
        ready, _ = ray.wait(probes, num_returns=len(probes), timeout=PROBE_TIMEOUT_S)
        ready_set = set(ready)
        dead = []
        for (label, _), ref in zip(labelled, probes):
            if ref in ready_set:
                try:
                    ray.get(ref)
                except RayActorError:
                    dead.append(label)
        return dead

    def wait_all(self, refs: list[ray.ObjectRef], group: str, timeout_s: float | None = None) -> list[Any]:
        """Results of one call per worker of ``group`` (ref i is worker i's)."""
        return self._gather(refs, [f"{group}[{i}]" for i in range(len(refs))], timeout_s)

    def wait(self, ref: ray.ObjectRef, label: str) -> Any:
        """The result of one worker's call; ``label`` names the worker, e.g. ``reference[0]``."""
        return self._gather([ref], [label])[0]

    def _gather(self, refs: list[ray.ObjectRef], labels: list[str], timeout_s: float | None = None) -> list[Any]:
        return gather(refs, labels, timeout_s or self.cfg.runner.step_timeout_s, self.find_dead)

    def preemption_notices(self) -> list[str]:
        """Workers that received SIGTERM since they started."""
        labelled = self.labelled()
        pings = self._gather([w.ping.remote() for _, w in labelled], [lb for lb, _ in labelled])
        return [label for (label, _), p in zip(labelled, pings) if p["preemption_notice"]]

    def location(self, label: str) -> dict[str, Any]:
        """Where worker ``label`` ran: its node id and pid (the first of a list such as "actor[0], actor[1]"),
        falling back to its placement-group bundle's node when it failed before answering a ping."""
        first = label.split(",")[0].strip()
        if first in self.where:
            return dict(self.where[first])
        name, _, rest = first.partition("[")
        for g in self.groups:
            if g.name == name and g.pg is not None:
                try:
                    return {"node": g.node_ids()[int(rest.rstrip("]"))], "pid": None}
                except (ValueError, IndexError):
                    break
        return {"node": None, "pid": None}

    def shutdown(self) -> None:
        for g in self.groups:
            g.kill()
