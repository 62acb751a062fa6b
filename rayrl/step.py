"""One GRPO step across the fleet: sample, score, compute advantages and reference log-probs, update,
and ship the new weights to every rollout engine. The same calls serve either placement (runner.placement):
a role hosted by the actor ranks (colocated) answers them from there (rayrl.workers.group.HostedGroup).

Scoring happens where data.reward_workers says: null, in the rollout workers as they generate; N, in a pool
of N Ray tasks; 0, serially here in the coordinator (the slow reference path)."""

from __future__ import annotations

import time
from typing import Any

import ray
import torch

from rayrl.algorithms.grpo import group_advantages
from rayrl.algorithms.off_policy import policy_lag
from rayrl.data import ledger
from rayrl.data.scoring import Scorer
from rayrl.engines import Rollouts
from rayrl.failures import WorkerId
from rayrl.pipeline import RolloutPipeline, split_evenly
from rayrl.regenerate import retrying
from rayrl.workers import reward_pool
from rayrl.workers.fleet import Fleet
from rayrl.workers.roles import ACTOR, ROLLOUT
from rayrl.workers.weight_sync import IPC, OBJECT_STORE

SUMMED_ACTOR_STATS = ("loss", "pg_loss", "kl", "clip_frac")  # already divided by the global token count


def run_step(fleet: Fleet, cfg: Any, scoring: Scoring, pipeline: RolloutPipeline, step: int) -> dict[str, Any]:
    """Run step ``step`` on the rollouts ``pipeline`` has for it; returns its metrics."""
    start = time.perf_counter()
    n = cfg.rollout.n_samples_per_prompt
    taken = pipeline.take(step)
    items, rollouts = taken.items, taken.rollouts
    t_gen = time.perf_counter() - start

    scores = scoring.scores(fleet, items, rollouts, n, step)
    rewards = torch.tensor([s["reward"] for s in scores], dtype=torch.float32)
    batch = {
        "prompt_ids": rollouts.prompt_ids, "prompt_mask": rollouts.prompt_mask,
        "response_ids": rollouts.response_ids, "response_mask": rollouts.response_mask,
        "advantages": group_advantages(rewards, n, cfg.algorithm.norm_adv_by_std),
    }
    if rollouts.logprobs is not None:  # generated ahead by an older policy: the ratio is against it
        batch["behaviour_logp"] = rollouts.logprobs
    t_scored = time.perf_counter()
    if fleet.reference is not None:
        batch["ref_logp"] = reference_logprobs(fleet, batch)
    t_referenced = time.perf_counter()
    stats = fleet.wait_all(fleet.actor.call("train_step", ray.put(batch)), "actor")
    t_trained = time.perf_counter()
    # a rollout worker lost in a synchronous sync is replaced in the job and the sync done again
    pipeline.weights_sent(step, *retrying(pipeline, lambda: sync_weights(fleet, wait=pipeline.k == 0), reissue=False))
    t_synced = time.perf_counter()

    lengths = rollouts.response_mask.sum(dim=1).float()
    lag = policy_lag(step, torch.full((len(scores),), taken.version)).float()
    metrics = {
        "step": step,
        "epoch": taken.epoch,
        "ledger": ledger.entry(taken.epoch, taken.indices),  # the prompts this step trained on
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
        **named_means(scores),
        "response_len": float(lengths.mean()),
        **{k: sum(s[k] for s in stats) for k in SUMMED_ACTOR_STATS},
        "grad_norm": stats[0]["grad_norm"],
        "lr": stats[0]["lr"],
        "save_staging_wait_s": max(s["save_staging_wait_s"] for s in stats),  # the loop waited this long
        "gen_time_s": t_gen,  # training waited this long for its rollouts: all of generation when synchronous
        "rollout_gen_s": rollouts.gen_s,  # generating them took the slowest rollout worker this long
        "wait_weights_s": taken.wait_weights_s,  # the rollout workers idle, waiting for the weights they used
        "policy_lag_mean": float(lag.mean()),
        "policy_lag_max": int(lag.max()),
        "score_time_s": scoring.last_s,
        "ref_time_s": t_referenced - t_scored,
        "train_time_s": t_trained - t_referenced,
        "sync_time_s": t_synced - t_trained,
        "time_s": time.perf_counter() - start,
    }
    return metrics


