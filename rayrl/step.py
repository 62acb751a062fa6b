"""One GRPO step across the fleet: sample, score, compute advantages and reference log-probs, update,
and ship the new weights to every rollout worker."""

from __future__ import annotations

import time
from typing import Any

import ray
import torch

from rayrl.algorithms.grpo import group_advantages
from rayrl.engines import Rollouts
from rayrl.failures import WorkerId
from rayrl.workers.fleet import Fleet

SUMMED_ACTOR_STATS = ("loss", "pg_loss", "kl", "clip_frac")  # already divided by the global token count


def split_evenly(items: list, parts: int) -> list[list]:
    """Contiguous, near-equal chunks (the first ones one longer), so worker i always gets the same rows."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def run_step(fleet: Fleet, cfg: Any, task: Any, items: list[dict], step: int) -> dict[str, float]:
    """Run step ``step`` on the prompts ``items``; returns its metrics."""
    start = time.perf_counter()
    n = cfg.rollout.n_samples_per_prompt
    chunks = split_evenly([it["prompt"] for it in items], len(fleet.rollout.workers))
    gen_refs = fleet.rollout.call_each("generate", [(chunk, n, step) for chunk in chunks])
    rollouts = Rollouts.concat(fleet.wait_all(gen_refs, "rollout"))
    t_gen = time.perf_counter() - start

    rewards = torch.tensor([task.reward(items[i // n], text) for i, text in enumerate(rollouts.response_texts)],
                           dtype=torch.float32)
    batch = {
        "prompt_ids": rollouts.prompt_ids, "prompt_mask": rollouts.prompt_mask,
        "response_ids": rollouts.response_ids, "response_mask": rollouts.response_mask,
        "advantages": group_advantages(rewards, n, cfg.algorithm.norm_adv_by_std),
    }
    if fleet.reference is not None:
        batch["ref_logp"] = fleet.wait(fleet.reference.workers[0].logprobs.remote(batch), WorkerId("reference", 0))
    batch_ref = ray.put(batch)
    stats = fleet.wait_all(fleet.actor.call("train_step", batch_ref), "actor")
    sync_weights(fleet)

    lengths = rollouts.response_mask.sum(dim=1).float()
    metrics = {
        "step": step,
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
        "response_len": float(lengths.mean()),
        **{k: sum(s[k] for s in stats) for k in SUMMED_ACTOR_STATS},
        "grad_norm": stats[0]["grad_norm"],
        "lr": stats[0]["lr"],
        "save_staging_wait_s": max(s["save_staging_wait_s"] for s in stats),  # the loop waited this long
        "gen_time_s": t_gen,
        "time_s": time.perf_counter() - start,
    }
    return metrics


def sync_weights(fleet: Fleet) -> None:
    """Gather the actor's full weights once (rank 0) and load them into every rollout worker."""
    weight_refs = fleet.actor.call("full_state_dict")
    sync_refs = fleet.rollout.call("load_weights", weight_refs[0])
    fleet.wait_all(weight_refs, "actor")
    fleet.wait_all(sync_refs, "rollout")
