"""Building the trainable policy: FSDP2-sharded model, AdamW and the LR schedule.

Pure torch (no Ray), so tests and benchmarks build exactly what the actor workers train.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def build_sharded_policy(model_cfg: Any, seed: int, world_size: int, device: torch.device,
                         mixed_precision: bool = False):
    """The policy sharded with FSDP2 (each decoder layer, then the root) over the default process group.

    Built on the meta device, sharded, and only then allocated: each rank holds its shards on ``device``,
    never the full model (about 28 GB in float32 for a 7B model). Rank 0 alone loads the weights (on the
    host) and broadcasts them into the shards. ``mixed_precision``: the float32 parameters stay the master
    copy (sharded, updated by the optimizer); FSDP2 gathers them as bfloat16 for compute and reduces
    gradients in float32."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from rayrl.models.loading import load_model_and_tokenizer  # transformers: only in worker processes

    model, tokenizer = load_model_and_tokenizer(model_cfg, seed, on_meta=True)
    mesh = init_device_mesh(device.type, (world_size,))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision
              else MixedPrecisionPolicy())
    for layer in _decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    model.to_empty(device=device)
    full = load_model_and_tokenizer(model_cfg, seed)[0] if dist.get_rank() == 0 else None
    set_model_state_dict(model, full.state_dict() if full is not None else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    # Buffers that are not in the state dict (rotary inverse frequencies) are still uninitialised: rank 0's.
    sources = dict(full.named_buffers()) if full is not None else {}
    for name, buffer in model.named_buffers():
        if full is not None:
            buffer.copy_(sources[name])
        dist.broadcast(buffer, src=0)
    return model, tokenizer


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return list(layers) if layers is not None else []


def build_optimizer(model: torch.nn.Module, optim_cfg: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        model.parameters(), lr=optim_cfg.lr, betas=(optim_cfg.beta1, optim_cfg.beta2),
        eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay,
    )


class LRSchedule:
    """Linear warm-up, then constant or cosine decay to ``min_lr_ratio``; a picklable LR multiplier."""

    def __init__(self, optim_cfg: Any, total_steps: int) -> None:
        self.warmup = optim_cfg.warmup_steps
        self.kind = optim_cfg.lr_schedule
        self.min_ratio = optim_cfg.min_lr_ratio
        self.total = max(total_steps, 1)

    def __call__(self, step: int) -> float:
        if self.warmup > 0 and step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: Any, total_steps: int, steps_done: int = 0):
    """The LR schedule ``optim_cfg`` and ``total_steps`` define, positioned after ``steps_done`` steps.

    On resume only the step count comes from the checkpoint: the schedule (lr, warm-up, kind, floor and
    ``runner.max_steps``) is the current config's, so a run resumed with more steps decays over the new
    length. LambdaLR evaluates the schedule in closed form at each step, so a resume without changes gives
    the very same floats as an uninterrupted run."""
    for group in optimizer.param_groups:
        group["initial_lr"] = optim_cfg.lr  # the base LR; a loaded optimizer state carries the checkpoint's
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(optim_cfg, total_steps),
                                             last_epoch=steps_done - 1)


def apply_optimizer_config(optimizer: torch.optim.Optimizer, optim_cfg: Any) -> None:
    """After loading an optimizer's state (moments and step counts): the hyper-parameters of the current
    config, not the ones saved with it (the LR comes from ``build_scheduler``)."""
    for group in optimizer.param_groups:
        group.update(betas=(optim_cfg.beta1, optim_cfg.beta2), eps=optim_cfg.eps,
                     weight_decay=optim_cfg.weight_decay)
