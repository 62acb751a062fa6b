"""The worker groups of a run, one per role of ``roles.role_specs`` (actor, rollout, reference) that has
processes of its own (a role hosted by another lives and dies with its host's): built together; after a
failure only the groups that lost a worker (or sit on a lost node) are replaced, the others are kept and
reloaded."""

from __future__ import annotations

import logging
from typing import Any, Callable

import ray
from ray.exceptions import RayActorError

from rayrl.failures import InfraFailure, WorkerId, gather
from rayrl.workers.group import HostedGroup, WorkerGroup
from rayrl.workers.roles import ACTOR, REFERENCE, ROLLOUT, RoleSpec, role_specs

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0


class Fleet:
    """Owns every worker of a run; the coordinator talks to workers only through this."""

    def __init__(self, cfg: Any, owner: str = "", sizes: dict[str, int] | None = None) -> None:
        """``owner``: the coordinator's actor id, which tags the placement groups (group.remove_leftovers);
        ``sizes``: workers per role where not the configured number (an elastic run below its size)."""
        self.cfg, self.owner = cfg, owner
        self.specs = {spec.name: spec for spec in role_specs(cfg) if spec.enabled(cfg)}
        self.sizes = {name: spec.size(cfg) for name, spec in self.specs.items()} | (sizes or {})
        self._groups = {name: self._new_group(spec) for name, spec in self.specs.items() if spec.host is None}
        self.where: dict[WorkerId, dict[str, Any]] = {}  # worker -> {"node", "pid"}, from the start-up pings

    def _new_group(self, spec: RoleSpec) -> WorkerGroup:
        """A group of role ``spec`` with its placement group requested and no workers yet (see start)."""
        cpus, gpus = spec.resources(self.cfg)
        return WorkerGroup(spec.name, spec.cls, self.sizes[spec.name], cpus, gpus, spec.strategy, owner=self.owner)

    @property
    def groups(self) -> list[WorkerGroup]:
        return list(self._groups.values())

    @property
    def actor(self) -> WorkerGroup:
        return self._groups[ACTOR]

    @property
    def rollout(self) -> WorkerGroup | HostedGroup:
        return self._role(ROLLOUT)

    @property
    def reference(self) -> WorkerGroup | HostedGroup | None:
        return self._role(REFERENCE) if REFERENCE in self.specs else None

    def host_of(self, role: str) -> str | None:
        """The role whose processes host ``role`` (None: it has its own)."""
        return self.specs[role].host

    def _role(self, name: str) -> WorkerGroup | HostedGroup:
        host = self.host_of(name)
        return self._groups[name] if host is None else HostedGroup(name, self._groups[host])

    def _in_group(self, worker: WorkerId) -> WorkerId:
        """The worker whose process ``worker`` runs in: itself, or its host's worker of the same index."""
        spec = self.specs.get(worker.role)
        return worker if spec is None or spec.host is None else WorkerId(spec.host, worker.index)

    def start(self, report: Callable[[str], None] = log.info) -> set[str]:
        """Wait for resources, create the workers of every group that has none (all of them at first, the
        replaced ones after a failure) and, when the actor ranks are new, join them into one torch group;
        the names of the groups brought up.
        Start-up (processes importing torch, joining the group) is bounded like the wait for resources,
        not by the step timeout: a step is seconds, a cold start on a busy node may be much longer."""
        runner, cfg = self.cfg.runner, self.cfg
        new = [g for g in self.groups if not g.workers]
        for g in new:
            g.wait_ready(runner.resource_wait_s, report)
        for g in new:
            g.spawn(lambda i, g=g: self.specs[g.name].args(cfg, i, g.size))
        bound = max(runner.step_timeout_s, runner.resource_wait_s)
        new_names = {g.name for g in new}
        workers = [(wid, w) for wid, w in self.workers() if wid.role in new_names]
        pings = {wid: w.ping.remote() for wid, w in workers}
        calls: list[ray.ObjectRef] = []
        ranks: list[WorkerId] = []
        for g in new:
            if self.specs[g.name].process_group:  # join once all are up; builds while the others start
                calls += self._join_process_group(g, pings, bound)
                ranks += [WorkerId(g.name, i) for i in range(g.size)]
        others = [wid for wid, _ in workers if wid not in ranks]
        results = self._gather(calls + [pings[wid] for wid in others], ranks + others, bound)
        self._locate(others, results[len(calls):])
        return new_names

    def read_storage_marker(self, path: str, nonce: str, roles: set[str]) -> dict[WorkerId, dict[str, Any]]:
        """Every worker of ``roles`` reads the storage marker back: worker -> {problem, node, ip}."""
        workers = [(wid, w) for wid, w in self.workers() if wid.role in roles]
        answers = self._gather([w.read_storage_marker.remote(path, nonce) for _, w in workers],
                               [wid for wid, _ in workers])
        return {wid: answer for (wid, _), answer in zip(workers, answers)}

    def _join_process_group(self, group: WorkerGroup, pings: dict[WorkerId, ray.ObjectRef],
                            bound: float) -> list[ray.ObjectRef]:
        """Start ``setup`` on every rank of ``group`` (its torch.distributed group; bound to 127.0.0.1 when all
        ranks share one node); the calls, not yet waited for."""
        ranks = [WorkerId(group.name, i) for i in range(group.size)]
        self._locate(ranks, self._gather([pings[r] for r in ranks], ranks, bound))
        single_node = len({self.where[r]["node"] for r in ranks}) == 1
        addr, port = self.wait(group.workers[0].rendezvous_address.remote(single_node), ranks[0])
        return group.call("setup", addr, port)

    def failed_groups(self, failure: InfraFailure) -> set[str]:
        """The groups to replace after ``failure``: those of the failed workers, of any worker found dead
        now, and of every worker on a node that is gone or going (a lost node, a preemption notice).
        Everything when the failure names no group of this fleet."""
        names = {g.name for g in self.groups}
        failed = {self._in_group(w).role for w in failure.workers}
        if not failed or not failed <= names:
            return names
        failed |= {w.role for w in self.find_dead(skip=failed)}
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        lost = {info["node"] for info in self.where.values() if info["node"] not in alive}
        if failure.node_lost:
            lost |= {self.location((w,))["node"] for w in failure.workers} | ({failure.node} if failure.node else set())
        failed |= {w.role for w, info in self.where.items() if info["node"] in lost}
        return failed

    def replace(self, names: set[str]) -> None:
        """Kill the groups ``names`` and put new, empty ones in their place (``start`` brings them up)."""
        for name in sorted(names):
            self._groups[name].kill()
            self._groups[name] = self._new_group(self.specs[name])
        self.where = {w: info for w, info in self.where.items() if w.role not in names}

    def resize(self, sizes: dict[str, int]) -> None:
        """Replace each group whose size ``sizes`` changes with a new, empty one of that size."""
        changed = {name for name, size in sizes.items() if name in self._groups and self._groups[name].size != size}
        self.sizes.update(sizes)
        self.replace(changed)

    def _locate(self, workers: list[WorkerId], pings: list[dict[str, Any]]) -> None:
        self.where.update({w: {"node": p["node"], "pid": p["pid"]} for w, p in zip(workers, pings)})

    def workers(self) -> list[tuple[WorkerId, ray.actor.ActorHandle]]:
        return [(WorkerId(g.name, i), w) for g in self.groups for i, w in enumerate(g.workers)]

    def find_dead(self, skip: set[str] = frozenset()) -> list[WorkerId]:
        """Workers whose process or node is gone (roles in ``skip`` not probed). Only an error answer
        means dead: a busy worker (e.g. blocked in a collective) does not answer a ping within the probe
        bound and counts as alive."""
        workers = [(wid, w) for wid, w in self.workers() if wid.role not in skip]
        if not workers:
            return []
        probes = [w.ping.remote() for _, w in workers]
        ready, _ = ray.wait(probes, num_returns=len(probes), timeout=PROBE_TIMEOUT_S)
        ready_set = set(ready)
        dead = []
        for (wid, _), ref in zip(workers, probes):
            if ref in ready_set:
                try:
                    ray.get(ref)
                except RayActorError:
                    dead.append(wid)
        return dead

    def wait_all(self, refs: list[ray.ObjectRef], role: str) -> list[Any]:
        """Results of one call per worker of ``role`` (ref i is worker i's), within runner.step_timeout_s."""
        return self._gather(refs, [WorkerId(role, i) for i in range(len(refs))])

    def wait_checkpoint(self, refs: list[ray.ObjectRef], role: str, doing: str) -> list[Any]:
        """``wait_all`` for checkpoint I/O (``doing``: what, for the error), bounded by its own
        runner.checkpoint.timeout_s: loading or writing a large state may take far longer than a step."""
        return self._gather(refs, [WorkerId(role, i) for i in range(len(refs))],
                            self.cfg.runner.checkpoint.timeout_s, "runner.checkpoint.timeout_s", doing)

    def wait(self, ref: ray.ObjectRef, worker: WorkerId) -> Any:
        """The result of one worker's call."""
        return self._gather([ref], [worker])[0]

    def _gather(self, refs: list[ray.ObjectRef], workers: list[WorkerId], timeout_s: float | None = None,
                timeout_key: str = "runner.step_timeout_s", doing: str = "hang") -> list[Any]:
        return gather(refs, workers, timeout_s or self.cfg.runner.step_timeout_s, self.find_dead,
                      timeout_key=timeout_key, doing=doing)

    def preemption_notices(self) -> list[WorkerId]:
        """Workers that received SIGTERM since they started."""
        workers = self.workers()
        pings = self._gather([w.ping.remote() for _, w in workers], [wid for wid, _ in workers])
        return [wid for (wid, _), p in zip(workers, pings) if p["preemption_notice"]]

    def location(self, workers: tuple[WorkerId, ...]) -> dict[str, Any]:
        """Where the first of ``workers`` ran: its node id and pid, falling back to its placement-group
        bundle's node when it failed before answering a ping (none for a whole group)."""
        first = self._in_group(workers[0]) if workers else None
        if first in self.where:
            return dict(self.where[first])
        group = self._groups.get(first.role) if first is not None else None
        if group is not None and group.pg is not None and first.index is not None:
            nodes = group.node_ids()
            if first.index < len(nodes):
                return {"node": nodes[first.index], "pid": None}
        return {"node": None, "pid": None}

    def shutdown(self) -> None:
        for g in self.groups:
            g.kill()
