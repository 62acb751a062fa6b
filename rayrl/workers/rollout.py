"""Sampling: one generation engine that samples responses, scores them and receives each new policy.

``Sampler`` is the role itself, plain Python, so that either process can host it: a ``RolloutWorker`` of its
own (runner.placement split) or an actor rank (colocated, rayrl.workers.colocated).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rayrl.checkpoint.errors import CheckpointInvalid
from rayrl.checkpoint.format import rollout_state_file
from rayrl.checkpoint.storage import storage_for
from rayrl.checkpoint.torch_files import read_torch, write_torch
from rayrl.data.prompts import render_prompt
from rayrl.data.scoring import Scorer
from rayrl.engines import GenerationEngine, Rollouts
from rayrl.workers.base import WorkerBase
from rayrl.workers.weight_sync import open_handles


class Sampler:
    """Engine ``index`` of the run, with its scorer (data.reward_workers null)."""

    def __init__(self, cfg: Any, index: int) -> None:
        self.cfg, self.index = cfg, index
        self.engine = make_engine(cfg)
        self.scorer = None  # data.reward_workers null: this engine's host scores what it generates
        if cfg.data.reward_workers is None:
            from rayrl.data.tasks import run_reward_specs

            self.scorer = Scorer(run_reward_specs(cfg.data), cfg.data.reward_timeout_s, cfg.runner.seed)
        self.behaviour_logprobs = cfg.rollout.async_steps > 0  # the trainer no longer has this policy
        self.idle_since: float | None = None  # when the last generation ended

    def generate(self, items: list[dict], n: int, step: int, first: int) -> Rollouts:
        """``n`` responses to each prompt item (its prompt rendered with the tokenizer's chat template when it
        is chat messages), scored here when this worker scores; ``first``: the index of its first sample in
        the step, which with ``step`` seeds the sampling (rayrl.engines.base: any worker draws the same). With
        rollouts ahead of training, also the generating policy's log-probs."""
        start = time.perf_counter()
        prompts = [render_prompt(item["prompt"], self.engine.tokenizer) for item in items]
        rollouts = self.engine.generate(prompts, n, step, first, logprobs=self.behaviour_logprobs)
        if self.scorer is not None:
            ids = [row[mask.bool()].tolist() for row, mask in zip(rollouts.response_ids, rollouts.response_mask)]
            rollouts.scores = self.scorer.score(items, rollouts.response_texts, ids, n, step, first)
        self.idle_since = time.perf_counter()
        rollouts.gen_s = self.idle_since - start
        return rollouts

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> float:
        """Load a new policy; returns how long this engine sat idle since its last generation, waiting for
        it (0 before the first generation)."""
        waited = time.perf_counter() - self.idle_since if self.idle_since is not None else 0.0
        self.engine.load_weights(state_dict)
        return waited

    def load_shared_weights(self, handles: dict[str, list]) -> None:
        """Load the weights behind actor rank 0's handles (the ipc path of rayrl.workers.weight_sync) and
        let go of them before answering: rank 0 frees them once every engine has answered."""
        tensors = open_handles(handles)
        self.engine.load_weights(tensors)
        if any(t.is_cuda for t in tensors.values()):
            torch.cuda.synchronize()  # the copies out of rank 0's memory are done before it may free it
        tensors.clear()

    def save_checkpoint(self, directory: str) -> dict[str, dict]:
        """Write what the engine's sampling depends on (its seed scheme); returns the digest of the file."""
        storage = storage_for(directory, self.cfg.runner.checkpoint.storage_options)
        storage.makedirs(directory)
        name = rollout_state_file(self.index)
        return {name: write_torch(storage, storage.join(directory, name), self.engine.state_dict())}

    def load_checkpoint(self, directory: str, saved_workers: int) -> None:
        """Check the engine's saved state (an older checkpoint's is loaded with a warning). An engine the
        checkpoint was saved with must find its file (else CheckpointInvalid); one beyond ``saved_workers``
        (more engines than were saved, e.g. a split checkpoint resumed colocated) has none and needs none:
        its seeds do not depend on it."""
        storage = storage_for(directory, self.cfg.runner.checkpoint.storage_options)
        name = rollout_state_file(self.index)
        path = storage.join(directory, name)
        if self.index >= saved_workers:
            return
        if not storage.isfile(path):
            raise CheckpointInvalid(directory, f"missing {name}: rollout worker {self.index} of the "
                                    f"{saved_workers} saved has no sampling state to load")
        self.engine.load_state_dict(read_torch(storage, path))


class RolloutWorker(WorkerBase, Sampler):
    """A process of its own for one engine (runner.placement split)."""

    def __init__(self, cfg: Any, index: int) -> None:
        WorkerBase.__init__(self, cfg, role="rollout", index=index)
        Sampler.__init__(self, cfg, index)


def make_engine(cfg: Any) -> GenerationEngine:
    """The engine named by ``cfg.rollout.backend`` (imported here: vLLM is an optional extra)."""
    backend = cfg.rollout.backend
    if backend == "hf":
        from rayrl.engines.hf import HFEngine

        return HFEngine(cfg)
    if backend == "vllm":
        from rayrl.engines.vllm import VLLMEngine

        return VLLMEngine(cfg)
    raise ValueError(f"rollout.backend: unknown engine {backend!r} (known: hf, vllm)")
