"""Forward passes shared by the actor and the reference: log-probs of response tokens."""

from __future__ import annotations

import torch

from rayrl.tensors import token_logprobs


def response_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    micro_batch_size: int = 0,
) -> torch.Tensor:
    """Log-probs [N, R] the model gives each response token, micro-batched along rows.

    Position ids follow the attention mask, as ``generate`` computes them for left-padded prompts,
    so training sees exactly the positions sampling saw.
    """
    rows = prompt_ids.shape[0]
    step = micro_batch_size if micro_batch_size > 0 else rows
    out = [
        _forward(model, prompt_ids[i : i + step], prompt_mask[i : i + step],
                 response_ids[i : i + step], response_mask[i : i + step])
        for i in range(0, rows, step)
    ]
    return torch.cat(out) if len(out) > 1 else out[0]


def _forward(model, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    device = next(model.parameters()).device
    input_ids = torch.cat([prompt_ids, response_ids], dim=1).to(device)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1).to(device)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    p_len, r_len = prompt_ids.shape[1], response_ids.shape[1]
    logits = logits[:, p_len - 1 : p_len - 1 + r_len]
    return token_logprobs(logits, response_ids.to(device))
