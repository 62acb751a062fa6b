"""The reference: a frozen copy of the initial policy that gives reference log-probs for the KL term.

``ReferencePolicy`` is the role itself, plain Python, hosted by a ``ReferenceWorker`` of its own
(runner.placement split) or by each actor rank for its own rows (colocated, rayrl.workers.colocated).
"""

from __future__ import annotations

from typing import Any

import torch

from rayrl.models.forward import response_logprobs
from rayrl.workers.base import WorkerBase


class ReferencePolicy:
    """Stateless beyond its initial weights, so a checkpoint needs nothing from it."""

    def __init__(self, cfg: Any, device: torch.device) -> None:
        from rayrl.models.loading import load_model_and_tokenizer  # transformers: only in worker processes

        self.micro_batch_size = cfg.actor.micro_batch_size
        self.model, _ = load_model_and_tokenizer(cfg.actor.model, cfg.runner.seed)
        self.model.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def logprobs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return response_logprobs(self.model, batch["prompt_ids"], batch["prompt_mask"],
                                 batch["response_ids"], batch["response_mask"], self.micro_batch_size).cpu()


class ReferenceWorker(WorkerBase, ReferencePolicy):
    """A process of its own for the reference (runner.placement split)."""

    def __init__(self, cfg: Any, index: int) -> None:
        WorkerBase.__init__(self, cfg, role="reference", index=index)
        ReferencePolicy.__init__(self, cfg, self.device)
