"""The rayrl config schema: the dataclasses below ARE the schema (OmegaConf uses them to reject unknown keys and
wrong types; a loaded config is a tree of these objects), with each field's range rule next to it
(`_field(default, rule)`) so the schema and its limits cannot drift apart, and `validate`, the checks of
values and of the rules that tie fields together. Every problem is one `ConfigError` whose one-line message
starts with the dotted key at fault, so the CLI can print it and exit 2 without a traceback.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional


class ConfigError(Exception):
    """A bad config or command line; the message is one line naming the dotted key (or option) at fault."""


# --------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class _Rule:
    """A range check for one field: `ok(value)` must hold; `need` says what is required, for the message."""

    ok: Callable[[Any], bool]
    need: str


_RULE = "rayrl_rule"


def _field(default: Any, rule: _Rule) -> Any:
    """A dataclass field whose (non-null) value `validate` checks against `rule`."""
    return field(default=default, metadata={_RULE: rule})


def _ge(lo: float) -> _Rule:
    return _Rule(lambda v: v >= lo, f"must be >= {lo}")


def _gt(lo: float) -> _Rule:
    return _Rule(lambda v: v > lo, f"must be > {lo}")


def _within(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> _Rule:
    def ok(v: float) -> bool:
        return (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)

    return _Rule(ok, f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")


def _one_of(*choices: str) -> _Rule:
    return _Rule(lambda v: v in choices, f"must be one of {', '.join(choices)}")


# GPUs per worker: NCCL refuses two ranks of one group on one GPU, so a rank has no GPU or whole GPUs;
# Ray refuses fractions above 1, so any other worker has a share of one GPU or whole GPUs.
_RANK_GPUS = _Rule(lambda v: v >= 0 and float(v).is_integer(),
                   "must be 0 or a whole number (NCCL refuses two ranks on one GPU)")
_WORKER_GPUS = _Rule(lambda v: v >= 0 and (v <= 1 or float(v).is_integer()),
                     "must be <= 1 or a whole number (Ray refuses fractions above 1)")

_NONEMPTY = _Rule(lambda v: v.strip() != "", "must not be empty")

LOGGERS = ("console", "tensorboard", "wandb")

# Tasks that read a dataset from `data.path` instead of generating one.
FILE_TASKS = ("jsonl", "parquet", "hf_dataset")

# --------------------------------------------------------------------------------------------- schema


@dataclass
class CheckpointConfig:
    """How and what to checkpoint, and which checkpoints to keep."""

    async_save: bool = True  # write checkpoints in the background while training goes on
    max_to_keep: Optional[int] = _field(None, _ge(1))  # keep only the newest N steps; null = keep all
    keep_top_k: Optional[int] = _field(None, _ge(1))  # also keep the K best steps by `metric`; needs metric
    metric: Optional[str] = _field(None, _NONEMPTY)  # a key of the step's metrics, e.g. reward_mean
    metric_mode: str = _field("max", _one_of("max", "min"))  # whether a larger or smaller metric is better
    manager_class: Optional[str] = None  # dotted path "pkg.module.Class" of a custom CheckpointManager
    verify_checksums: bool = True  # verify manifest checksums on resume (DCP shards as the actor ranks read them)
    export_hf_every: int = _field(0, _ge(0))  # also export a HF model dir every N steps; 0 = never
    timeout_s: float = _field(1800.0, _gt(0))  # bound on a checkpoint load, save or wait (not the step's)
    dir: Optional[str] = _field(None, _NONEMPTY)  # null = <log_path>/checkpoints; or an fsspec URL (s3://bucket/prefix)
    storage_options: dict[str, Any] = field(default_factory=dict)  # passed to fsspec; never written anywhere
    memory_replicas: int = _field(0, _within(0, 1))  # 1 = the newest step also in host memory, each actor shard on a peer node
    memory_budget_gb: Optional[float] = _field(None, _gt(0))  # cap on that memory per rank; over it: storage only


@dataclass
class StandbyConfig:
    """Spare worker processes per role, started with the fleet, that take a lost worker's place."""

    actor: int = _field(0, _ge(0))  # spare actor ranks (each reserves what a rank does: a GPU on GPU)
    rollout: int = _field(0, _ge(0))  # spare rollout engines


