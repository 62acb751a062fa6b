"""Telling infrastructure failures (recover) from program errors (stop), and waiting on workers with a bound."""

from __future__ import annotations

import time
from typing import Any, Callable

import ray
from ray.exceptions import (
    ActorPlacementGroupRemoved,
    GetTimeoutError,
    LocalRayletDiedError,
    NodeDiedError,
    ObjectLostError,
    OutOfMemoryError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)

INFRA_ERRORS = (RayActorError, ObjectLostError, NodeDiedError, WorkerCrashedError, LocalRayletDiedError,
                ActorPlacementGroupRemoved, OutOfMemoryError, GetTimeoutError)


class InfraFailure(Exception):
    """A worker, node or object was lost, or a step hung: recover from the latest checkpoint."""

    def __init__(self, what: str, cause: str, node: str | None = None, preemption: bool = False) -> None:
        super().__init__(f"{what}: {cause}")
        self.what, self.cause, self.node, self.preemption = what, cause, node, preemption


class ProgramError(Exception):
    """An exception raised by rayrl's or the user's code: stop, do not retry."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(f"{what} raised {type(cause).__name__}: {_first_line(cause)}")
        self.what, self.cause = what, cause


def _first_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return text[-1] if text else type(cause).__name__


def gather(refs: list[ray.ObjectRef], labels: list[str], timeout_s: float,
           find_dead: Callable[[], list[str]]) -> list[Any]:
    """Results of ``refs`` in order. Raises InfraFailure on a lost worker/object or a hang past
    ``timeout_s``, ProgramError on an exception in worker code (after checking, with ``find_dead``,
    that no worker died: a peer's death surfaces first as a collective error in the survivors)."""
    pending = dict(zip(refs, labels))
    results: dict[ray.ObjectRef, Any] = {}
    deadline = time.monotonic() + timeout_s
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise InfraFailure(", ".join(sorted(set(pending.values()))),
                               f"no progress within step_timeout_s={timeout_s:g} (hang)")
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=remaining)
        for ref in ready:
            label = pending.pop(ref)
            try:
                results[ref] = ray.get(ref)
            except INFRA_ERRORS as err:
                raise InfraFailure(label, f"{type(err).__name__}: {_first_line(err)}",
                                   preemption=bool(getattr(err, "preempted", False))) from err
            except RayTaskError as err:
                if isinstance(getattr(err, "cause", None), INFRA_ERRORS):
                    raise InfraFailure(label, f"{type(err.cause).__name__}") from err
                dead = find_dead()
                if dead:
                    raise InfraFailure(dead[0], f"died (seen by {label} as {type(err.cause).__name__})") from err
                raise ProgramError(label, err) from err
    return [results[r] for r in refs]
