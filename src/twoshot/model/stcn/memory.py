"""STCN's memory read: L2-similarity affinity between memory and query keys, then a readout.

affinity[n, q] = (2 mk_n . qk_q - |mk_n|^2) / sqrt(C_k), normalised over the memory axis n
with a full softmax (training) or a softmax over the top-k memory entries per query (inference).
"""

from __future__ import annotations

import math

import torch


def affinity_logits(memory_keys: torch.Tensor, query_keys: torch.Tensor) -> torch.Tensor:
    """Unnormalised affinity. memory_keys [B,Ck,N], query_keys [B,Ck,Q] -> [B,N,Q]."""
    key_dim = memory_keys.shape[1]
    squared = memory_keys.pow(2).sum(1).unsqueeze(2)
    dot = memory_keys.transpose(1, 2) @ query_keys
    return (2 * dot - squared) / math.sqrt(key_dim)


def softmax_full(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the memory axis (dim 1) with max subtraction, as STCN's training. [B,N,Q]."""
    maxes = torch.max(logits, dim=1, keepdim=True)[0]
    exp = torch.exp(logits - maxes)
    return exp / torch.sum(exp, dim=1, keepdim=True)


def softmax_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the top-k memory entries per query, exp and normalise them, zero elsewhere.

    As STCN's inference, except that the largest value is subtracted before exp: STCN's plain
    exp overflows to NaN on untrained or large-norm keys, and the shift changes nothing else.
    logits [B,N,Q] -> [B,N,Q].
    """
    k = min(top_k, logits.shape[1])
    values, indices = torch.topk(logits, k=k, dim=1)  # sorted: values[:, 0] is the maximum
    exp = (values - values[:, :1]).exp()
    exp = exp / torch.sum(exp, dim=1, keepdim=True)
    return torch.zeros_like(logits).scatter_(1, indices, exp)


def memory_affinity(
    memory_keys: torch.Tensor, query_keys: torch.Tensor, top_k: int | None = None
) -> torch.Tensor:
    """Normalised affinity [B,N,Q] from memory keys [B,Ck,N] and query keys [B,Ck,Q].

    top_k None: full softmax (training); an int: top-k softmax (inference).
    """
    logits = affinity_logits(memory_keys, query_keys)
    return softmax_full(logits) if top_k is None else softmax_top_k(logits, top_k)


def readout(affinity: torch.Tensor, memory_values: torch.Tensor) -> torch.Tensor:
    """Weighted sum of memory values. affinity [B,N,Q], memory_values [B,K,Cv,N] -> [B,K,Cv,Q]."""
    return memory_values @ affinity.unsqueeze(1)
