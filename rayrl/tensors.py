"""Tensor helpers shared by the algorithms, the model forward pass and the generation engines.

Pure functions of tensors, with no rayrl imports: the lowest layer, which anything may use.
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p(tokens[b, t]) under logits[b, t], in float32.

    The caller aligns the two (logits of position t-1 predict token t). Computed as
    gathered logit - logsumexp so no [B, T, V] log-softmax tensor is materialised.
    """
    logits = logits.to(torch.float32)
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def response_mask_from(tokens_response: Tensor, eos_id: int, pad_id: int) -> Tensor:
    """int64 [B, R] mask: 1 up to and including the first eos, 0 after it and on padding.

    Works when pad_id == eos_id (common for real tokenizers): the first eos still counts as a response token.
    A response that never emits eos keeps all its non-pad tokens.
    """
    is_eos = tokens_response == eos_id
    after_eos = (torch.cumsum(is_eos.to(torch.int64), dim=-1) - is_eos.to(torch.int64)) > 0
    keep = ~after_eos & ((tokens_response != pad_id) | is_eos)
    return keep.to(torch.int64)
