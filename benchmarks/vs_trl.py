"""``python -m benchmarks.vs_trl``: rayrl against TRL's GRPOTrainer on the same GRPO work, on this machine.

The work (issue 20): the built-in tiny Llama saved as a Hugging Face directory, the copy_pattern task and its
reward, 8 prompts x 8 samples a step, 12 new tokens, lr 3e-3 (constant), KL 0.01, clip 0.2, seed 1, on CPU.
TRL 1.16 runs as its users run it, one process (torch's default threads), in its own venv (.venv-trl,
scripts/setup_trl_env.sh; benchmarks/trl_job.py); rayrl runs its default job through the driver, colocated
and split. Every figure is a ratio of numbers from this one run:

- samples per second without checkpoints and with one every step, over the steps after the first (which
  carries the warm-up of both), each interval between two finished steps including the checkpoint between;
- the mean reward of the first and the last five steps (do both learn alike?);
- kill -9 once the checkpoint of step ``--kill-after`` is complete (in the next step), then the same command
  (TRL: ``resume_from_checkpoint=True``): are the final weights bit-identical to the uninterrupted run's;
- TRL's multi-step generation (``steps_per_generation=2``) killed after the checkpoint of an odd step, inside
  a generation batch: what the resume loses;
- where a step's time goes in each system (generation, rewards and log-probs, training, the rest).

    python -m benchmarks.vs_trl [--steps 20] [--kill-after 10] [--work-dir DIR] [--json FILE] [--check]

``--check``: prepare the work and check both sides can start (the TRL venv imports), train nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO
from benchmarks.driver import launch

TRL_PYTHON = REPO / ".venv-trl" / "bin" / "python"
TRL_JOB = REPO / "benchmarks" / "trl_job.py"
SAMPLES_PER_STEP = 64  # 8 prompts x 8 samples, both systems
# rayrl's side of the work: its default job, back from the driver helper's small benchmark sizes, every
# checkpoint kept (as TRL keeps them)
WORK = ["data.batch_size=8", "data.num_samples=4096", "rollout.n_samples_per_prompt=8", "rollout.max_new_tokens=12",
        "runner.checkpoint.max_to_keep=null", "reference.enabled=true"]
TIMEOUT_S = 1800.0


def prepare(work: Path) -> tuple[Path, Path]:
    """The tiny Llama as a HF directory and the copy_pattern prompts as JSONL, as rayrl builds them."""
    from rayrl.config import ModelConfig
    from rayrl.data.tasks import CyclicPatternTask
    from rayrl.models.loading import load_model_and_tokenizer

    model_dir, data = work / "tiny-llama", work / "copy_pattern.jsonl"
    model, tokenizer = load_model_and_tokenizer(ModelConfig(), seed=1)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    with open(data, "w") as f:
        for item in CyclicPatternTask("copy_pattern", 2).build_dataset(4096, seed=1):
            f.write(json.dumps(item) + "\n")
    return model_dir, data


# ------------------------------------------------------------------------------------------- rayrl side

def rayrl_run(work: Path, name: str, model_dir: Path, steps: int, save_interval: int, placement: str,
              kill_after: int | None = None) -> dict:
    """One rayrl run (killed with SIGKILL once the checkpoint of step ``kill_after`` is committed, then the
    same command again); its step records and final weights."""
    overrides = [*WORK, f"actor.model.path={model_dir}", f"runner.max_steps={steps}",
                 f"runner.save_interval={save_interval}", f"runner.placement={placement}"]
    run = launch(work, name, overrides)
    try:
        if kill_after is not None:
            tracker = run.run_dir / "checkpoints" / "latest_checkpointed_iteration.txt"
            run.wait_for(f"checkpoint {kill_after}", lambda r: tracker.exists() and
                         int(tracker.read_text() or 0) >= kill_after, TIMEOUT_S)
            run.kill()
            run = launch(work, name, overrides)
        run.wait_exit(TIMEOUT_S)
    finally:
        run.kill()
    records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return {"steps": records, "weights": _rayrl_weights(run.run_dir / "checkpoints" / f"global_step_{steps}")}


def _rayrl_weights(step_dir: Path) -> dict:
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(str(step_dir / "actor"), f"{tmp}/full.pt")
        return torch.load(f"{tmp}/full.pt", weights_only=True)["model"]


# --------------------------------------------------------------------------------------------- TRL side

def trl_run(work: Path, name: str, model_dir: Path, data: Path, steps: int, save_every: int,
            steps_per_generation: int = 1, kill_after: int | None = None) -> dict:
    """One TRL run (killed with SIGKILL once the checkpoint of step ``kill_after`` is complete, its trainer
    state written last, then resumed with ``resume_from_checkpoint=True``); its step records and final weights."""
    out = work / name
    cmd = [str(TRL_PYTHON), str(TRL_JOB), "--model", str(model_dir), "--data", str(data), "--out", str(out),
           "--steps", str(steps), "--save-every", str(save_every), "--steps-per-generation", str(steps_per_generation)]
    log = open(work / f"{name}.log", "a")
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        if kill_after is not None:
            deadline = time.monotonic() + TIMEOUT_S
            while not (out / "checkpoints" / f"checkpoint-{kill_after}" / "trainer_state.json").exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"TRL run {name} ended or stalled before checkpoint {kill_after}: see {log.name}")
                time.sleep(0.02)
            proc.kill()
            proc.wait()
            proc = subprocess.Popen([*cmd, "--resume"], stdout=log, stderr=subprocess.STDOUT)
        if proc.wait(timeout=TIMEOUT_S) != 0:
            raise RuntimeError(f"TRL run {name} exited {proc.returncode}: see {log.name}")
    finally:
        log.close()
    from safetensors.torch import load_file

    return {"steps": _records(out / "steps.jsonl"), "weights": load_file(out / "final" / "model.safetensors")}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


# ------------------------------------------------------------------------------------------- the figures

def samples_per_s(steps: list[dict]) -> float:
    """Samples per second from the end of the first step to the end of the last (the last run of a resumed
    one: records of a step done twice count once, the later)."""
    ends = {r["step"]: r["time"] for r in steps}
    first, last = min(ends), max(ends)
    return SAMPLES_PER_STEP * (last - first) / (ends[last] - ends[first])


def reward_means(steps: list[dict]) -> tuple[float, float]:
    rewards = {r["step"]: r["reward_mean"] for r in steps}
    order = sorted(rewards)
    return statistics.mean(rewards[s] for s in order[:5]), statistics.mean(rewards[s] for s in order[-5:])


def same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def phases(steps: list[dict], system: str) -> dict[str, float]:
    """Median seconds per step in each phase, steps after the first."""
    ends = {r["step"]: r["time"] for r in steps}  # TRL's multi-step generation logs every other step only
    later = [r for r in steps if r["step"] - 1 in ends and ends[r["step"] - 1] < r["time"]]
    if not later:
        return {}
    interval = statistics.median(ends[r["step"]] - ends[r["step"] - 1] for r in later)
    if system == "rayrl":
        out = {"generate+score": statistics.median(r["gen_time_s"] + r["score_time_s"] for r in later),
               "reference": statistics.median(r["ref_time_s"] for r in later),
               "train": statistics.median(r["train_time_s"] for r in later),
               "weight sync": statistics.median(r["sync_time_s"] for r in later)}
    else:
        out = {"generate+score": statistics.median(r["gen_s"] for r in later),
               "reference": statistics.median(r["prepare_s"] - r["gen_s"] for r in later),
               "train": statistics.median(r["time"] - r["began"] - r["prepare_s"] for r in later),
               "weight sync": 0.0}
    out["rest (checkpoint, loop)"] = interval - sum(out.values())
    return {k: round(v, 4) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vs_trl", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--kill-after", type=int, default=10, help="kill -9 once this step's checkpoint is complete")
    p.add_argument("--work-dir", type=Path, help="scratch directory (default: a temp dir, removed after)")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    p.add_argument("--check", action="store_true", help="prepare the work and check both sides start; no runs")
    args = p.parse_args(argv)
    if not 1 <= args.kill_after < args.steps - 1:
        p.error(f"--kill-after must be in 1..{args.steps - 2} (got {args.kill_after})")
    if not TRL_PYTHON.exists():
        print(f"vs_trl: {TRL_PYTHON} missing: run bash scripts/setup_trl_env.sh first", file=sys.stderr)
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="rayrl-vs-trl-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model_dir, data = prepare(work)
        if args.check:
            subprocess.run([str(TRL_PYTHON), "-c", "import trl, torch, transformers"], check=True)
            print(f"vs_trl: ready ({model_dir}, {data})")
            return 0
        results = compare(work, model_dir, data, args.steps, args.kill_after)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(report(results, args.steps, args.kill_after))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def compare(work: Path, model_dir: Path, data: Path, steps: int, kill_after: int) -> dict:
    """Every run, the two systems interleaved so that a drift of this shared machine's load hits both."""
    runs: dict[str, dict] = {}
    plan = [
        ("trl_no_ckpt", lambda: trl_run(work, "trl_no_ckpt", model_dir, data, steps, 0)),
        ("colocated_no_ckpt", lambda: rayrl_run(work, "colocated_no_ckpt", model_dir, steps, 0, "colocated")),
        ("split_no_ckpt", lambda: rayrl_run(work, "split_no_ckpt", model_dir, steps, 0, "split")),
        ("trl_ckpt", lambda: trl_run(work, "trl_ckpt", model_dir, data, steps, 1)),
        ("colocated_ckpt", lambda: rayrl_run(work, "colocated_ckpt", model_dir, steps, 1, "colocated")),
        ("split_ckpt", lambda: rayrl_run(work, "split_ckpt", model_dir, steps, 1, "split")),
        ("trl_killed", lambda: trl_run(work, "trl_killed", model_dir, data, steps, 1, kill_after=kill_after)),
        ("colocated_killed", lambda: rayrl_run(work, "colocated_killed", model_dir, steps, 1, "colocated",
                                               kill_after=kill_after)),
        ("trl_multi", lambda: trl_run(work, "trl_multi", model_dir, data, steps, 1, steps_per_generation=2)),
        ("trl_multi_killed", lambda: trl_run(work, "trl_multi_killed", model_dir, data, steps, 1,
                                             steps_per_generation=2, kill_after=kill_after | 1)),
    ]
    for name, start in plan:
        t0 = time.perf_counter()
        runs[name] = start()
        print(f"# {name}: {time.perf_counter() - t0:.0f} s, load average {_load()}", flush=True)
    return summarise(runs)


