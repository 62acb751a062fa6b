"""The three worker groups of a run (actor, rollout, reference): built together; after a failure only the
groups that lost a worker (or sit on a lost node) are replaced, the others are kept and reloaded."""

from __future__ import annotations

import logging
from typing import Any, Callable

import ray
from ray.exceptions import RayActorError

from rayrl.failures import InfraFailure, gather
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
        self.cfg, self.owner = cfg, owner
        self.actor = self._new_group("actor")
        self.rollout = self._new_group("rollout")
        self.reference = self._new_group("reference") if cfg.reference.enabled else None
        self.where: dict[str, dict[str, Any]] = {}  # label -> {"node", "pid"}, from the start-up pings

    def _new_group(self, name: str) -> WorkerGroup:
        """A group of role ``name`` with its placement group requested and no workers yet (see start)."""
        cfg = self.cfg
        role = getattr(cfg, name)
        size = {"actor": cfg.actor.world_size, "rollout": cfg.rollout.num_workers, "reference": 1}[name]
        return WorkerGroup(name, _CLASSES[name], size, role.num_cpus_per_worker, role.num_gpus_per_worker,
                           "SPREAD" if name == "rollout" else "PACK", owner=self.owner)

    @property
    def groups(self) -> list[WorkerGroup]:
        return [g for g in (self.actor, self.rollout, self.reference) if g is not None]

    def start(self, report: Callable[[str], None] = log.info) -> None:
        """Wait for resources, create the workers of every group that has none (all of them at first, the
        replaced ones after a failure) and, when the actor ranks are new, join them into one torch group.
        Start-up (processes importing torch, joining the group) is bounded like the wait for resources,
        not by the step timeout: a step is seconds, a cold start on a busy node may be much longer."""
        runner, cfg = self.cfg.runner, self.cfg
        new = [g for g in self.groups if not g.workers]
        for g in new:
            g.wait_ready(runner.resource_wait_s, report)
        for g in new:
            g.spawn(lambda i, g=g: (cfg, i, g.size) if g.name == "actor" else (cfg, i))
        bound = max(runner.step_timeout_s, runner.resource_wait_s)
        key = "runner.step_timeout_s" if bound == runner.step_timeout_s else "runner.resource_wait_s"
        new_names = {g.name for g in new}
        labelled = [(label, w) for label, w in self.labelled() if _group_of(label) in new_names]
        pings = {label: w.ping.remote() for label, w in labelled}
        ranks = [f"actor[{i}]" for i in range(self.actor.size)] if self.actor in new else []
        calls: list[ray.ObjectRef] = []
        if ranks:
            self._locate(ranks, self._gather([pings[r] for r in ranks], ranks, bound, key, "start-up"))
            single_node = len({self.where[r]["node"] for r in ranks}) == 1
            addr, port = self.wait(self.actor.workers[0].rendezvous_address.remote(single_node), "actor[0]")
            calls = self.actor.call("setup", addr, port)  # builds the sharded policy while the others start
        others = [label for label, _ in labelled if label not in ranks]
        results = self._gather(calls + [pings[lb] for lb in others], ranks + others, bound, key, "start-up")
        self._locate(others, results[len(calls):])

    def failed_groups(self, failure: InfraFailure) -> set[str]:
        """The groups to replace after ``failure``: those of the failed workers, of any worker found dead
        now, and of every worker on a node that is gone or going (a lost node, a preemption notice).
        Everything when the failure names no group of this fleet."""
        names = {g.name for g in self.groups}
        labels = failure.labels()
        failed = {_group_of(label) for label in labels}
        if not failed or not failed <= names:
            return names
        failed |= {_group_of(label) for label in self.find_dead(skip=failed)}
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        lost = {info["node"] for info in self.where.values() if info["node"] not in alive}
        if failure.node_lost:
            lost |= {self.location(label)["node"] for label in labels} | ({failure.node} if failure.node else set())
        failed |= {_group_of(label) for label, info in self.where.items() if info["node"] in lost}
        return failed

    def replace(self, names: set[str]) -> None:
        """Kill the groups ``names`` and put new, empty ones in their place (``start`` brings them up)."""
        for name in sorted(names):
            getattr(self, name).kill()
            setattr(self, name, self._new_group(name))
        self.where = {label: info for label, info in self.where.items() if _group_of(label) not in names}

    def _locate(self, labels: list[str], pings: list[dict[str, Any]]) -> None:
        self.where.update({label: {"node": p["node"], "pid": p["pid"]} for label, p in zip(labels, pings)})

    def labelled(self) -> list[tuple[str, ray.actor.ActorHandle]]:
        return [(f"{g.name}[{i}]", w) for g in self.groups for i, w in enumerate(g.workers)]

    def find_dead(self, skip: set[str] = frozenset()) -> list[str]:
        """Workers whose process or node is gone (groups in ``skip`` not probed). Only an error answer
        means dead: a busy worker (e.g. blocked in a collective) does not answer a ping within the probe
        bound and counts as alive."""
        labelled = [(label, w) for label, w in self.labelled() if _group_of(label) not in skip]
        if not labelled:
            return []
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

    def wait_all(self, refs: list[ray.ObjectRef], group: str) -> list[Any]:
        """Results of one call per worker of ``group`` (ref i is worker i's), within runner.step_timeout_s."""
        return self._gather(refs, [f"{group}[{i}]" for i in range(len(refs))])

    def wait_checkpoint(self, refs: list[ray.ObjectRef], group: str, doing: str) -> list[Any]:
        """``wait_all`` for checkpoint I/O (``doing``: what, for the error), bounded by its own
        runner.checkpoint.timeout_s: loading or writing a large state may take far longer than a step."""
        timeout_s = self.cfg.runner.checkpoint.timeout_s
        return self._gather(refs, [f"{group}[{i}]" for i in range(len(refs))], timeout_s,
                            "runner.checkpoint.timeout_s", doing)

    def wait(self, ref: ray.ObjectRef, label: str) -> Any:
        """The result of one worker's call; ``label`` names the worker, e.g. ``reference[0]``."""
        return self._gather([ref], [label])[0]

    def _gather(self, refs: list[ray.ObjectRef], labels: list[str], timeout_s: float | None = None,
                timeout_key: str = "runner.step_timeout_s", doing: str = "hang") -> list[Any]:
        return gather(refs, labels, timeout_s or self.cfg.runner.step_timeout_s, self.find_dead,
                      timeout_key=timeout_key, doing=doing)

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


_CLASSES = {"actor": ActorWorker, "rollout": RolloutWorker, "reference": ReferenceWorker}


def _group_of(label: str) -> str:
    """The group of a worker label: ``actor`` for ``actor[1]`` (and for ``actor`` itself)."""
    return label.split("[")[0]
