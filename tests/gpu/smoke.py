"""The GPU smoke suite (tests/gpu/run.sh): rayrl's worker classes driven directly, without Ray, on one device.

Each check prints PASS, FAIL (with the reason) or N/A (a CUDA-only check on CPU: not counted as passed),
then one summary line ``N passed, M failed, K not applicable``; the exit status is 0 only when nothing
failed. On CPU (``--device cpu``, tests/test_gpu_smoke.py runs it in the main suite) the same checks run,
so the suite cannot rot before a GPU is at hand. The model is a small Qwen2 built here from a config with
random weights (no download); a single actor rank joins a real process group (nccl on CUDA, gloo on CPU).
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["abc", "hello", "xyz", "12 34"]  # for the model check
N_PROMPTS = 4
N_SAMPLES = 4


class NotApplicable(Exception):
    """A check that cannot run on this device (CUDA-only on CPU)."""


# ----------------------------------------------------------------------------------------------- set-up
def make_model_dir(root: Path) -> str:
    """A local Qwen2 model directory (config, random weights, rayrl's character tokenizer)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rayrl.models.tiny import build_tokenizer

    path = root / "qwen2-tiny"
    tok = build_tokenizer(str(path))
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        Qwen2ForCausalLM(config).save_pretrained(str(path))
    return str(path)


def make_config(model_dir: str, gpus: float, *extra: str) -> Any:
    from rayrl.config import load_config

    return load_config(None, [f"actor.model.path={model_dir}", "actor.world_size=1",
                              f"actor.num_gpus_per_worker={gpus:g}", f"rollout.num_gpus_per_worker={gpus:g}",
                              f"reference.num_gpus_per_worker={gpus:g}", f"rollout.n_samples_per_prompt={N_SAMPLES}",
                              "rollout.max_new_tokens=8", "runner.max_steps=10", "actor.optim.lr=1e-2",
                              f"runner.output_dir={tempfile.gettempdir()}", *extra])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_actor(cfg: Any) -> Any:
    from rayrl.workers.actor import ActorWorker

    actor = ActorWorker(cfg, 0, 1)
    actor.setup("127.0.0.1", free_port())
    return actor


def prompt_items(cfg: Any) -> list[dict]:
    """A few prompt items of the configured task, as the coordinator hands them to the rollout workers."""
    from rayrl.data.tasks import get_task

    return get_task(cfg.data).build_dataset(N_PROMPTS, cfg.runner.seed)


def make_batch(cfg: Any) -> dict:
    """One step's batch as the coordinator builds it, from the hf engine's samples."""
    import torch

    from rayrl.workers.rollout import RolloutWorker

    rollouts = RolloutWorker(cfg, 0).generate(prompt_items(cfg), N_SAMPLES, 1, 0)
    rewards = torch.arange(len(rollouts.response_texts), dtype=torch.float32) % 3
    from rayrl.algorithms.grpo import group_advantages

    return {"prompt_ids": rollouts.prompt_ids, "prompt_mask": rollouts.prompt_mask,
            "response_ids": rollouts.response_ids, "response_mask": rollouts.response_mask,
            "advantages": group_advantages(rewards, N_SAMPLES, True)}


def full_weights(actor: Any) -> dict:
    return {k: v.detach().clone() for k, v in actor.full_state_dict().items()}


def same(a: dict, b: dict, exact: bool) -> list[str]:
    import torch

    def eq(x, y):
        return torch.equal(x, y) if exact else torch.allclose(x.float(), y.float(), rtol=1e-4, atol=1e-5)

    return [k for k in a if not eq(a[k], b[k])]


# ----------------------------------------------------------------------------------------------- checks
class Suite:
    def __init__(self, device: str, work: Path) -> None:
        self.device, self.work = device, work
        self.gpus = 1.0 if device == "cuda" else 0.0
        self.exact = device == "cpu"  # CPU kernels are bit-exact run to run; CUDA's only in deterministic mode
        self.model_dir = ""
        self.batch: dict = {}

    def cuda_only(self) -> None:
        if self.device != "cuda":
            raise NotApplicable("CUDA only")

    def check_imports(self) -> str:
        import rayrl.checkpoint.sharded  # noqa: F401
        import rayrl.config  # noqa: F401
        import rayrl.engines.hf  # noqa: F401
        import rayrl.workers.actor  # noqa: F401
        import rayrl.workers.reference  # noqa: F401
        import rayrl.workers.rollout  # noqa: F401
        import torch

        assert "ray" not in sys.modules, "a worker module imported ray"
        if self.device == "cuda":
            assert torch.cuda.is_available(), "CUDA not available"
        return f"torch {torch.__version__}, cuda {torch.version.cuda}, no ray"

    def check_model(self) -> str:
        import torch

        from rayrl.models.loading import load_model_and_tokenizer

        self.model_dir = make_model_dir(self.work)
        cfg = make_config(self.model_dir, self.gpus)
        model, tok = load_model_and_tokenizer(cfg.actor.model, cfg.runner.seed)
        model.to(self.device)
        ids = tok(PROMPTS, return_tensors="pt", padding=True)["input_ids"].to(self.device)
        logits = model(input_ids=ids).logits
        assert torch.isfinite(logits).all(), "non-finite logits"
        return f"{type(model).__name__}, {sum(p.numel() for p in model.parameters())} parameters"

    def _train_three(self, mixed: bool) -> str:
        import torch

        cfg = make_config(self.model_dir, self.gpus, f"actor.mixed_precision={str(mixed).lower()}")
        if not self.batch:
            self.batch = make_batch(cfg)
        actor = new_actor(cfg)
        try:
            before = full_weights(actor)
            stats = [actor.train_step(self.batch) for _ in range(3)]
            after = full_weights(actor)
            master = {p.dtype for p in actor.model.parameters()}
            with torch.no_grad():
                compute = actor.model(input_ids=self.batch["prompt_ids"].to(self.device)).logits.dtype
        finally:
            actor.shutdown()
        losses = [s["loss"] for s in stats]
        assert all(math.isfinite(s[k]) for s in stats for k in ("loss", "grad_norm")), f"stats {stats}"
        assert compute == (torch.bfloat16 if mixed else torch.float32), f"computes in {compute}"
        changed = len(same(before, after, exact=True))
        assert changed == len(before), f"only {changed} of {len(before)} tensors changed"
        assert master == {torch.float32}, f"master weights {master}"
        return (f"computes in {compute}, losses " + ", ".join(f"{x:.4f}" for x in losses)
                + ", grad norms " + ", ".join(f"{s['grad_norm']:.4f}" for s in stats))

    def check_actor_fp32(self) -> str:
        return self._train_three(mixed=False)

    def check_actor_mixed_precision(self) -> str:
        return self._train_three(mixed=True)

    def check_full_gather_logits(self) -> str:
        import torch

        from rayrl.models.loading import load_model_and_tokenizer

        cfg = make_config(self.model_dir, self.gpus)
        actor = new_actor(cfg)
        try:
            actor.train_step(self.batch)
            full, _ = load_model_and_tokenizer(cfg.actor.model, cfg.runner.seed)
            full.load_state_dict(actor.full_state_dict())
            full.to(self.device)
            ids = self.batch["prompt_ids"].to(self.device)
            with torch.no_grad():
                sharded, plain = actor.model(input_ids=ids).logits, full(input_ids=ids).logits
        finally:
            actor.shutdown()
        diff = (sharded.float() - plain.float()).abs().max().item()
        assert (torch.equal(sharded, plain) if self.exact else diff < 1e-4), f"max |diff| {diff:g}"
        return f"max |diff| {diff:g}"

    def check_weight_sync_handles(self) -> str:
        """The same-node weight sync (rayrl.workers.weight_sync, the ipc path) across two processes: this one
        is actor rank 0 and exports handles to its gathered weights (CUDA IPC on a GPU, host shared memory on
        CPU); a spawned one is the engine, opens them and loads them into an hf engine, and its logits must be
        the trained actor's."""
        import multiprocessing

        import torch

        cfg = make_config(self.model_dir, self.gpus)
        out = self.work / "engine_logits.pt"
        actor = new_actor(cfg)
        try:
            actor.train_step(self.batch)  # the engine starts from the initial weights: only a sync makes them equal
            handles = actor.share_full_state_dict(receivers=1)
            kinds = {kind for _, kind, _ in handles["tensors"]}
            child = multiprocessing.get_context("spawn").Process(
                target=_engine_process, args=(self.model_dir, self.gpus, handles, self.batch["prompt_ids"], str(out)))
            child.start()
            child.join(timeout=240)
            assert child.exitcode == 0, f"the engine process exited with {child.exitcode}"
            actor.release_shared_weights()
            with torch.no_grad():
                expected = actor.model(input_ids=self.batch["prompt_ids"].to(self.device)).logits.cpu()
        finally:
            actor.shutdown()
        got = torch.load(out, weights_only=True)
        diff = (got.float() - expected.float()).abs().max().item()
        assert (torch.equal(got, expected) if self.exact else diff < 1e-4), f"max |diff| {diff:g}"
        return f"{len(handles['tensors'])} {'/'.join(sorted(kinds))} handles; engine logits max |diff| {diff:g}"

    def check_async_save_and_load(self) -> str:
        cfg = make_config(self.model_dir, self.gpus)
        ckpt = self.work / "ckpt"
        actor = new_actor(cfg)
        try:
            actor.train_step(self.batch)
            for step in (1, 2):  # a second save reuses the stager (torch 2.11 broke reuse for some states)
                at_save = full_weights(actor)
                actor.save_checkpoint(str(ckpt / f"s{step}"), async_save=True)
                loss_after_save = actor.train_step(self.batch)["loss"]  # trains while the save is staged
                digests = actor.checkpoint_status(block=True)
                assert digests, "no files written"
        finally:
            actor.shutdown()
        fresh = new_actor(cfg)
        try:
            fresh.load_checkpoint(str(ckpt / "s2"), saved_world_size=1, step=2)
            bad = same(at_save, full_weights(fresh), exact=True)
            assert not bad, f"loaded weights differ from the state at save time: {bad[:3]}"
            again = fresh.train_step(self.batch)["loss"]
        finally:
            fresh.shutdown()
        ok = again == loss_after_save if self.exact else abs(again - loss_after_save) < 1e-4
        assert ok, f"next loss after load {again!r} != {loss_after_save!r} (optimizer or RNG state)"
        return f"2 saves, weights equal, next loss {again:.6f}"

    def check_cuda_rng_round_trip(self) -> str:
        self.cuda_only()
        import torch

        from rayrl.checkpoint.rng import capture_rng_state, restore_rng_state
        from rayrl.checkpoint.safe_io import load_torch, save_torch

        torch.cuda.manual_seed_all(3)
        path = self.work / "rng.pt"
        save_torch(capture_rng_state(), str(path))
        first = torch.rand(8, device="cuda")
        restore_rng_state(load_torch(str(path)))
        assert torch.equal(first, torch.rand(8, device="cuda")), "CUDA draws differ after restore"
        return f"{torch.cuda.device_count()} device state(s)"

    def check_hf_engine(self) -> str:
        import torch

        from rayrl.workers.rollout import RolloutWorker

        cfg = make_config(self.model_dir, self.gpus)
        w0, w1 = RolloutWorker(cfg, 0), RolloutWorker(cfg, 1)
        items = prompt_items(cfg)

        def sample(worker: RolloutWorker, step: int, first: int) -> torch.Tensor:
            return worker.generate(items, N_SAMPLES, step, first).response_ids

        rng_state = torch.cuda.get_rng_state if self.device == "cuda" else torch.get_rng_state
        before = rng_state()
        a1, a2, a1_other_chunk = sample(w0, 1, 0), sample(w0, 2, 0), sample(w0, 1, 8)
        assert torch.equal(rng_state(), before), f"generate moved the global {self.device} RNG"
        assert not torch.equal(a1, a2), "the same samples in two steps"
        assert not torch.equal(a1, a1_other_chunk), "the same samples for two chunks of a step"
        assert torch.equal(sample(w1, 1, 0), a1), "another worker draws other samples for the same chunk"
        return "new noise per step and per chunk; any worker draws a chunk the same"

    def check_reference_logprobs(self) -> str:
        import torch

        from rayrl.workers.reference import ReferenceWorker

        cfg = make_config(self.model_dir, self.gpus)
        ref = ReferenceWorker(cfg, 0).logprobs(self.batch)
        actor = new_actor(cfg)
        try:
            own = actor._logp(self.batch, torch.arange(ref.shape[0]))
        finally:
            actor.shutdown()
        diff = (ref - own).abs().max().item()
        assert torch.isfinite(ref).all() and diff < (1e-5 if self.exact else 1e-3), f"max |diff| {diff:g}"
        return f"max |diff| to the untrained actor {diff:g}"

    def check_determinism(self) -> str:
        without = _two_runs_identical(self.model_dir, self.gpus, deterministic=False)
        proc = subprocess.run([sys.executable, __file__, "--device", self.device, "--determinism-child",
                               self.model_dir], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise AssertionError(f"runner.deterministic child failed: {proc.stderr.strip().splitlines()[-1:]}")
        with_det = proc.stdout.strip().splitlines()[-1] == "identical"
        assert with_det, "runner.deterministic=true: two runs differ"
        if self.exact:
            assert without, "CPU: two runs differ without runner.deterministic"
        return f"deterministic=true identical; false {'identical' if without else 'differs (allowed on CUDA)'}"


def _engine_process(model_dir: str, gpus: float, handles: list, prompt_ids: Any, out: str) -> None:
    """The engine side of check_weight_sync_handles, in a process of its own: load rank 0's weights through
    its handles, then write the logits of ``prompt_ids``."""
    import torch

    from rayrl.workers.rollout import RolloutWorker

    worker = RolloutWorker(make_config(model_dir, gpus), 0)
    worker.load_shared_weights(handles)
    with torch.no_grad():
        logits = worker.engine.model(input_ids=prompt_ids.to(worker.engine.device)).logits
    torch.save(logits.cpu(), out)


def _two_runs_identical(model_dir: str, gpus: float, deterministic: bool) -> bool:
    """Two fresh actors, two steps on the same batch: bit-identical losses and weights?"""
    cfg = make_config(model_dir, gpus, f"runner.deterministic={str(deterministic).lower()}")
    batch = make_batch(cfg)
    runs = []
    for _ in range(2):
        actor = new_actor(cfg)
        try:
            runs.append(([actor.train_step(batch)["loss"] for _ in range(2)], full_weights(actor)))
        finally:
            actor.shutdown()
    return runs[0][0] == runs[1][0] and not same(runs[0][1], runs[1][1], exact=True)


# ----------------------------------------------------------------------------------------------- driver
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    parser.add_argument("--determinism-child", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.determinism_child:  # a fresh process: deterministic mode must be on before the first CUDA call
        print("identical" if _two_runs_identical(args.determinism_child, 1.0 if device == "cuda" else 0.0,
                                                 deterministic=True) else "differ")
        return 0
    results: list[str] = []
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rayrl-gpu-smoke-") as work:
        suite = Suite(device, Path(work))
        checks: list[tuple[str, Callable[[], str]]] = [
            (name[len("check_"):], getattr(suite, name)) for name in Suite.__dict__ if name.startswith("check_")]
        print(f"rayrl GPU smoke suite on {device} ({len(checks)} checks)", flush=True)
        for name, check in checks:
            t0 = time.monotonic()
            try:
                detail = check()
                results.append("pass")
                print(f"PASS {name} ({time.monotonic() - t0:.1f} s): {detail}", flush=True)
            except NotApplicable as why:
                results.append("n/a")
                print(f"N/A  {name}: {why}", flush=True)
            except Exception as err:  # noqa: BLE001 -- every check reports; the summary counts failures
                results.append("fail")
                print(f"FAIL {name} ({time.monotonic() - t0:.1f} s): {type(err).__name__}: {err}", flush=True)
                traceback.print_exc(file=sys.stderr)
    passed, failed, na = (results.count(r) for r in ("pass", "fail", "n/a"))
    print(f"{passed} passed, {failed} failed, {na} not applicable ({time.monotonic() - t_start:.0f} s)")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("RAYRL_WORKER_THREADS", "1")
    sys.exit(main())
