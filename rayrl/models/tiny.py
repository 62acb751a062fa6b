"""The built-in tiny model and character-level tokenizer: a real HF architecture small enough for CPU runs."""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3, in this order
# A fixed alphabet, so ids never depend on data: letters, digits, space, newline and ASCII punctuation.
# A minimal chat template, so that chat-message prompts work with the built-in model: one "role: content" line
# per message, then "assistant: " when the assistant's turn is opened.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")
ALPHABET = string.ascii_lowercase + string.ascii_uppercase + string.digits + " \n" + string.punctuation


def build_tokenizer(save_dir: str | None = None) -> PreTrainedTokenizerFast:
    """One token per character of ALPHABET (others map to <unk>); every encoding starts with <bos>.

    A BPE model without merges is a plain character tokenizer, and Fuse() decodes by concatenation (no
    spaces between characters). Prompts are left-padded because generation appends on the right.
    """
    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *ALPHABET))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK, padding_side="left"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
    return tokenizer


def build_tiny_model(
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 256,
    vocab_size: int = len(SPECIAL_TOKENS) + len(ALPHABET),
    seed: int = 0,
    pad_token_id: int = 0,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
) -> PreTrainedModel:
    """A randomly initialised float32 Llama (~0.67M parameters with the defaults).

    Initialised under its own seed inside fork_rng, so it is bit-identical in every process for one seed and
    the caller's global RNG stream is left exactly where it was. SDPA attention: deterministic on CPU, faster
    than eager, and supported by generate and FSDP.
    """
    if hidden_size % num_heads != 0:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        dtype="float32",
        attn_implementation="sdpa",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.bos_token_id = bos_token_id
    model.generation_config.eos_token_id = eos_token_id
    return model.eval()
