"""Config loading: defaults, YAML and overrides, interpolation, and one-line errors that name the key."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from rayrl.config import (
    ConfigError,
    RayRLConfig,
    config_to_dict,
    config_to_yaml,
    load_config,
    parse_args,
)

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "grpo_tiny.yaml")


def _write(tmp_path: Path, text: str, name: str = "job.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _error(config_path: str | None, overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(config_path, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _flat_keys(tree: dict, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for k, v in tree.items():
        keys |= _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return keys


def test_defaults_load() -> None:
    cfg = load_config(None, [])
    assert isinstance(cfg, RayRLConfig)
    assert cfg.runner.log_path == "./logs/grpo-tiny"
    assert cfg.runner.max_steps == 20 and cfg.runner.save_interval == 5 and cfg.runner.resume_mode == "auto"
    assert cfg.actor.world_size == 2 and cfg.actor.optim == RayRLConfig().actor.optim
    assert cfg.rollout.n_samples_per_prompt == 8 and cfg.runner.checkpoint.manager_class is None
    assert dataclasses.replace(cfg.runner, log_path=RayRLConfig().runner.log_path) == RayRLConfig().runner


def test_grpo_tiny_yaml_writes_out_every_default() -> None:
    import yaml

    written = yaml.safe_load(Path(TINY).read_text())
    assert _flat_keys(written) == _flat_keys(config_to_dict(RayRLConfig()))
    assert load_config(TINY, []) == load_config(None, [])


def test_yaml_then_overrides_last_wins(tmp_path: Path) -> None:
    path = _write(tmp_path, "runner:\n  max_steps: 7\n  seed: 3\nactor:\n  optim: {lr: 1e-4}\n")
    cfg = load_config(path, ["runner.max_steps=9", "runner.max_steps=11", "actor={world_size: 3}"])
    assert cfg.runner.max_steps == 11
    assert cfg.runner.seed == 3
    assert cfg.actor.optim.lr == pytest.approx(1e-4)
    assert cfg.actor.world_size == 3 and cfg.actor.num_cpus_per_worker == 1.0  # a mapping merges
    assert cfg.runner.resume_dir is None and cfg.data.path is None


def test_interpolation_defaults_overrides_and_user_yaml(tmp_path: Path) -> None:
    cfg = load_config(None, ["runner.output_dir=/tmp/out", "runner.experiment_name=e1"])
    assert cfg.runner.log_path == "/tmp/out/e1"
    path = _write(tmp_path, "runner:\n  experiment_name: run-${runner.seed}\n  log_path: ${runner.output_dir}/x\n")
    cfg = load_config(path, ["runner.seed=5"])
    assert cfg.runner.experiment_name == "run-5" and cfg.runner.log_path == "./logs/x"


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "message"),
    [
        ("", ["actor.wrld_size=3"], "actor.wrld_size: unknown key (did you mean actor.world_size?)"),
        ("actor:\n  wrld_size: 3\n", [], "actor.wrld_size: unknown key (did you mean actor.world_size?)"),
        ("", ["nosuch.key=1"], "nosuch: unknown key"),
        ("", ["runner.max_steps=abc"], "runner.max_steps: expected int (got 'abc')"),
        ("runner:\n  max_steps: 2.5\n", [], "runner.max_steps: expected int (got 2.5)"),
        ("", ["runner.save_on_preemption=maybe"], "runner.save_on_preemption: expected bool (got 'maybe')"),
        ("", ["actor=3"], "actor: expected a mapping (got 3)"),
        ("reference:\n", [], "reference: expected a mapping (got None)"),
        ("", ["actor.world_size=null"], "actor.world_size: expected int (got None)"),
        ("", ["actor.world_size.x=1"], "actor.world_size: expected int (got {'x': 1})"),
        ("", ["actor.world_size=0"], "actor.world_size: must be >= 1 (got 0)"),
        ("", ["runner.resume_mode=sometimes"], "runner.resume_mode: must be one of auto, disable (got 'sometimes')"),
        ("", ["runner.placement=mixed"], "runner.placement: must be one of split, colocated (got 'mixed')"),
        ("", ["runner.placement=colocated", "reference.num_gpus_per_worker=0.5"],
         "reference.num_gpus_per_worker: must be 0 with runner.placement=colocated and the actor on CPU"),
        ("", ["runner.placement=colocated", "actor.num_gpus_per_worker=1"],
         "rollout.num_gpus_per_worker: with runner.placement=colocated on GPU, the share of each actor rank's GPU"),
        ("", ["runner.standby.actor=-1"], "runner.standby.actor: must be >= 0 (got -1)"),
        ("", ["runner.placement=colocated", "runner.standby.rollout=1"],
         "runner.standby.rollout: standbys need runner.placement=split"),
        ("", ["actor.min_world_size=0"], "actor.min_world_size: must be >= 1 (got 0)"),
        ("", ["actor.min_world_size=3"], "actor.min_world_size: must be <= actor.world_size (got 3 > 2)"),
        ("", ["rollout.min_workers=0"], "rollout.min_workers: must be >= 1 (got 0)"),
        ("", ["rollout.min_workers=2"], "rollout.min_workers: must be <= rollout.num_workers (got 2 > 1)"),
        ("", ["runner.placement=colocated", "rollout.min_workers=1"],
         "rollout.min_workers: must be null with runner.placement=colocated"),
        ("", ["rollout.n_samples_per_prompt=1"], "rollout.n_samples_per_prompt: must be >= 2 (got 1)"),
        ("", ["rollout.top_p=0"], "rollout.top_p: must be in (0, 1] (got 0.0)"),
        ("", ["actor.optim.lr=nan"], "actor.optim.lr: must be a number (got nan)"),
        ("", ["runner.resume_dir=/x/y"], "runner.resume_dir: does not exist: /x/y"),
        ("", ["runner.checkpoint.keep_top_k=2"], "runner.checkpoint.keep_top_k: needs runner.checkpoint.metric"),
        ("", ["runner.checkpoint.max_to_keep=0"], "runner.checkpoint.max_to_keep: must be >= 1 (got 0)"),
        ("", ["runner.checkpoint.memory_replicas=2"], "runner.checkpoint.memory_replicas: must be in [0, 1] (got 2)"),
        ("", ["data.task=jsonl"], "data.path: required when data.task is 'jsonl'"),
        ("", ["actor.model.hidden_size=130"], "actor.model.hidden_size: must be a multiple of actor.model.num_heads"),
        ("", ["runner.log_path=${runner.nope}"], "runner.log_path: Interpolation key 'runner.nope' not found"),
        ("", ["runner.seed=???"], "runner.seed: has no value (???)"),
        ("", ["runner.max_steps"], "override 'runner.max_steps': expected key=value"),
        ("", ["configs/x.yaml"], "override 'configs/x.yaml': expected key=value (did you mean --config"),
        ("", ["a..b=1"], "override 'a..b=1': 'a..b' is not a dotted key"),
        ("", ["actor.mixed_precision=true", "actor.model.dtype=bfloat16"],
         "actor.mixed_precision: needs actor.model.dtype float32 for the master weights (got bfloat16)"),
        ("", ["actor.num_gpus_per_worker=0.5"], "actor.num_gpus_per_worker: must be 0 or a whole number"),
        ("", ["actor.num_gpus_per_worker=1.5"], "actor.num_gpus_per_worker: must be 0 or a whole number"),
        ("", ["rollout.num_gpus_per_worker=1.5"], "rollout.num_gpus_per_worker: must be <= 1 or a whole number"),
        ("", ["reference.num_gpus_per_worker=2.5"], "reference.num_gpus_per_worker: must be <= 1 or a whole"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, yaml_text: str, overrides: list[str], message: str) -> None:
    assert _error(_write(tmp_path, yaml_text), overrides).startswith(message)


def test_gpu_shares_that_ray_and_nccl_accept_load() -> None:
    cfg = load_config(None, ["actor.num_gpus_per_worker=2", "rollout.num_gpus_per_worker=0.25",
                             "reference.num_gpus_per_worker=3"])
    assert (cfg.actor.num_gpus_per_worker, cfg.rollout.num_gpus_per_worker) == (2, 0.25)


def test_resume_dir_must_be_an_existing_directory(tmp_path: Path) -> None:
    step = tmp_path / "global_step_5"
    assert _error(None, [f"runner.resume_dir={step}"]) == f"runner.resume_dir: does not exist: {step}"
    step.write_text("")
    assert _error(None, [f"runner.resume_dir={step}"]) == f"runner.resume_dir: not a directory: {step}"
    step.unlink()
    step.mkdir()
    assert load_config(None, [f"runner.resume_dir={step}"]).runner.resume_dir == str(step)


def test_keep_top_k_with_metric_loads() -> None:
    cfg = load_config(None, ["runner.checkpoint.keep_top_k=2", "runner.checkpoint.metric=reward_mean"])
    assert cfg.runner.checkpoint.keep_top_k == 2 and cfg.runner.checkpoint.metric == "reward_mean"


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    assert _error("foo.yaml", []) == "--config: file not found: foo.yaml"
    bad = _write(tmp_path, "runner:\n  max_steps: [1,\n  seed: 2\n")
    assert _error(bad, []).startswith(f"--config: invalid YAML in {bad} (line ")
    dup = _write(tmp_path, "runner:\n  seed: 1\n  seed: 2\n", "dup.yaml")
    assert _error(dup, []) == f"--config: invalid YAML in {dup} (line 3, column 3): found duplicate key seed"
    top = _write(tmp_path, "- 1\n", "list.yaml")
    assert _error(top, []).startswith(f"--config: {top}: the top level must be a mapping")
    assert _error(str(tmp_path), []).startswith(f"--config: cannot read {tmp_path}")


def test_dict_and_yaml_round_trip(tmp_path: Path) -> None:
    cfg = load_config(None, ["runner.experiment_name=rt", "runner.checkpoint.max_to_keep=2"])
    as_dict = config_to_dict(cfg)
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["runner"]["log_path"] == "./logs/rt" and as_dict["runner"]["checkpoint"]["max_to_keep"] == 2
    assert load_config(_write(tmp_path, config_to_yaml(cfg)), []) == cfg


def test_parse_args() -> None:
    assert parse_args([]) == (None, [])
    assert parse_args(["--config", "x.yaml", "a.b=1", "c=2"]) == ("x.yaml", ["a.b=1", "c=2"])
    assert parse_args(["a.b=1", "--config=y.yaml", "c=2"]) == ("y.yaml", ["a.b=1", "c=2"])
    for argv, message in ((["--config"], "--config"), (["--bogus"], "--bogus"), (["--conf", "x"], "--conf")):
        with pytest.raises(ConfigError, match=message):
            parse_args(argv)


def test_help_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["--help"])
    assert info.value.code == 0
    assert "usage: rayrl" in capsys.readouterr().out


def test_help_lists_the_exit_codes_of_the_readme(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    section = capsys.readouterr().out.split("exit status:")[1]
    in_help = re.findall(r"(?:^|;)\s*(\d+) ", section, re.M)
    readme = (REPO / "README.md").read_text().split("**Exit status**")[1].split("\n\n")[0]
    assert in_help and sorted(in_help) == sorted(re.findall(r"`(\d+)`", readme)), (in_help, readme)
