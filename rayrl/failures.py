"""Telling infrastructure failures (recover) from program errors (stop), and waiting on workers with a bound."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import ray
from ray.exceptions import (
    ActorPlacementGroupRemoved,
    ActorUnavailableError,
    LocalRayletDiedError,
    NodeDiedError,
    ObjectLostError,
    OutOfMemoryError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)

from rayrl.checkpoint.errors import WorkerLost
from rayrl.data.scoring import RewardError

# ObjectLostError covers OwnerDiedError; RayActorError covers ActorDiedError and ActorUnavailableError.
INFRA_ERRORS = (RayActorError, ObjectLostError, NodeDiedError, WorkerCrashedError, LocalRayletDiedError,
                ActorPlacementGroupRemoved, OutOfMemoryError)
# Errors that say a worker's node (not only its process) is in trouble: recovery moves every worker off it.
NODE_ERRORS = (NodeDiedError, LocalRayletDiedError, ActorUnavailableError)

# After a worker raises, how long to keep watching the other calls for a death before calling it a program
# error: a dead peer shows first as a collective error in the survivors, and a killed raylet's actors answer
# ActorUnavailableError only after ~2-3 s. Only a real program error (the run is ending) pays this wait.
PEER_GRACE_S = 10.0


@dataclass(frozen=True)
class WorkerId:
    """One worker (``index`` its rank or number in its role) or, with no index, a whole role's group."""

    role: str
    index: int | None = None

    def __str__(self) -> str:  # how logs and events name it: actor[1], or actor for the group
        return self.role if self.index is None else f"{self.role}[{self.index}]"

    def sort_key(self) -> tuple[str, int]:
        return self.role, -1 if self.index is None else self.index


class InfraFailure(WorkerLost):
    """A worker, node or object was lost, or a step hung: recover from the latest checkpoint.

    ``workers`` are the workers (or a role's group) that failed; ``node_lost``: the error says their node,
    not only their process, is gone or going (a preemption notice, an unreachable raylet), so no worker
    of that node is kept."""

    def __init__(self, workers: WorkerId | Sequence[WorkerId], cause: str, node: str | None = None,
                 preemption: bool = False, node_lost: bool = False) -> None:
        self.workers = (workers,) if isinstance(workers, WorkerId) else tuple(workers)
        super().__init__(f"{self.what}: {cause}")
        self.cause, self.node, self.preemption = cause, node, preemption
        self.node_lost = node_lost or preemption

    @property
    def what(self) -> str:
        """The failed workers as logs and events name them: ``actor[0], actor[1]``."""
        return ", ".join(str(w) for w in self.workers)

    def __reduce__(self):  # the constructor's arguments, not the message: Ray pickles exceptions
        return type(self), (self.workers, self.cause, self.node, self.preemption, self.node_lost)


class ResourcesUnavailable(InfraFailure):
    """A group's resources were not available within runner.resource_wait_s (its workers are a role's
    group): a failed recovery, or, for an elastic group, the moment to continue smaller (rayrl.elastic)."""


class ProgramError(Exception):
    """An exception raised by rayrl's or the user's code: stop, do not retry."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(f"{what} raised {type(_unwrapped(cause)).__name__}: {_last_line(cause)}")
        self.what, self.cause = what, cause

    def __reduce__(self):  # reaches the driver inside the coordinator's RayTaskError
        return type(self), (self.what, self.cause)


def _unwrapped(err: BaseException) -> BaseException:
    return getattr(err, "cause", None) or err


def _last_line(err: BaseException, limit: int = 240) -> str:
    """The informative line of a (possibly remote, multi-line) error message, without Ray's generic advice.
    A reward function's error is one line written for the user (it shows the sample): kept whole."""
    if isinstance(_unwrapped(err), RewardError):
        return str(_unwrapped(err))
    lines = str(_unwrapped(err)).strip().splitlines()
    text = lines[-1].strip() if lines else type(_unwrapped(err)).__name__
    text = text.split(" Some common causes include")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def classify(worker: WorkerId, err: BaseException) -> InfraFailure | ProgramError:
    """What an error from ``ray.get`` on ``worker``'s call means for the run."""
    if isinstance(err, RayActorError) and err.actor_init_failed:  # its __init__ raised: code, not machines
        return ProgramError(str(worker), err)
    if isinstance(err, INFRA_ERRORS):
        return InfraFailure(worker, f"{type(err).__name__}: {_last_line(err)}",
                            preemption=bool(getattr(err, "preempted", False)),
                            node_lost=isinstance(err, NODE_ERRORS))
    if isinstance(err, RayTaskError) and isinstance(err.cause, INFRA_ERRORS):
        return InfraFailure(worker, f"{type(err.cause).__name__} inside the call: {_last_line(err.cause)}",
                            node_lost=isinstance(err.cause, NODE_ERRORS))
    return ProgramError(str(worker), err)


def check_finite(metrics: dict[str, float], step: int) -> None:
    """A non-finite loss or gradient norm is a program error (diverged training, bad data): retrying from
    the last checkpoint would diverge the same way, so stop, and name the step."""
    bad = {k: metrics[k] for k in ("loss", "grad_norm") if k in metrics and not math.isfinite(metrics[k])}
    if bad:
        raise ProgramError(f"step {step}", FloatingPointError(
            f"non-finite {', '.join(f'{k}={v}' for k, v in bad.items())} (diverged? lower actor.optim.lr)"))


def gather(refs: list[ray.ObjectRef], workers: Sequence[WorkerId], timeout_s: float,
           find_dead: Callable[[], list[WorkerId]], grace_s: float = PEER_GRACE_S,
           timeout_key: str = "runner.step_timeout_s", doing: str = "hang") -> list[Any]:
    """Results of ``refs`` in order (ref i is a call on ``workers[i]``).

    Raises InfraFailure as soon as a call fails for a lost worker, node or object (ActorUnavailableError
    included: the call is lost either way, so there is nothing to gain from waiting for the GCS to declare
    the node dead), or when calls make no progress within ``timeout_s`` (a hang; the failure names the config
    key ``timeout_key`` that set the bound and what was ``doing``). Raises ProgramError for an
    exception in worker code, but only after ``grace_s`` in which no other call failed for infrastructure
    and ``find_dead`` found no dead worker.
    """
    pending = dict(zip(refs, workers))
    results: dict[ray.ObjectRef, Any] = {}
    deadline = time.monotonic() + timeout_s
    program_error: ProgramError | None = None
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=remaining)
        for ref in ready:
            worker = pending.pop(ref)
            try:
                results[ref] = ray.get(ref)
            except Exception as err:  # noqa: BLE001 - classified below
                verdict = classify(worker, err)
                if isinstance(verdict, InfraFailure):
                    if program_error is not None:
                        verdict.cause += f" (seen first by {program_error})"
                    raise verdict from err
                if program_error is None:
                    program_error = verdict
                    deadline = min(deadline, time.monotonic() + grace_s)
    if program_error is not None:
        dead = find_dead()
        if dead:
            raise InfraFailure(dead[0], f"worker lost (seen first by {program_error})") from program_error.cause
        raise program_error from program_error.cause
    if pending:
        raise InfraFailure(sorted(set(pending.values()), key=WorkerId.sort_key),
                           f"no progress within {timeout_key}={timeout_s:g} s ({doing})")
    return [results[r] for r in refs]