class Scoring:
    """The run's reward functions and where they run (data.reward_workers)."""

    def __init__(self, cfg: Any, specs: list) -> None:
        self.cfg, self.specs = cfg, tuple(specs)
        workers = cfg.data.reward_workers
        self.local = Scorer(self.specs, cfg.data.reward_timeout_s, cfg.runner.seed) if workers == 0 else None
        self.last_s = 0.0  # the time the last step waited for scores after generating

    def scores(self, fleet: Fleet, items: list[dict], rollouts: Rollouts, n: int, step: int) -> list[dict]:
        t0 = time.perf_counter()
        out = rollouts.scores
        if out is None:
            ids = [row[mask.bool()].tolist() for row, mask in zip(rollouts.response_ids, rollouts.response_mask)]
            texts = rollouts.response_texts
            if self.local is not None:
                out = self.local.score(items, texts, ids, n, step, 0)
            else:
                chunks = split_evenly(list(range(len(items))), self.cfg.data.reward_workers)
                refs = reward_pool.submit(self.specs, self.cfg, items, texts, ids, n, step, chunks)
                out = [s for part in fleet.wait_all(refs, "reward") for s in part]
        self.last_s = time.perf_counter() - t0
        return out


def named_means(scores: list[dict[str, float]]) -> dict[str, float]:
    """The step mean of each named reward term (``reward/<name>`` ...), over the samples that have it."""
    keys = list(dict.fromkeys(k for s in scores for k in s if k != "reward"))
    out = {}
    for key in keys:
        values = [s[key] for s in scores if key in s]
        out[key] = sum(values) / len(values)
    return out


def reference_logprobs(fleet: Fleet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reference log-probs of ``batch``, its rows split evenly over the reference copies (one in split
    placement: the whole batch)."""
    parts = split_evenly(list(range(batch["response_ids"].shape[0])), fleet.reference.size)
    refs = fleet.reference.call_each("logprobs", [({k: v[p[0]:p[-1] + 1] for k, v in batch.items()},)
                                                  for p in parts])
    return torch.cat(fleet.wait_all(refs, "reference"))


def sync_weights(fleet: Fleet, wait: bool = True, keep: bool = False
                 ) -> tuple[list[ray.ObjectRef], ray.ObjectRef | None]:
    """Put the actor's new weights into every engine; returns the engines' load calls and, where the weights
    went through the object store, their ref (``keep``: always through it, so that the rollout pipeline can
    hold them for generations pinned to them: rayrl.pipeline). Engines hosted by the
    actor ranks (colocated): each rank gathers the full weights within the actor group and loads its own,
    in-process. Engines of their own: rank 0 gathers them once, and each rollout worker loads them by the
    path chosen for it at the fleet's start (rayrl.workers.weight_sync): engines on rank 0's node map rank
    0's copy through handles, the others load it from the object store; rank 0 frees its copy once every
    engine has answered. ``wait`` False (rollouts ahead of training): their loads queue behind the
    generation in flight, not waited for here, so all of them go through the object store (the handles'
    memory could not be freed at a known point)."""
    if fleet.host_of(ROLLOUT) is not None:
        fleet.wait_all(fleet.actor.call("sync_engine"), "actor")
        return [], None
    paths = [path for path, _ in fleet.weight_paths]
    if IPC not in paths or not wait or keep:
        weight_refs = fleet.actor.call("full_state_dict")
        sync_refs = fleet.rollout.call("load_weights", weight_refs[0])
        fleet.wait_all(weight_refs, "actor")
        if wait:
            fleet.wait_all(sync_refs, "rollout")
        return sync_refs, weight_refs[0]
    rank0 = fleet.actor.workers[0]
    handle_refs = fleet.actor.call("share_full_state_dict", paths.count(IPC))
    host_ref = rank0.shared_host_copy.remote() if OBJECT_STORE in paths else None
    sync_refs = [engine.load_shared_weights.remote(handle_refs[0]) if path == IPC
                 else engine.load_weights.remote(host_ref) for engine, path in zip(fleet.rollout.workers, paths)]
    fleet.wait_all(handle_refs, "actor")
    fleet.wait_all(sync_refs, "rollout")
    fleet.wait(rank0.release_shared_weights.remote(), WorkerId(ACTOR, 0))
    return sync_refs, None