def summarise(runs: dict[str, dict]) -> dict:
    """The figures of every run (its step records and final weights, by name as ``compare`` plans them)."""
    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "load_average_end": _load(), "runs": {}}
    for name, run in runs.items():
        first5, last5 = reward_means(run["steps"])
        system = "trl" if name.startswith("trl") else "rayrl"
        out["runs"][name] = {"samples_per_s": round(samples_per_s(run["steps"]), 2), "reward_first5": round(first5, 4),
                             "reward_last5": round(last5, 4), "phases_s": phases(run["steps"], system)}
    for killed, whole in (("trl_killed", "trl_ckpt"), ("colocated_killed", "colocated_ckpt"),
                          ("trl_multi_killed", "trl_multi")):
        out["runs"][killed]["same_final_weights_as_uninterrupted"] = same_weights(runs[killed]["weights"],
                                                                                  runs[whole]["weights"])
    return out


def report(results: dict, steps: int, kill_after: int) -> str:
    r = results["runs"]
    lines = [f"# python -m benchmarks.vs_trl --steps {steps} --kill-after {kill_after}: {results['date']}, "
             f"load average at the end {results['load_average_end']}", "",
             "| run | samples/s | vs TRL | reward first 5 | reward last 5 | kill -9 + resume = uninterrupted |",
             "|---|---|---|---|---|---|"]
    for name, row in r.items():
        trl = r.get("trl_" + name.split("_", 1)[1]) if not name.startswith("trl") else None
        versus = f"{row['samples_per_s'] / trl['samples_per_s']:.2f}x" if trl else ""
        same = row.get("same_final_weights_as_uninterrupted", "")
        lines.append(f"| {name} | {row['samples_per_s']:.1f} | {versus} | "
                     f"{row['reward_first5']:.3f} | {row['reward_last5']:.3f} | {same} |")
    lines += ["", "| run | " + " | ".join(r["colocated_ckpt"]["phases_s"]) + " |",
              "|---|" + "---|" * len(r["colocated_ckpt"]["phases_s"])]
    for name in ("trl_no_ckpt", "colocated_no_ckpt", "split_no_ckpt", "trl_ckpt", "colocated_ckpt", "split_ckpt"):
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in r[name]["phases_s"].values()) + " |")
    return "\n".join(lines)


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
