"""The benchmarks: pure helpers, and quick mode end to end (a smoke test: no timing is asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.common import Figure, ratio_figure
from benchmarks.dist import BYTES_PER_PARAM, model_config
from benchmarks.overhead import mode_of
from benchmarks.run import format_table
from tests.support import REPO, env_for_tests

FIGURES = {
    "io.rayrl_save_vs_disk", "io.rayrl_save_vs_dcp", "io.rayrl_save_vs_torch",
    "io.rayrl_load_vs_disk", "io.rayrl_load_vs_dcp", "io.rayrl_load_vs_torch",
    "io.s3_save_vs_local_disk", "io.s3_load_vs_local_disk",
    "async.blocking_vs_sync_save",
    "overhead.step_time_async_save_every_step_vs_none", "overhead.step_time_sync_save_every_step_vs_none",
    "overhead.loop_blocked_async_save_vs_sync_save",
    "recovery.actor_kill_vs_cold_restart",
    "resume.first_step_resuming_vs_fresh",
    "rewards.step_time_parallel_vs_serial_coordinator",
}


@pytest.mark.parametrize("gb", [0.01, 0.2, 1.0, 4.0])
def test_model_config_hits_the_state_size(gb):
    cfg = model_config(gb)
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=100, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, tie_word_embeddings=True))
    state = sum(p.numel() for p in model.parameters()) * BYTES_PER_PARAM / 1e9
    assert abs(state - gb) / gb < 0.5  # whole layers: within half a layer of the target


def test_phases_cycle_after_the_warm_up():
    modes = [mode_of(step, phase_steps=2, warmup=1) for step in range(1, 9)]
    assert modes == ["none", "none", "none", "async", "async", "sync", "sync", "none"]


def test_ratio_figure_checks_the_target_in_its_direction():
    faster = ratio_figure("q", "save", [0.9, 1.0, 5.0], "GB/s", "disk", [1.0, 1.1, 1.2], 0.8)
    assert faster.value == 1.0 and faster.reference == 1.1 and faster.met  # medians: 1.0 / 1.1 >= 0.8
    assert faster.spread == "0.9..5"
    blocking = ratio_figure("q", "block", [0.3], "s", "sync", [1.0], 0.1, at_least=False)
    assert blocking.met is False and blocking.target == "<= 0.1"


def test_table_lists_every_figure():
    figs = [Figure("io", "a", 1.5, "GB/s", "disk", 2.0, 0.75, ">= 0.8", False),
            Figure("async", "b", 0.1, "s", "sync", 1.0, 0.1, "", None)]
    table = format_table(figs).splitlines()
    assert len(table) == 4 and "io.a" in table[2] and "NO" in table[2] and "async.b" in table[3]


@pytest.mark.slow
@pytest.mark.timeout(1500)  # every benchmark's quick code path once: six driver launches
def test_quick_mode_runs_every_benchmark(tmp_path):
    out = tmp_path / "figures.jsonl"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--work-dir", str(tmp_path / "work"),
                           "--json", str(out)], cwd=REPO, env=env_for_tests(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=1400)
    assert proc.returncode == 0, proc.stdout[-5000:]
    figures = [json.loads(line) for line in out.read_text().splitlines()]
    assert {f["figure"] for f in figures} == FIGURES
    for f in figures:
        assert math.isfinite(f["ratio"]) and f["value"] > 0 and f["reference"] > 0, f
    assert all(name in proc.stdout for name in FIGURES)  # the table


def test_vs_trl_figures_from_step_records():
    from benchmarks.vs_trl import SAMPLES_PER_STEP, phases, reward_means, samples_per_s

    # a resumed run: steps 3 and 4 recorded twice, the later records count; 4 intervals from step 1's end
    steps = [{"step": s, "time": 10.0 + s, "reward_mean": 0.0} for s in (1, 2, 3, 4)]
    steps += [{"step": s, "time": 20.0 + s, "reward_mean": float(s)} for s in (3, 4, 5, 6, 7, 8, 9, 10)]
    assert samples_per_s(steps) == SAMPLES_PER_STEP * 9 / (30.0 - 11.0)
    assert reward_means(steps) == (2.4, 8.0)  # steps 1-5: 0, 0, 3, 4, 5; steps 6-10
    every_other = [{"step": s, "time": float(s), "began": s - 0.5, "reward_mean": 0.0, "gen_s": 0.1, "prepare_s": 0.2}
                   for s in (1, 3, 5)]  # TRL's multi-step generation logs its generation steps only
    assert phases(every_other, "trl") == {}
    rest = phases([{**r, "step": r["step"] // 2 + 1} for r in every_other], "trl")["rest (checkpoint, loop)"]
    assert rest == 2.0 - 0.5  # interval 2 s, of which the step itself took 0.5
    with pytest.raises(SystemExit):
        from benchmarks.vs_trl import main

        main(["--steps", "20", "--kill-after", "19"])
