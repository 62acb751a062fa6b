"""The worker groups of a run, one per role of ``roles.role_specs`` (actor, rollout, reference) that has
processes of its own (a role hosted by another lives and dies with its host's): built together; after a
failure only the groups that lost a worker (or sit on a lost node) are replaced, by standbys or new
processes (rayrl.recovery.replacement_plan decides), the others are kept and reloaded."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import ray
from ray.exceptions import RayActorError

from rayrl.failures import InfraFailure, WorkerId, gather
from rayrl.recovery import NEW_PROCESS, STANDBY
from rayrl.workers.group import HostedGroup, WorkerGroup
from rayrl.workers.roles import ACTOR, REFERENCE, ROLLOUT, RoleSpec, role_specs
from rayrl.workers.weight_sync import choose_paths
from rayrl.workers.standby import Standbys

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
# How long after a loss a kept member of its process group may take to answer: one whose collective the lost
# peer broke answers within a second once that collective fails (see Fleet._stuck_in_collective).
STUCK_GRACE_S = 10.0


class Fleet:
    """Owns every worker of a run; the coordinator talks to workers only through this."""

    def __init__(self, cfg: Any, owner: str = "", sizes: dict[str, int] | None = None,
                 emit: Callable[..., None] | None = None) -> None:
        """``owner``: the coordinator's actor id, which tags the placement groups (group.remove_leftovers);
        ``sizes``: workers per role where not the configured number (an elastic run below its size);
        ``emit``: where the standbys' events go (events.jsonl)."""
        self.cfg, self.owner = cfg, owner
        self.specs = {spec.name: spec for spec in role_specs(cfg) if spec.enabled(cfg)}
        self.sizes = {name: spec.size(cfg) for name, spec in self.specs.items()} | (sizes or {})
        self._groups = {name: self._new_group(spec) for name, spec in self.specs.items() if spec.host is None}
        # worker -> {"node", "pid", "device": its weight_sync.device_info}, from the start-up pings
        self.where: dict[WorkerId, dict[str, Any]] = {}
        # split placement: each rollout engine's weight-sync path and why (rayrl.workers.weight_sync), per start
        self.weight_paths: list[tuple[str, str]] | None = None
        self.standbys = Standbys(cfg, self.specs, emit or (lambda event, message, **fields: log.info(message)))
        self._reform: set[str] = set()  # groups whose process group is re-formed at the next start
        self._pings: dict[WorkerId, tuple[ray.actor.ActorHandle, ray.ObjectRef]] = {}  # unanswered notice pings
        self.group_s = 0.0  # how long the last start took to form process groups (their ranks up, joined, built)

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
        if not self.standbys.started:  # with the fleet, importing while it starts; later ones at step ends
            self.standbys.top_up(self._groups, self.where)
        bound = max(runner.step_timeout_s, runner.resource_wait_s)
        joining = {g.name for g in new} | self._reform  # new groups, and groups a standby joined
        workers = [(wid, w) for wid, w in self.workers() if wid.role in joining or wid not in self.where]
        pings = {wid: w.ping.remote() for wid, w in workers}
        calls: list[ray.ObjectRef] = []
        ranks: list[WorkerId] = []
        t0 = time.perf_counter()
        for g in self.groups:
            if g.name in joining and self.specs[g.name].process_group:  # join once all are up
                calls += self._join_process_group(g, pings, bound)
                ranks += [WorkerId(g.name, i) for i in range(g.size)]
        self._gather(calls, ranks, bound)  # the other workers go on starting meanwhile
        self.group_s = time.perf_counter() - t0 if calls else 0.0
        others = [wid for wid, _ in workers if wid not in ranks]
        self._locate(others, self._gather([pings[wid] for wid in others], others, bound))
        self._reform.clear()
        if self.host_of(ROLLOUT) is None:
            self.weight_paths = self._choose_weight_paths()
        return {wid.role for wid, _ in workers}

    def tend_standbys(self) -> None:
        """At a step boundary: replace the standbys that took a place or were lost while idle (so that they
        do not slow a recovery down); nothing waits for them."""
        self.standbys.tend(self._groups, self.where)

    def _choose_weight_paths(self) -> list[tuple[str, str]]:
        """Each rollout engine's weight-sync path, from where it and actor rank 0 run and what they see."""
        def info(worker: WorkerId) -> dict[str, Any]:
            return {"node": self.where[worker]["node"], **self.where[worker]["device"]}

        source = info(WorkerId(ACTOR, 0))
        if source["device"] == "cpu":  # host shared memory must have room for the weights
            source.update(self.wait(self.actor.workers[0].shared_memory_room.remote(), WorkerId(ACTOR, 0)))
        engines = [info(WorkerId(ROLLOUT, i)) for i in range(self.rollout.size)]
        return choose_paths(source, engines, self.cfg.rollout.backend, self.cfg.rollout.tensor_parallel_size)

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

    def lost_workers(self, failure: InfraFailure) -> dict[str, set[int] | None]:
        """The workers ``failure`` took down, per group: the failed workers, any found dead now, and every
        worker on a node that is gone or going (a lost node, a preemption notice). A group's None: all of
        it (the failure named the group, not a worker). Every group when the failure names none of this
        fleet's. Groups with standbys are probed whole, to tell which of their workers survived (and which
        are stuck in a collective with a lost peer: ``_stuck_in_collective``)."""
        names = {g.name for g in self.groups}
        failed = [self._in_group(w) for w in failure.workers]
        if not failed or not {w.role for w in failed} <= names:
            return dict.fromkeys(names)
        lost: dict[str, set[int] | None] = {}

        def add(worker: WorkerId) -> None:
            if worker.index is None:
                lost[worker.role] = None
            elif lost.get(worker.role, set()) is not None:
                lost.setdefault(worker.role, set()).add(worker.index)

        for worker in failed:
            add(worker)
        dead, silent = self._probe(skip={role for role in lost if role not in self.standbys.targets})
        for worker in dead:
            add(worker)
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        gone = {info["node"] for info in self.where.values() if info["node"] not in alive}
        if failure.node_lost:
            gone |= {self.location((w,))["node"] for w in failure.workers} | ({failure.node} if failure.node else set())
        for worker, info in list(self.where.items()):
            if info["node"] in gone:
                add(worker)
        for worker in self._stuck_in_collective(silent, lost):
            add(worker)
        return lost

    def _stuck_in_collective(self, silent: dict[WorkerId, ray.ObjectRef],
                             lost: dict[str, set[int] | None]) -> list[WorkerId]:
        """The kept members of a process group that lost a member and that still have not answered their
        probe STUCK_GRACE_S after it was sent: blocked in a collective with the lost peer. A killed process's
        sockets close and its peers' collectives fail at once; a machine that is gone (power, network) closes
        nothing, and its peers would sit in the collective until the group's timeout (the checkpoint bound,
        rayrl.workers.actor) before they could re-form the group. They are lost too: replaced, their node's
        memory copies still usable."""
        waiting = {w: ref for w, ref in silent.items()
                   if self.specs[w.role].process_group and lost.get(w.role) and w.index not in lost[w.role]}
        if not waiting:
            return []
        ready, _ = ray.wait(list(waiting.values()), num_returns=len(waiting), timeout=STUCK_GRACE_S - PROBE_TIMEOUT_S)
        stuck = [w for w, ref in waiting.items() if ref not in ready or _failed(ref)]
        for worker in stuck:
            log.warning("%s has not left its collective %g s after its peer was lost (a lost machine closes no "
                        "socket): replaced too", worker, STUCK_GRACE_S)
        return stuck

    def replace(self, plan: dict[str, str], lost: dict[str, set[int] | None]) -> None:
        """Make the groups of ``plan`` whole: ``standby``, its lost workers' places taken by standbys (the
        group's other workers kept; a process group is re-formed at ``start``); else the group killed and
        new, empty one put in its place (``start`` brings it up)."""
        for name, how in sorted(plan.items()):
            group = self._groups[name]
            if how == STANDBY:
                self._take_standbys(group, sorted(lost[name] or ()))
                continue
            self.standbys.release(group)
            group.kill()
            self._groups[name] = self._new_group(self.specs[name])
            self.where = {w: info for w, info in self.where.items() if w.role != name}

    def replace_workers(self, role: str, indices: list[int], how: str) -> None:
        """In the job, new workers in the places ``indices`` of the group of ``role`` (its other workers kept):
        ready standbys (``how`` STANDBY) or new processes in the lost workers' reservations, brought up
        (and located) as at any start."""
        group = self._groups[role]
        if how == STANDBY:
            self._take_standbys(group, indices)
        else:
            for index in indices:
                group.respawn(index, self.specs[role].args(self.cfg, index, group.size))
                self.where.pop(WorkerId(role, index), None)
        self.start()

    def _take_standbys(self, group: WorkerGroup, indices: list[int]) -> None:
        """Standbys in the places ``indices`` of ``group``; the lost workers' bundles are freed for the next."""
        for index, spare in zip(indices, self.standbys.take(group.name, len(indices)), strict=True):
            try:
                ray.kill(group.workers[index], no_restart=True)
            except Exception:  # noqa: BLE001 -- already dead
                pass
            if group.bundle_of[index] is not None:
                group.vacated.append(group.bundle_of[index])
            group.bundle_of[index] = spare.bundle if spare.pg is group.pg else None
            spare.handle.assume.remote(index)  # before any later call: a caller's calls run in order
            group.workers[index] = spare.handle
            self.where.pop(WorkerId(group.name, index), None)
        if self.specs[group.name].process_group:
            self._reform.add(group.name)

    def resize(self, sizes: dict[str, int]) -> None:
        """Replace each group whose size ``sizes`` changes with a new, empty one of that size."""
        changed = {name for name, size in sizes.items() if name in self._groups and self._groups[name].size != size}
        self.sizes.update(sizes)
        self.replace(dict.fromkeys(changed, NEW_PROCESS), {})

    def _locate(self, workers: list[WorkerId], pings: list[dict[str, Any]]) -> None:
        self.where.update({w: {"node": p["node"], "pid": p["pid"], "device": p["device"]} for w, p in zip(workers, pings)})

    def workers(self) -> list[tuple[WorkerId, ray.actor.ActorHandle]]:
        return [(WorkerId(g.name, i), w) for g in self.groups for i, w in enumerate(g.workers)]

    def find_dead(self, skip: set[str] = frozenset(), among: list[WorkerId] | None = None) -> list[WorkerId]:
        """Workers whose process or node is gone (roles in ``skip`` not probed; only ``among`` when given).
        Only an error answer means dead: a busy worker (e.g. blocked in a collective) does not answer a
        ping within the probe bound and counts as alive."""
        return self._probe(skip, among)[0]

    def _probe(self, skip: set[str], among: list[WorkerId] | None = None
               ) -> tuple[list[WorkerId], dict[WorkerId, ray.ObjectRef]]:
        """``find_dead``'s dead workers, and the probes not answered within PROBE_TIMEOUT_S."""
        workers = [(wid, w) for wid, w in self.workers()
                   if wid.role not in skip and (among is None or wid in among)]
        probes = [w.ping.remote() for _, w in workers]
        ready = set(ray.wait(probes, num_returns=len(probes), timeout=PROBE_TIMEOUT_S)[0]) if probes else set()
        dead = [wid for (wid, _), ref in zip(workers, probes) if ref in ready and _failed(ref, RayActorError)]
        return dead, {wid: ref for (wid, _), ref in zip(workers, probes) if ref not in ready}

    def wait_all(self, refs: list[ray.ObjectRef], role: str, indices: list[int] | None = None) -> list[Any]:
        """Results of one call per worker of ``role`` (ref i is worker i's, or worker ``indices[i]``'s), within
        runner.step_timeout_s."""
        return self._gather(refs, [WorkerId(role, i) for i in (range(len(refs)) if indices is None else indices)])

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

    def preemption_notices(self, busy: frozenset[str] = frozenset()) -> list[WorkerId]:
        """Workers that received SIGTERM since they started. A worker answers a ping only after the calls
        queued before it: those of the roles in ``busy`` (rollout workers generating ahead of training) are
        not waited for, their ping is kept and read at a later step boundary, once answered, so that the loop
        does not stall on a generation in flight (a lost worker is found by the call it was running). A
        rollout worker found dead here is left to the rollout pipeline, which replaces it in the job when it
        next waits for it (rayrl.regenerate)."""
        pings = {}
        for wid, worker in self.workers():
            handle, ping = self._pings.pop(wid, (None, None))
            pings[wid] = ping if handle is worker else worker.ping.remote()  # not one for a replaced worker's
        waited = [wid for wid in pings if wid.role not in busy]
        answered = [wid for wid in pings if wid.role in busy and ray.wait([pings[wid]], timeout=0)[0]]
        self._pings = {wid: (worker, pings[wid]) for wid, worker in self.workers()
                       if wid not in waited and wid not in answered}
        asked = waited + answered
        while True:
            try:
                replies = self._gather([pings[wid] for wid in asked], asked)
                return [wid for wid, reply in zip(asked, replies) if reply["preemption_notice"]]
            except InfraFailure as failure:
                lost = set(failure.workers)
                if any(w.role != ROLLOUT for w in lost) or not lost <= set(self.find_dead(among=list(lost))):
                    raise
                asked = [wid for wid in asked if wid not in lost]

    def location(self, workers: tuple[WorkerId, ...]) -> dict[str, Any]:
        """Where the first of ``workers`` ran: its node id and pid, falling back to its placement-group
        bundle's node when it failed before answering a ping (none for a whole group)."""
        first = self._in_group(workers[0]) if workers else None
        if first in self.where:
            return {"node": self.where[first]["node"], "pid": self.where[first]["pid"]}
        group = self._groups.get(first.role) if first is not None else None
        if group is not None and group.pg is not None and first.index is not None:
            nodes = group.node_ids()
            if first.index < len(nodes):
                return {"node": nodes[first.index], "pid": None}
        return {"node": None, "pid": None}

    def shutdown(self) -> None:
        self.standbys.shutdown()
        for g in self.groups:
            g.kill()


def _failed(ref: ray.ObjectRef, errors: type[BaseException] | tuple = Exception) -> bool:
    """Whether a finished call ``ref`` raised one of ``errors`` (its worker lost, for RayActorError)."""
    try:
        ray.get(ref)
    except errors:
        return True
    return False
