"""The built-in tokenizer and tiny model, and loading/saving real HF directories."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from rayrl.models.loading import load_model_and_tokenizer, save_model_dir
from rayrl.models.tiny import build_tiny_model, build_tokenizer

SMALL = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def _cfg(**overrides):
    fields = dict(path=None, trust_remote_code=False, dtype="float32", **SMALL)
    fields.update(overrides)
    return SimpleNamespace(**fields)


def test_tokenizer_round_trip_and_fixed_ids():
    tok = build_tokenizer()
    text = "ab:abab 12+3=15? (x*y)/z, Done.\n"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id == 1
    assert len(ids) == len(text) + 1  # one id per character
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 2, 3)
    assert tok("a")["input_ids"] == [1, 4] and tok("A")["input_ids"] == [1, 30]
    assert tok("é")["input_ids"] == [1, tok.unk_token_id]
    assert tok.padding_side == "left"
    assert build_tokenizer()(text)["input_ids"] == ids


def test_tokenizer_saved_and_reloaded_gives_same_ids(tmp_path):
    build_tokenizer(save_dir=str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    texts = ["ab:", "The answer is -3.5."]
    assert loaded(texts, padding=True)["input_ids"] == build_tokenizer()(texts, padding=True)["input_ids"]
    assert loaded.padding_side == "left"
    padded = loaded(texts, padding=True)["input_ids"][0]
    assert padded[0] == loaded.pad_token_id and padded[-1] == loaded.convert_tokens_to_ids(":")


def test_tiny_model_is_deterministic_and_keeps_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_tiny_model(**SMALL, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = build_tiny_model(**SMALL, seed=7)
    c = build_tiny_model(**SMALL, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])
    assert a.lm_head.weight is a.model.embed_tokens.weight  # tied


def test_tiny_model_default_size():
    model = build_tiny_model()
    n = sum(p.numel() for p in model.parameters())
    assert 500_000 <= n <= 1_000_000
    assert model.config._attn_implementation == "sdpa"
    assert next(model.parameters()).dtype == torch.float32


def test_tiny_model_rejects_bad_head_count():
    with pytest.raises(ValueError, match="num_heads=3"):
        build_tiny_model(hidden_size=32, num_heads=3)


def test_save_then_load_from_path_gives_identical_logits(tmp_path):
    model, tok = load_model_and_tokenizer(_cfg(), seed=3)
    save_model_dir(model, tok, str(tmp_path))
    assert os.path.exists(tmp_path / "model.safetensors")
    loaded, loaded_tok = load_model_and_tokenizer(_cfg(path=str(tmp_path)), seed=999)
    batch = tok(["ab:", "abc:"], return_tensors="pt", padding=True)
    assert torch.equal(batch["input_ids"], loaded_tok(["ab:", "abc:"], return_tensors="pt", padding=True)["input_ids"])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    assert loaded_tok.padding_side == "left"


def test_save_model_dir_writes_given_state_dict(tmp_path):
    model, tok = load_model_and_tokenizer(_cfg(), seed=3)
    full = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    save_model_dir(model, tok, str(tmp_path), state_dict=full)
    loaded, _ = load_model_and_tokenizer(_cfg(path=str(tmp_path)), seed=3)
    assert all(torch.count_nonzero(p) == 0 for n, p in loaded.named_parameters() if "norm" not in n)


def test_builtin_is_same_for_same_seed_and_casts_dtype():
    a, _ = load_model_and_tokenizer(_cfg(), seed=5)
    b, _ = load_model_and_tokenizer(_cfg(dtype="bfloat16"), seed=5)
    assert next(b.parameters()).dtype == torch.bfloat16
    assert torch.equal(a.model.embed_tokens.weight.to(torch.bfloat16), b.model.embed_tokens.weight)


def test_load_errors_name_the_key():
    with pytest.raises(ValueError, match="actor.model.path='/nonexistent/model-dir'"):
        load_model_and_tokenizer(_cfg(path="/nonexistent/model-dir"), seed=0)
    with pytest.raises(ValueError, match="actor.model.dtype='float8'"):
        load_model_and_tokenizer(_cfg(dtype="float8"), seed=0)


def test_generate_with_left_padding():
    model, tok = load_model_and_tokenizer(_cfg(), seed=1)
    prompts = ["ab:", "abcdef:"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    assert batch["input_ids"][0, 0] == tok.pad_token_id
    greedy = model.generate(**batch, do_sample=False, max_new_tokens=6)
    alone = model.generate(**tok(prompts[:1], return_tensors="pt"), do_sample=False, max_new_tokens=6)
    # the padded short prompt continues exactly as it does without padding
    assert torch.equal(greedy[0, batch["input_ids"].shape[1] :], alone[0, -6:])
    torch.manual_seed(0)
    sampled = model.generate(**batch, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=6)
    torch.manual_seed(0)
    again = model.generate(**batch, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=6)
    assert sampled.shape == (2, batch["input_ids"].shape[1] + 6)
    assert torch.equal(sampled, again)
    assert ((sampled >= 0) & (sampled < len(tok))).all()
