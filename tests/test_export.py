"""Export to a Hugging Face model directory: `python -m rayrl.export` and runner.checkpoint.export_hf_every.

One real run (2 steps, a save every step, an export every 2) gives a real actor checkpoint; its exports must
load with transformers' from_pretrained and give exactly the logits of the actor's weights at that step, read
independently with torch's dcp_to_torch_save.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from transformers import AutoModelForCausalLM, AutoTokenizer

from rayrl.checkpoint import read_manifest
from rayrl.checkpoint.format import (
    ACTOR_DIR,
    HF_DIR,
    M_FILES,
    MANIFEST_FILE,
    MODEL_KEY,
    TRAINER_STATE_FILE,
    step_dir_name,
)
from rayrl.config import ModelConfig, RayRLConfig, config_to_dict
from rayrl.export import export_hf
from rayrl.models.loading import load_model_and_tokenizer, save_model_dir
from tests.support import REPO, actor_weights, checkpoints_dir, env_for_tests, run_rayrl

PROMPTS = ["abab", "xyz 12!", "q"]
STEP_2 = step_dir_name(2)


def _export_cli(step_dir: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rayrl.export", str(step_dir), "--out", str(out)], cwd=REPO,
                          env=env_for_tests(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model.eval()(**batch).logits


def _hf_logits(model_dir: Path) -> torch.Tensor:
    return _logits(AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    proc = run_rayrl(out, "runner.max_steps=2", "runner.save_interval=1", "runner.checkpoint.export_hf_every=2")
    assert proc.returncode == 0, proc.stdout[-3000:]
    return checkpoints_dir(out)


@pytest.fixture(scope="module")
def actor_logits(run):
    """The logits of the actor's weights at step 2, and of the untrained policy, on the run's own model."""
    config = json.loads((run / STEP_2 / TRAINER_STATE_FILE).read_text())["config"]
    model, tokenizer = load_model_and_tokenizer(ModelConfig(**config["actor"]["model"]), config["runner"]["seed"])
    initial = _logits(model, tokenizer)
    model.load_state_dict(actor_weights(run / STEP_2))
    return _logits(model, tokenizer), initial


def test_periodic_export_lies_in_its_step_and_the_manifest_covers_it(run):
    assert not (run / step_dir_name(1) / HF_DIR).exists()  # 1 is not a multiple of export_hf_every=2
    listed = read_manifest(run / STEP_2)[M_FILES]
    for name in ("model-00001-of-00001.safetensors", "model.safetensors.index.json", "config.json",
                 "generation_config.json", "tokenizer.json"):
        assert f"{HF_DIR}/{name}" in listed


def test_cli_export_loads_with_from_pretrained_and_has_the_actors_logits(run, actor_logits, tmp_path):
    trained, initial = actor_logits
    proc = _export_cli(run / STEP_2, tmp_path / "model")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert not torch.equal(trained, initial), "training changed nothing: the comparison would prove nothing"
    assert torch.equal(_hf_logits(tmp_path / "model"), trained)
    assert torch.equal(_hf_logits(run / STEP_2 / HF_DIR), trained)


def test_cli_refuses_an_incomplete_step_and_an_occupied_out_dir(run, tmp_path):
    broken = tmp_path / STEP_2
    shutil.copytree(run / STEP_2, broken)
    (broken / MANIFEST_FILE).unlink()
    proc = _export_cli(broken, tmp_path / "a")
    assert proc.returncode == 2 and "manifest" in proc.stdout and not (tmp_path / "a").exists(), proc.stdout
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    proc = _export_cli(run / STEP_2, tmp_path / "b")
    assert proc.returncode == 2 and "not an empty directory" in proc.stdout, proc.stdout
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["keep.txt"]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_export_of_a_run_on_a_model_directory(tmp_path):
    """actor.model.path runs: the config and tokenizer come from that directory, the weights from the step."""
    base_cfg = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model, tokenizer = load_model_and_tokenizer(base_cfg, seed=3)
    save_model_dir(model, tokenizer, str(tmp_path / "base"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    step = tmp_path / step_dir_name(7)
    dcp.save({MODEL_KEY: model.state_dict()}, checkpoint_id=str(step / ACTOR_DIR), no_dist=True)
    cfg = RayRLConfig()
    cfg.actor.model = dataclasses.replace(cfg.actor.model, path=str(tmp_path / "base"))
    (step / TRAINER_STATE_FILE).write_text(json.dumps({"global_step": 7, "config": config_to_dict(cfg)}))
    export_hf(step, tmp_path / "out", verify=False)
    assert torch.equal(_hf_logits(tmp_path / "out"), _logits(model, tokenizer))
    assert not torch.equal(_hf_logits(tmp_path / "base"), _logits(model, tokenizer))
