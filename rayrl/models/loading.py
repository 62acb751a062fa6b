"""Load the policy model and tokenizer from the model config; write HF model directories."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rayrl.models.tiny import build_tiny_model, build_tokenizer

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"actor.model.dtype={name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def load_model_and_tokenizer(model_cfg: Any, seed: int, on_meta: bool = False,
                             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model named by model_cfg (duck-typed ModelConfig), in eval mode, with a left-padding tokenizer.

    path None: the built-in tiny model initialised from `seed` (bit-identical in every process, which is what
    lets the actor, rollout and reference workers start from the same weights without shipping them).
    Otherwise a local HF directory or a hub name. The tokenizer always has a pad token (eos when missing).
    on_meta: the architecture only, its tensors on the meta device (no memory, no weights read), to be
    sharded before any rank allocates it.
    """
    dtype = _dtype(model_cfg.dtype)
    if model_cfg.path is None:
        tokenizer = build_tokenizer()
        with torch.device("meta") if on_meta else contextlib.nullcontext():
            model = build_tiny_model(
                hidden_size=model_cfg.hidden_size,
                num_layers=model_cfg.num_layers,
                num_heads=model_cfg.num_heads,
                intermediate_size=model_cfg.intermediate_size,
                vocab_size=len(tokenizer),
                seed=seed,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        return model.to(dtype), tokenizer

    path = model_cfg.path
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
        if on_meta:
            config = AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=model_cfg.trust_remote_code)
            model = model.to(dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, trust_remote_code=model_cfg.trust_remote_code
            )
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot load actor.model.path={path!r}: {exc}") from exc
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    logger.info("Loaded model %s (%s, %d parameters)", path, dtype, sum(p.numel() for p in model.parameters()))
    return model.eval(), tokenizer


def save_model_dir(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write a loadable HF directory (config, safetensors weights, tokenizer) to out_dir.

    state_dict: full (unsharded) weights to write instead of the model's own, for exporting an FSDP-sharded
    policy whose gathered state lives outside the module.
    """
    model.save_pretrained(out_dir, state_dict=state_dict)
    tokenizer.save_pretrained(out_dir)