@dataclass
class RunnerConfig:
    """The run as a whole: where it writes, how long it runs, how it saves, resumes and recovers."""

    experiment_name: str = _field("grpo-tiny", _NONEMPTY)  # the run's name, a directory under output_dir
    output_dir: str = _field("./logs", _NONEMPTY)  # parent of all runs' directories
    log_path: str = _field("${runner.output_dir}/${runner.experiment_name}", _NONEMPTY)  # the run directory
    max_steps: int = _field(20, _ge(1))  # train until this global step
    save_interval: int = _field(5, _ge(0))  # checkpoint every N steps (and at the last); 0 = only at the end
    resume_dir: Optional[str] = None  # a global_step_N dir to start from; must exist
    resume_mode: str = _field("auto", _one_of("auto", "disable"))  # auto: latest valid; disable: archive
    max_restarts: int = _field(3, _ge(0))  # in-job recoveries from infrastructure failures before giving up
    restart_backoff_s: float = _field(1.0, _ge(0))  # first backoff; doubles per restart until a step finishes, capped at 30 s
    seed: int = 1  # seeds every rank, worker and the data order
    step_timeout_s: float = _field(600.0, _gt(0))  # a step without progress this long counts as a hang
    resource_wait_s: float = _field(120.0, _gt(0))  # how long recovery waits for resources to come back
    save_on_preemption: bool = True  # on SIGTERM / node drain, checkpoint at the next step boundary
    loggers: Optional[list[str]] = None  # console, tensorboard, wandb; null = console + what is installed
    deterministic: bool = False  # GPU: deterministic kernels (torch, cuBLAS, vLLM batch-invariant); CPU is always exact
    # split: actor, rollout and reference in processes of their own; colocated: all three in each actor rank
    placement: str = _field("split", _one_of("split", "colocated"))
    standby: StandbyConfig = field(default_factory=StandbyConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


@dataclass
class ModelConfig:
    """The policy model; the size fields only shape the built-in tiny model."""

    path: Optional[str] = _field(None, _NONEMPTY)  # null = built-in tiny model; else local HF dir or hub name
    trust_remote_code: bool = False  # passed to transformers when loading `path`
    dtype: str = _field("float32", _one_of("float32", "bfloat16", "float16"))  # parameter dtype
    hidden_size: int = _field(128, _ge(1))  # built-in tiny model only
    num_layers: int = _field(4, _ge(1))  # built-in tiny model only
    num_heads: int = _field(4, _ge(1))  # built-in tiny model only; must divide hidden_size
    intermediate_size: int = _field(256, _ge(1))  # built-in tiny model only


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = _field(3e-3, _gt(0))  # peak learning rate
    weight_decay: float = _field(0.0, _ge(0))  # AdamW decoupled weight decay
    beta1: float = _field(0.9, _within(0, 1, hi_open=True))  # AdamW first-moment decay
    beta2: float = _field(0.999, _within(0, 1, hi_open=True))  # AdamW second-moment decay
    eps: float = _field(1e-8, _gt(0))  # AdamW denominator epsilon
    warmup_steps: int = _field(0, _ge(0))  # linear warm-up from 0 to lr over this many steps
    lr_schedule: str = _field("constant", _one_of("constant", "cosine"))  # after warm-up
    min_lr_ratio: float = _field(0.1, _within(0, 1))  # cosine floor as a fraction of lr
    grad_clip: float = _field(1.0, _gt(0))  # max global gradient norm


@dataclass
class ActorConfig:
    """The policy being trained: `world_size` ranks in one torch.distributed group (FSDP2)."""

    world_size: int = _field(2, _ge(1))  # ranks of the policy
    min_world_size: Optional[int] = _field(None, _ge(1))  # elastic: continue on >= this many when a node stays lost
    num_cpus_per_worker: float = _field(1.0, _gt(0))  # Ray CPUs per rank
    num_gpus_per_worker: float = _field(0.0, _RANK_GPUS)  # Ray GPUs per rank, 0 or whole; > 0: CUDA + nccl
    micro_batch_size: int = _field(0, _ge(0))  # sequences per forward; 0 = the whole local batch at once
    mixed_precision: bool = False  # FSDP2 computes in bfloat16, float32 master weights and gradient reduction
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class RolloutConfig:
    """The generation engines that sample responses with the actor's latest weights."""

    backend: str = _field("hf", _one_of("hf", "vllm"))  # hf: transformers generate; vllm: the vllm extra
    num_workers: int = _field(1, _ge(1))  # generation engines
    min_workers: Optional[int] = _field(None, _ge(1))  # elastic: continue with >= this many when a node stays lost
    num_cpus_per_worker: float = _field(1.0, _ge(0))  # Ray CPUs per engine
    num_gpus_per_worker: float = _field(0.0, _WORKER_GPUS)  # Ray GPUs per engine: <= 1 (shared) or whole
    tensor_parallel_size: int = _field(1, _ge(1))  # vllm tensor parallelism inside one engine
    n_samples_per_prompt: int = _field(8, _ge(2))  # the GRPO group size; a group needs at least 2
    max_new_tokens: int = _field(12, _ge(1))  # response length limit
    temperature: float = _field(1.0, _gt(0))  # sampling temperature
    top_p: float = _field(1.0, _within(0, 1, lo_open=True))  # nucleus sampling mass
    async_steps: int = _field(0, _ge(0))  # k: rollouts run up to k steps ahead of training (0: synchronous)


@dataclass
class ReferenceConfig:
    """The frozen initial policy that gives reference log-probs for the KL term."""

    enabled: bool = True  # false: no reference worker and no KL term
    num_cpus_per_worker: float = _field(1.0, _ge(0))  # Ray CPUs for the reference worker
    num_gpus_per_worker: float = _field(0.0, _WORKER_GPUS)  # Ray GPUs for the reference worker: <= 1 or whole


@dataclass
class RewardFnConfig:
    """One reward function of data.reward_fns."""

    fn: str = _field("???", _NONEMPTY)  # dotted path pkg.module:function
    weight: float = 1.0  # its weight in the reward the advantages are computed from


@dataclass
class DataConfig:
    """The prompts and their verifiable answers."""

    task: str = _field("copy_pattern", _NONEMPTY)  # a built-in task name, or jsonl / parquet / hf_dataset
    batch_size: int = _field(8, _ge(1))  # prompts per step
    num_samples: int = _field(4096, _ge(1))  # size of generated datasets
    path: Optional[str] = _field(None, _NONEMPTY)  # file for jsonl/parquet, dataset name for hf_dataset
    prompt_key: str = _field("prompt", _NONEMPTY)  # column holding the prompt in file datasets
    answer_key: str = _field("answer", _NONEMPTY)  # column holding the reference answer in file datasets
    pattern_length: int = _field(2, _ge(1))  # copy_pattern: symbols to repeat
    reward_fns: Optional[list[RewardFnConfig]] = None  # [{fn: pkg.module:function, weight}]; null = built-in
    reward_fn: Optional[str] = _field(None, _NONEMPTY)  # short form: one function, weight 1
    reward_workers: Optional[int] = _field(None, _ge(0))  # null: in the rollout workers; N: a pool of N;
    #                                                      0: serially in the coordinator (the slow reference)
    reward_timeout_s: float = _field(60.0, _gt(0))  # one reward call; past it: a program error


@dataclass
class AlgorithmConfig:
    """GRPO loss settings."""

    name: str = _field("grpo", _one_of("grpo"))  # the only algorithm so far
    kl_coef: float = _field(0.01, _ge(0))  # weight of the KL penalty to the reference policy
    clip_ratio: float = _field(0.2, _gt(0))  # PPO-style ratio clip epsilon
    ppo_epochs: int = _field(1, _ge(1))  # optimizer passes over each step's rollouts
    norm_adv_by_std: bool = True  # divide group-relative advantages by the group's std


@dataclass
class RayRLConfig:
    """The whole job."""

    runner: RunnerConfig = field(default_factory=RunnerConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)



def validate(cfg: RayRLConfig) -> None:
    """Check every value's range and the rules that tie fields together; raise ConfigError on the first."""
    check_fields(cfg, "")
    ckpt = cfg.runner.checkpoint
    if ckpt.keep_top_k is not None and ckpt.metric is None:
        raise ConfigError("runner.checkpoint.keep_top_k: needs runner.checkpoint.metric to rank by")
    resume_dir = cfg.runner.resume_dir
    if resume_dir is not None and "://" not in resume_dir:  # a URL is checked through its filesystem (rayrl.main)
        if not os.path.exists(resume_dir):
            raise ConfigError(f"runner.resume_dir: does not exist: {resume_dir}")
        if not os.path.isdir(resume_dir):
            raise ConfigError(f"runner.resume_dir: not a directory: {resume_dir}")
    for i, logger in enumerate(cfg.runner.loggers or []):
        if logger not in LOGGERS:
            raise ConfigError(f"runner.loggers[{i}]: must be one of {', '.join(LOGGERS)} (got {logger!r})")
    if cfg.data.task in FILE_TASKS and cfg.data.path is None:
        raise ConfigError(f"data.path: required when data.task is {cfg.data.task!r}")
    if cfg.rollout.num_workers > cfg.data.batch_size:
        raise ConfigError(f"rollout.num_workers: must be <= data.batch_size, or some engines get no prompt "
                          f"(got {cfg.rollout.num_workers} > {cfg.data.batch_size})")
    if cfg.actor.world_size > cfg.data.batch_size * cfg.rollout.n_samples_per_prompt:
        raise ConfigError(f"actor.world_size: must be <= data.batch_size * rollout.n_samples_per_prompt, "
                          f"or some ranks get no sample (got {cfg.actor.world_size})")
    _check_colocated(cfg)
    _check_async(cfg)
    _check_elastic(cfg)
    model = cfg.actor.model
    if cfg.actor.mixed_precision and model.dtype != "float32":
        raise ConfigError(f"actor.mixed_precision: needs actor.model.dtype float32 for the master weights "
                          f"(got {model.dtype})")
    if model.path is None and model.hidden_size % model.num_heads != 0:
        raise ConfigError(
            f"actor.model.hidden_size: must be a multiple of actor.model.num_heads "
            f"(got {model.hidden_size} and {model.num_heads})"
        )


def _check_colocated(cfg: RayRLConfig) -> None:
    """Colocated engines and references compute on their actor rank's device: on CPU they reserve no GPU;
    on GPU rollout.num_gpus_per_worker is the share of the rank's GPU an engine takes while awake."""
    if cfg.runner.placement != "colocated":
        return
    for role in ("actor", "rollout"):
        if getattr(cfg.runner.standby, role) > 0:
            raise ConfigError(f"runner.standby.{role}: standbys need runner.placement=split (a colocated rank "
                              "hosts its engine and reference, which a spare would have to build too)")
    if cfg.actor.num_gpus_per_worker == 0:
        for key in ("rollout", "reference"):
            if getattr(cfg, key).num_gpus_per_worker > 0:
                raise ConfigError(f"{key}.num_gpus_per_worker: must be 0 with runner.placement=colocated and the "
                                  f"actor on CPU (actor.num_gpus_per_worker=0): it runs in the actor's processes")
    elif not 0 < cfg.rollout.num_gpus_per_worker < 1:
        raise ConfigError(f"rollout.num_gpus_per_worker: with runner.placement=colocated on GPU, the share of each "
                          f"actor rank's GPU its engine takes while awake; must be in (0, 1) "
                          f"(got {cfg.rollout.num_gpus_per_worker:g})")


def _check_async(cfg: RayRLConfig) -> None:
    """Rollouts ahead of training need engines in processes of their own: colocated engines share the actor
    ranks' processes, so nothing overlaps (both engines give the behaviour log-probs)."""
    if cfg.rollout.async_steps > 0 and cfg.runner.placement != "split":
        raise ConfigError("rollout.async_steps: needs runner.placement=split (colocated engines run in the actor's "
                          f"processes, so generation cannot overlap training); got {cfg.runner.placement}")


def _check_elastic(cfg: RayRLConfig) -> None:
    """An elastic minimum is at most the configured size; colocated engines follow the actor's size."""
    for key, minimum, size, size_key in (
            ("actor.min_world_size", cfg.actor.min_world_size, cfg.actor.world_size, "actor.world_size"),
            ("rollout.min_workers", cfg.rollout.min_workers, cfg.rollout.num_workers, "rollout.num_workers")):
        if minimum is not None and minimum > size:
            raise ConfigError(f"{key}: must be <= {size_key} (got {minimum} > {size})")
    if cfg.runner.placement == "colocated" and cfg.rollout.min_workers is not None:
        raise ConfigError("rollout.min_workers: must be null with runner.placement=colocated: the engines live in "
                          "the actor ranks and shrink with them (actor.min_world_size)")


def check_fields(node: Any, prefix: str) -> None:
    for f in dataclasses.fields(node):
        key, value = prefix + f.name, getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, key + ".")
        elif isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{key}: must be a number (got nan)")
        elif value is not None and _RULE in f.metadata and not f.metadata[_RULE].ok(value):
            raise ConfigError(f"{key}: {f.metadata[_RULE].need} (got {value!r})")


