"""An actor rank that also hosts a rollout engine and the reference (runner.placement colocated).

Each rank generates its share of the step's prompts and gives the reference log-probs of its share of the
rows, in its own process; after every update it gathers the full weights within the actor group and loads
them into its own engine, on the device they are on: nothing crosses the object store or a host copy. On
GPU the engine shares the rank's device (vLLM sleeps while the rank trains: rayrl.engines.vllm).
"""

from __future__ import annotations

from typing import Any

from rayrl.workers.actor import ActorWorker
from rayrl.workers.reference import ReferencePolicy
from rayrl.workers.rollout import Sampler


class ColocatedActorWorker(ActorWorker):
    """Actor rank ``rank``, hosting engine ``rank`` and (reference.enabled) a reference copy."""

    def __init__(self, cfg: Any, rank: int, world_size: int) -> None:
        super().__init__(cfg, rank, world_size)
        self.hosted_roles: dict[str, Any] = {"rollout": Sampler(cfg, rank)}
        if cfg.reference.enabled:
            self.hosted_roles["reference"] = ReferencePolicy(cfg, self.device)

    def hosted(self, role: str, method: str, *args: Any) -> Any:
        """``method`` of the role this process hosts: where the fleet's view of a hosted role sends its calls."""
        return getattr(self.hosted_roles[role], method)(*args)

    def sync_engine(self) -> None:
        """Gather the full weights on every rank (a collective) and load them into this rank's engine."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
        self.hosted_roles["rollout"].load_weights(weights)
        del weights
        self._release_cached_memory()
