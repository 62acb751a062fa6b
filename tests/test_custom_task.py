"""examples/custom_task end to end: the README's "Your own task" run (chat prompts, two reward functions of
its own), its reward rising; per-reward metrics, TensorBoard and W&B (offline) records, the closing lines and
the plot; a kill -9 and the same command again: bit-exact, and the same W&B run continued. Plus a reward
function that raises: exit 3 showing the sample."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import (
    EXPERIMENT, REPO, assert_same_weights, env_for_tests, events_named, final_weights, kill_session, output_of,
    read_metrics, rewards, run_dir, run_rayrl_split, shared_ray_env, spawn_rayrl, tracker_step, wait_until,
)

pytestmark = pytest.mark.slow

CONFIG = REPO / "examples/custom_task/config.yaml"
WANDB = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def custom_cmd(output_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "rayrl.main", "--config", str(CONFIG), f"runner.output_dir={output_dir}",
            f"runner.experiment_name={EXPERIMENT}", "runner.loggers=[console, tensorboard, wandb]", *overrides]


@pytest.fixture(scope="module")
def example_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("custom")
    proc = subprocess.run(custom_cmd(out), cwd=REPO, env=shared_ray_env(**WANDB), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return out, proc


def _wandb_run_ids(run: Path) -> list[str]:
    return sorted(p.name.rsplit("-", 1)[1] for p in (run / "wandb").glob("offline-run-*"))


def test_example_learns_and_records_each_reward(example_run):
    out, proc = example_run
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, 21))
    first, last = (sum(m["reward_mean"] for m in ms) / 5 for ms in (metrics[:5], metrics[-5:]))
    assert last > first + 0.1, [m["reward_mean"] for m in metrics]
    for m in metrics:  # the total is the weighted sum of the named rewards (weights 0.5 and 1.0)
        assert m["reward_mean"] == pytest.approx(0.5 * m["reward/format_reward"] + m["reward/correctness_reward"],
                                                 abs=1e-6)
        assert 0 <= m["reward/correctness_reward/answered"] <= 1
    first_line = (f"(correctness_reward {metrics[0]['reward/correctness_reward']:.3f}, "
                  f"format_reward {metrics[0]['reward/format_reward']:.3f})")
    assert first_line in proc.stdout  # the console line of step 1 shows each named reward
    assert "loggers: console, tensorboard, wandb (runner.loggers)" in proc.stdout
    run = run_dir(out)
    for line in (f"rayrl: metrics:     {run}/metrics.jsonl", f"rayrl: checkpoints: {run}/checkpoints",
                 f"rayrl: tensorboard: tensorboard --logdir {run}/tensorboard",
                 f"rayrl: plot:        python -m rayrl.plot {run} --out run.png"):
        assert line in proc.stdout
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    (run_id,) = _wandb_run_ids(run)
    assert (run / "wandb_run_id").read_text().strip() == run_id
    assert list((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))


def test_plot_command_shows_the_named_rewards(example_run, tmp_path):
    """The closing line's command, as a user runs it after the set-up (matplotlib is in the test extra)."""
    out, _ = example_run
    png = tmp_path / "run.png"
    proc = subprocess.run([sys.executable, "-m", "rayrl.plot", str(run_dir(out)), "--out", str(png)], cwd=REPO,
                          env=env_for_tests(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert png.stat().st_size > 10_000


def test_kill_9_then_same_command_is_bit_exact_and_continues_the_wandb_run(example_run, tmp_path):
    reference, _ = example_run
    sync = "runner.checkpoint.async_save=false"
    proc = spawn_rayrl(tmp_path, cmd=custom_cmd(tmp_path, sync), env=env_for_tests(**WANDB))
    try:
        wait_until(lambda: (tracker_step(tmp_path) or 0) >= 10 or proc.poll() is not None, timeout=300,
                   what="the checkpoint of step 10")
    finally:
        kill_session(proc)
    assert tracker_step(tmp_path) == 10, output_of(proc)[-3000:]
    run_id = (run_dir(tmp_path) / "wandb_run_id").read_text().strip()
    resumed = subprocess.run(custom_cmd(tmp_path, sync), cwd=REPO, env=shared_ray_env(**WANDB),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert [e["step"] for e in events_named(tmp_path, "resumed")] == [10]
    assert rewards(tmp_path) == rewards(reference)
    assert [m["reward/format_reward"] for m in read_metrics(tmp_path)] == \
        [m["reward/format_reward"] for m in read_metrics(reference)]
    assert_same_weights(final_weights(tmp_path, 20), final_weights(reference, 20))
    assert _wandb_run_ids(run_dir(tmp_path)) == [run_id, run_id]  # the killed run's and the resumed one's


def test_raising_reward_is_exit_3_showing_the_sample(tmp_path):
    proc = run_rayrl_split(tmp_path, "runner.max_steps=1", "data.reward_fn=tests.reward_fns:raising")
    assert proc.returncode == 3, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("rayrl: program error")]
    assert "reward function tests.reward_fns:raising (data.reward_fn) at step 1, sample 0 raised " \
           "ZeroDivisionError: the checker divided by zero; prompt '" in line
    assert "response '" in line
    assert events_named(tmp_path, "program_error") and not events_named(tmp_path, "failure")
