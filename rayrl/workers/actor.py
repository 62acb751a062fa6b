"""ActorWorker: one rank of the policy being trained (FSDP2 over a torch.distributed group).

The coordinator imports this module for the class alone, on the path of every (re)start. FSDP and
torch.distributed.checkpoint (DTensor pulls in sympy, a slow import) are imported in the methods that use
them, in the actor processes, so that the coordinator creates the workers sooner (README, "Measurements
behind design choices").
"""

from __future__ import annotations

import datetime
import logging
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from rayrl.algorithms.grpo import policy_loss
from rayrl.checkpoint.format import MODEL_KEY, OPTIMIZER_KEY, extra_state_file
from rayrl.checkpoint.manifest import digest_tree
from rayrl.checkpoint.memory import copy_nbytes, local_copy, restore_local
from rayrl.checkpoint.errors import CheckpointInvalid
from rayrl.checkpoint.rng import capture_rng_state, derived_seed, restore_rng_state, seed_rng_state
from rayrl.checkpoint.torch_files import read_torch, write_torch
from rayrl.config import ConfigError
from rayrl.models.forward import response_logprobs
from rayrl.workers.base import WorkerBase

if TYPE_CHECKING:
    from rayrl.workers.weight_sync import SharedWeights

log = logging.getLogger(__name__)


