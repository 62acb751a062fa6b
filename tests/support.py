"""Shared helpers for tests that run rayrl for real: subprocesses, kills, and reading what a run left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = "t"

# A small, fast job: two actor ranks, one rollout worker, the reference on; ~0.1 s per step here.
FAST = [
    f"runner.experiment_name={EXPERIMENT}",
    "actor.model.hidden_size=32", "actor.model.num_layers=2", "actor.model.num_heads=2",
    "actor.model.intermediate_size=64",
    "data.batch_size=4", "data.num_samples=32", "rollout.n_samples_per_prompt=4", "rollout.max_new_tokens=8",
    "runner.restart_backoff_s=0.1",
]


def rayrl_cmd(output_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "rayrl.main", "--config", str(REPO / "configs/grpo_tiny.yaml"),
            f"runner.output_dir={output_dir}", *FAST, *overrides]


def env_for_tests(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def run_rayrl(output_dir: Path, *overrides: str, timeout: float = 300, env: dict | None = None
              ) -> subprocess.CompletedProcess:
    """Run the driver to completion; stdout and stderr together in ``.stdout``."""
    return subprocess.run(rayrl_cmd(output_dir, *overrides), cwd=REPO, env=env or env_for_tests(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def spawn_rayrl(output_dir: Path, *overrides: str, env: dict | None = None, cmd: list[str] | None = None
                ) -> subprocess.Popen:
    """Start the driver in its own session (so a kill can take its whole process group)."""
    log = tempfile.NamedTemporaryFile("w+", prefix="rayrl-test-", suffix=".log", delete=False)
    return subprocess.Popen(cmd or rayrl_cmd(output_dir, *overrides), cwd=REPO, env=env or env_for_tests(),
                            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def output_of(proc: subprocess.Popen) -> str:
    return Path(proc.stdout.name).read_text()


def kill_session(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the driver's whole process group (Ray's local processes included) and reap it."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def run_dir(output_dir: Path) -> Path:
    return output_dir / EXPERIMENT


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def tracker_step(output_dir: Path) -> int | None:
    try:
        return int((run_dir(output_dir) / "checkpoints/latest_checkpointed_iteration.txt").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def read_metrics(output_dir: Path) -> list[dict]:
    path = run_dir(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rewards(output_dir: Path) -> list[tuple[int, float]]:
    return [(m["step"], m["reward_mean"]) for m in read_metrics(output_dir)]


def actor_weights(step_dir: Path) -> dict[str, torch.Tensor]:
    """The model tensors of a checkpoint, read with torch's own DCP converter (as an outside tool would)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "full.pt"
        dcp_to_torch_save(str(step_dir / "actor"), str(out))
        return torch.load(out, weights_only=True)["model"]


def final_weights(output_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return actor_weights(run_dir(output_dir) / "checkpoints" / f"global_step_{step}")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ at {k}"
