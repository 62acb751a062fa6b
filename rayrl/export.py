"""Export a checkpoint's policy as a Hugging Face model directory (safetensors, config, tokenizer).

    python -m rayrl.export <global_step_N dir> --out <dir>

The model config comes from the step's ``trainer_state.json`` (the run's own config) and the weights from the
actor's DCP shards (state key ``model``), read without a process group. The model itself is only a skeleton on
the meta device: it supplies the HF config and weight layout for ``save_pretrained`` without initialising (or,
for a hub model, loading) weights that would be thrown away, so the export holds one full copy of the weights
and nothing more. The directory is written into a hidden sibling and renamed into place: a crash never leaves a
half-written directory under the final name. Exit status: 0 done, 2 bad arguments or an unusable checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from rayrl.checkpoint.compat import read_dcp_metadata, saved_shapes, shape_mismatch
from rayrl.checkpoint.errors import CheckpointError
from rayrl.checkpoint.format import ACTOR_DIR, MODEL_KEY, TRAINER_STATE_FILE
from rayrl.checkpoint.manifest import verify_checkpoint
from rayrl.checkpoint.safe_io import fsync_dir, fsync_tree, temp_name
from rayrl.checkpoint.storage import Storage, storage_for
from rayrl.config import ModelConfig

log = logging.getLogger(__name__)


def export_hf(step_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], verify: bool = True) -> Path:
    """Write the policy of checkpoint ``step_dir`` as a HF model directory ``out_dir``; returns its path.

    ``verify`` checks the step's manifest (sizes and checksums) first; off, a directory without a manifest
    (DCP files and a trainer_state.json written by other means) is exported too. Raises ``CheckpointError``.
    A run's periodic exports (``export_hf_every``) are written by the actor ranks, not by this.
    """
    storage = storage_for(step_dir)  # a local path or a URL (credentials from the store's environment variables)
    step, out = storage.join(step_dir), Path(out_dir)
    if verify:
        verify_checkpoint(step, check_checksums=True, storage=storage)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(out, "already exists and is not an empty directory")
    model_cfg, seed = _model_config(storage, step)
    model, tokenizer = _skeleton(model_cfg, seed)
    weights = _read_weights(storage, storage.join(step, ACTOR_DIR),
                            {k: v.shape for k, v in model.state_dict().items()})
    temp = out.parent / temp_name(out.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        _save_quietly(model, tokenizer, temp, weights)
        fsync_tree(temp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(temp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    log.info("Exported %s as a Hugging Face model to %s", step, out)
    return out


def _model_config(storage: Storage, step: Path | str) -> tuple[ModelConfig, int]:
    """The run's ``actor.model`` config and seed, as saved with the step."""
    path = storage.join(step, TRAINER_STATE_FILE)
    try:
        config = json.loads(storage.read_bytes(path))["config"]
        saved = config["actor"]["model"]
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in saved.items() if k in known}), int(config["runner"]["seed"])
    except FileNotFoundError:
        raise CheckpointError(path, "does not exist: not a step directory") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(path, f"no usable run config in it ({type(e).__name__}: {e})") from None


def _skeleton(model_cfg: ModelConfig, seed: int) -> tuple[Any, Any]:
    """The model on the meta device (config and layout, no weights) and its tokenizer. The tiny model's
    builder seeds the global CPU generator and restores it on exit (fork_rng)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from rayrl.models.loading import DTYPES, load_model_and_tokenizer

    if model_cfg.path is None:
        with torch.device("meta"):
            return load_model_and_tokenizer(model_cfg, seed)
    remote = model_cfg.trust_remote_code
    try:
        config = AutoConfig.from_pretrained(model_cfg.path, trust_remote_code=remote)
        tokenizer = AutoTokenizer.from_pretrained(model_cfg.path, trust_remote_code=remote)
    except (OSError, ValueError) as e:
        raise CheckpointError(model_cfg.path, f"cannot read the run's model config or tokenizer: {e}") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=remote,
                                                 dtype=DTYPES[model_cfg.dtype])
    return model, tokenizer


def _read_weights(storage: Storage, dcp_dir: Path | str, expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights saved under ``model``, read without a process group.

    The metadata is read safely and compared with the model first, so a checkpoint of another model fails
    with one line naming the tensor instead of an assertion deep inside DCP's planner.
    """
    import torch.distributed.checkpoint as dcp

    from rayrl.checkpoint.dcp_io import dcp_reader

    metadata = read_dcp_metadata(dcp_dir, storage)
    mismatch = shape_mismatch(saved_shapes(metadata, MODEL_KEY), expected)
    if mismatch is not None:
        raise CheckpointError(dcp_dir, f"does not fit the run's model config: {mismatch}")
    prefix = f"{MODEL_KEY}."
    weights = {fqn[len(prefix):]: torch.empty(tuple(md.size), dtype=md.properties.dtype)
               for fqn, md in metadata.state_dict_metadata.items()
               if fqn.startswith(prefix) and fqn[len(prefix):] in expected}
    with warnings.catch_warnings():  # "torch.distributed is disabled ... single process": exactly the intent
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({MODEL_KEY: weights}, storage_reader=dcp_reader(storage, str(dcp_dir)), no_dist=True)
    return weights


def _save_quietly(model: Any, tokenizer: Any, out: Path, weights: dict[str, torch.Tensor]) -> None:
    """``save_model_dir`` without transformers' progress bars."""
    from transformers.utils import logging as hf_logging

    from rayrl.models.loading import save_model_dir

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        save_model_dir(model, tokenizer, str(out), state_dict=dict(weights))  # save_pretrained pops from it
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rayrl.export",
        description="Write the policy of a rayrl checkpoint as a Hugging Face model directory.")
    parser.add_argument("step_dir", help="a checkpoint step directory, e.g. logs/run/checkpoints/global_step_20, "
                        "or its URL (s3://bucket/prefix/global_step_20)")
    parser.add_argument("--out", required=True, help="the model directory to create (must not exist, or be empty)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = export_hf(args.step_dir, args.out)
    except CheckpointError as e:
        print(f"rayrl.export: {e}", file=sys.stderr)
        return 2
    print(f"rayrl.export: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