class ActorWorker(WorkerBase):
    """Computes log-probs and takes the GRPO step on its slice of the batch."""

    def __init__(self, cfg: Any, rank: int, world_size: int) -> None:
        super().__init__(cfg, role="actor", index=rank)
        self.rank, self.world_size = rank, world_size
        self._shared: SharedWeights | None = None  # rank 0: the full weights the ipc engines map (weight sync)

    def warm(self) -> dict[str, Any]:
        """A standby: import what joining the group and building the sharded policy need, and build the
        model's structure once (transformers' model classes), so that taking a rank costs only the group
        and the sharded build (which needs the group)."""
        from rayrl.checkpoint.sharded import ShardedCheckpointIO  # noqa: F401 -- imported ahead
        from rayrl.models.loading import load_model_and_tokenizer
        from rayrl.workers.policy import build_sharded_policy  # noqa: F401 -- imported ahead

        load_model_and_tokenizer(self.cfg.actor.model, self.cfg.runner.seed, on_meta=True)
        return super().warm()

    def assume(self, index: int) -> None:
        super().assume(index)
        self.rank = index

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the group, build the sharded policy, optimizer and LR schedule. A rank already in a group
        (a standby took a lost rank's place) leaves it first: every member joins the new rendezvous, and
        the policy is built anew over the new group (its state is loaded next)."""
        from rayrl.checkpoint.sharded import ShardedCheckpointIO
        from rayrl.workers.policy import build_optimizer, build_scheduler, build_sharded_policy

        if dist.is_initialized():
            self.ckpt.abandon()  # a save in flight when the rank was lost cannot complete
            self.shutdown()
        cfg = self.cfg
        use_cuda = self.device.type == "cuda"
        dist.init_process_group(
            backend="cpu:gloo,cuda:nccl" if use_cuda else "gloo",
            init_method=f"tcp://{master_addr}:{master_port}",
            rank=self.rank, world_size=self.world_size,
            # the collectives of a checkpoint load or save may take as long as its own bound allows
            timeout=datetime.timedelta(seconds=max(60.0, cfg.runner.step_timeout_s,
                                                   cfg.runner.checkpoint.timeout_s)),
            device_id=self.device if use_cuda else None,  # NCCL binds this device and connects eagerly
        )
        self.model, self.tokenizer = build_sharded_policy(cfg.actor.model, cfg.runner.seed, self.world_size,
                                                          self.device, cfg.actor.mixed_precision)
        self.optimizer = build_optimizer(self.model, cfg.actor.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.actor.optim, cfg.runner.max_steps)
        self.ckpt = ShardedCheckpointIO(self.rank, dist.new_group(backend="gloo"),
                                        storage_options=cfg.runner.checkpoint.storage_options)

    # ---------------------------------------------------------------- training
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One GRPO update on this rank's rows; returns sums that the coordinator adds over ranks."""
        acfg, cfg = self.cfg.algorithm, self.cfg
        staging_wait = self.ckpt.wait_staged()  # an async save still copying the state out: before it changes
        rows = torch.tensor_split(torch.arange(batch["advantages"].shape[0]), self.world_size)[self.rank]
        part = {k: v[rows] for k, v in batch.items() if isinstance(v, torch.Tensor)}
        token_count = float(batch["response_mask"].sum())  # the global batch's, so shards sum exactly
        n_micro = _num_micro_batches(batch["advantages"].shape[0], self.world_size, cfg.actor.micro_batch_size)
        micro = [torch.tensor_split(torch.arange(len(rows)), n_micro)[i] for i in range(n_micro)]
        self.model.train()
        if "behaviour_logp" in part:  # generated ahead by an older policy (rollout.async_steps): its log-probs
            old_logp = part["behaviour_logp"]
        else:
            with torch.no_grad():
                old_logp = torch.cat([self._logp(part, m) for m in micro])
        sums = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "clip_frac": 0.0}
        grad_norm = torch.zeros(())
        for _ in range(acfg.ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            for m in micro:
                logp = self._logp(part, m)
                loss, stats = policy_loss(
                    logp, old_logp[m], part["advantages"][m], part["response_mask"][m],
                    clip_ratio=acfg.clip_ratio, kl_coef=acfg.kl_coef,
                    ref_logp=part["ref_logp"][m] if "ref_logp" in part else None,
                    token_count=token_count,
                )
                (loss * self.world_size).backward()  # FSDP averages gradients over ranks
                for key in sums:
                    sums[key] += float(stats[key]) if key != "loss" else float(loss.detach())
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.actor.optim.grad_clip)
            self.optimizer.step()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self._release_cached_memory()
        norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        scale = 1.0 / acfg.ppo_epochs
        return {**{k: v * scale for k, v in sums.items()}, "grad_norm": float(norm), "lr": lr,
                "save_staging_wait_s": staging_wait}

    def _logp(self, part: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        return response_logprobs(self.model, part["prompt_ids"][idx], part["prompt_mask"][idx],
                                 part["response_ids"][idx], part["response_mask"][idx]).cpu()

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Gather the full weights once (a collective); rank 0 returns them for the rollout workers."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        self._release_cached_memory()
        return sd if self.rank == 0 else None

    def share_full_state_dict(self, receivers: int) -> dict[str, list] | None:
        """Gather the full weights to rank 0 where they are (on a GPU: into its memory), one tensor at a
        time (a collective each) so that the other ranks never hold more than one full tensor; rank 0 keeps
        them and returns handles that ``receivers`` engines of its node open (the ipc path of
        rayrl.workers.weight_sync), until ``release_shared_weights``. The others return None."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from torch.distributed.tensor import DTensor

        from rayrl.workers.weight_sync import export_handles

        self.release_shared_weights()  # a sync that failed half-way left these: freed now
        full = {}
        for name, tensor in get_model_state_dict(self.model, options=StateDictOptions()).items():
            whole = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            if self.rank == 0:
                full[name] = whole
        if self.rank != 0:
            return None
        handles, self._shared = export_handles(full, receivers)
        return handles

    def shared_host_copy(self) -> dict[str, torch.Tensor]:
        """Rank 0: the kept full weights as host tensors, for the engines on the object-store path of the
        same sync (engines on other nodes)."""
        return {name: t.to("cpu", copy=True) for name, t in self._shared.tensors.items()}  # not views of the buffers

    def shared_memory_room(self) -> dict[str, int]:
        """Rank 0: the full weights' bytes and /dev/shm's free bytes (the ipc path's choice on CPU)."""
        from rayrl.workers.weight_sync import shared_memory_room

        return shared_memory_room(self.model.state_dict())

    def release_shared_weights(self) -> None:
        """Every engine has loaded the shared weights: free them (on a GPU, the blocks the engines mapped)."""
        if self._shared is not None:
            self._shared.close()
            self._shared = None
        if self.device.type == "cuda":
            torch.cuda.ipc_collect()
        self._release_cached_memory()

    def export_hf(self, directory: str) -> dict[str, dict]:
        """Write the policy as a Hugging Face model directory, every rank its own shards in parallel (a
        collective); rank 0 adds the config and tokenizer and returns the digests of every file, the others
        nothing. Reads the weights only: an async save still staging them is unaffected."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        from rayrl.checkpoint.hf import save_hf_weights

        save_hf_weights(get_model_state_dict(self.model), directory, self.rank, tied=self._tied_names())
        if self.rank != 0:
            return {}
        self.model.config.save_pretrained(directory)
        self.model.generation_config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return digest_tree(directory)

    def _tied_names(self) -> set[str]:
        """The second and later names of a parameter shared under several names (tied embeddings)."""
        names: dict[int, list[str]] = {}
        for name, param in self.model.named_parameters(remove_duplicate=False):
            names.setdefault(id(param), []).append(name)
        return {name for same in names.values() for name in same[1:]}

    def _release_cached_memory(self) -> None:
        """On a GPU shared with engines (a fractional rollout or reference share), hand the allocator's
        cached blocks back after training and after the weight gather, so that the engines can use them."""
        cfg = self.cfg
        engines = [cfg.rollout, cfg.reference] if cfg.reference.enabled else [cfg.rollout]
        shared = [r for r in engines if 0 < r.num_gpus_per_worker < 1]
        if self.device.type == "cuda" and shared:
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------- checkpoint
    def _dcp_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {MODEL_KEY: model_sd, OPTIMIZER_KEY: optim_sd}

    def save_checkpoint(self, directory: str, async_save: bool) -> dict[str, dict] | None:
        """Write this rank's shards and extra state; returns their digests, or None while writing async."""
        storage = self._storage(directory)
        storage.makedirs(directory)
        extra = self._extra_state()
        extra_name = extra_state_file(self.rank)
        self._extra_digest = {extra_name: write_torch(storage, storage.join(directory, extra_name), extra)}
        self._save_digests = None
        self.ckpt.save(directory, self._dcp_state(), async_save)
        return None if async_save else self.checkpoint_status(block=True)

    def _extra_state(self) -> dict[str, Any]:
        # The schedule itself is not saved (the config that resumes defines it): only its step count.
        return {"rng": capture_rng_state(), "lr_scheduler": {"last_epoch": self.scheduler.last_epoch},
                "world_size": self.world_size}

    def checkpoint_status(self, block: bool) -> dict[str, dict] | None:
        """Digests of the last save once its files are on disk (re-raising a background error), else None.
        The shards are hashed in the background, so a finished save costs this call nothing."""
        if self._save_digests is None:
            if not block and not self.ckpt.done():
                return None
            shards = self.ckpt.wait()
            if shards is None:
                raise RuntimeError("checkpoint_status: no checkpoint save was started on this rank")
            self._save_digests = {**shards, **self._extra_digest}
        return self._save_digests

    def abandon_save(self) -> None:
        """Recovery keeps this rank: finish a save in flight the manager dropped, and forget it."""
        self.ckpt.abandon()
        self._save_digests = None

    def _storage(self, directory: str) -> Any:
        from rayrl.checkpoint.storage import storage_for

        return storage_for(directory, self.cfg.runner.checkpoint.storage_options)

    def load_checkpoint(self, directory: str, saved_world_size: int, step: int) -> None:
        """Load shards (resharding to this world size) and this rank's extra state. Every rank the checkpoint
        was saved with must find its own extra state (else CheckpointInvalid, raised by every rank alike before
        any collective); ranks beyond ``saved_world_size`` seed their RNG with ``derived_seed(seed, "actor",
        rank, step)`` and take the LR step count that every rank shares from rank 0's."""
        from rayrl.checkpoint.compat import model_mismatch

        storage = self._storage(directory)
        missing = [r for r in range(saved_world_size) if not storage.isfile(storage.join(directory, extra_state_file(r)))]
        if missing:
            raise CheckpointInvalid(directory, f"missing {', '.join(extra_state_file(r) for r in missing)}: actor "
                                    f"rank {missing[0]} of the {saved_world_size} saved has no extra state "
                                    "(RNG, LR step) to load")
        self.ckpt.wait_staged()  # a save in flight must have copied the tensors out before they are loaded into
        state = self._dcp_state()
        # Read the metadata safely and check the shapes before DCP's own (unrestricted) unpickling and its
        # collectives: every rank sees the same files, so every rank refuses alike and none waits for the others.
        mismatch = model_mismatch(directory, {k: v.shape for k, v in state[MODEL_KEY].items()}, MODEL_KEY, storage)
        if mismatch is not None:
            step_dir = storage.parent(storage.join(directory))
            explicit = self.cfg.runner.resume_dir
            key = "runner.resume_dir" if explicit and storage.same(explicit, step_dir) else "actor.model"
            raise ConfigError(f"{key}: checkpoint {step_dir} does not fit actor.model: {mismatch}")
        self.ckpt.load(directory, state, verify=self.cfg.runner.checkpoint.verify_checksums)
        own = self.rank < saved_world_size
        self._apply_state(state, read_torch(storage, storage.join(directory, extra_state_file(self.rank if own else 0))),
                          own, step)

    # ---------------------------------------------------------------- in-memory copy of the newest checkpoint
    def memory_copy_nbytes(self) -> int:
        """Bytes of this rank's shards (model and optimizer): what one memory copy of its state holds."""
        return copy_nbytes(self._dcp_state())

    def memory_copy(self) -> dict[str, Any]:
        """This rank's state as the checkpoint just saved has it (called right after ``save_checkpoint``,
        before the next step): its local shards and extra state, as host tensors (rayrl.checkpoint.memory)."""
        return {"state": local_copy(self._dcp_state()), "extra": self._extra_state()}

    def hold_copy(self, copy: dict[str, Any]) -> dict[str, Any]:
        """A peer rank's memory copy, returned so that a copy of it lives in this node's object store."""
        return copy

    def load_memory_copy(self, copy: dict[str, Any], step: int) -> None:
        """Load this rank's state from its memory copy (same rank, same world size): no file read."""
        if copy["extra"]["world_size"] != self.world_size:
            raise ValueError(f"the memory copy of step {step} is of {copy['extra']['world_size']} actor ranks, "
                             f"not {self.world_size}")
        self.ckpt.wait_staged()
        self._apply_state(restore_local(self._dcp_state(), copy["state"]), copy["extra"], True, step)

    def _apply_state(self, state: dict[str, Any], extra: dict[str, Any], own: bool, step: int) -> None:
        """Set the loaded model and optimizer state, the LR schedule's step count and the RNG (``own``: this
        rank's saved RNG, else one derived for a rank beyond those saved)."""
        from torch.distributed.checkpoint.state_dict import set_state_dict

        from rayrl.workers.policy import apply_optimizer_config, build_scheduler

        set_state_dict(self.model, self.optimizer,
                       model_state_dict=state[MODEL_KEY], optim_state_dict=state[OPTIMIZER_KEY])
        apply_optimizer_config(self.optimizer, self.cfg.actor.optim)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.actor.optim, self.cfg.runner.max_steps,
                                         steps_done=int(extra["lr_scheduler"]["last_epoch"]))
        if own:
            restore_rng_state(extra["rng"])
        else:
            seed_rng_state(derived_seed(self.cfg.runner.seed, "actor", self.rank, step))

    def shutdown(self) -> None:
        """Close the checkpoint I/O and leave the process group (FSDP's mesh goes with it)."""
        self.ckpt.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def _num_micro_batches(rows: int, world_size: int, micro_batch_size: int) -> int:
    """The same count on every rank (FSDP collectives must match), from the largest rank's rows."""
    largest = -(-rows // world_size)
    return 1 if micro_batch_size <= 0 else max(1, -(-largest // micro_batch_size))
