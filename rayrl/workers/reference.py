"""ReferenceWorker: a frozen copy of the initial policy that gives reference log-probs for the KL term."""

from __future__ import annotations

from typing import Any

import torch

from rayrl.models.forward import response_logprobs
from rayrl.workers.base import WorkerBase


class ReferenceWorker(WorkerBase):
    """Stateless beyond its initial weights, so a checkpoint needs nothing from it."""

    def __init__(self, cfg: Any, index: int) -> None:
        super().__init__(cfg, role="reference", index=index)
        from rayrl.models.loading import load_model_and_tokenizer  # transformers: only in this process

        self.model, _ = load_model_and_tokenizer(cfg.actor.model, cfg.runner.seed)
        self.model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def logprobs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return response_logprobs(self.model, batch["prompt_ids"], batch["prompt_mask"],
                                 batch["response_ids"], batch["response_mask"],
                                 self.cfg.actor.micro_batch_size).cpu()
