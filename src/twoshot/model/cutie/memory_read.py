"""Cutie's memory read: XMem's anisotropic L2 similarity, top-k softmax with usage, readout.

similarity[n, q] = (-sum_c e_q,c mk_n,c^2 + 2 sum_c mk_n,c qk_q,c e_q,c - sum_c e_q,c qk_q,c^2)
                   * s_n / sqrt(C_k)
with memory keys mk, memory shrinkage s >= 1, query keys qk and query selection e in (0, 1):
the negative squared distance weighted per channel by the query's selection and scaled by
the memory entry's shrinkage. The terms are computed as in the reference
(hkchengrex/Cutie ``model/utils/memory_utils.py``) so that float results agree.
"""

from __future__ import annotations

import math

import torch


def similarity(
    memory_key: torch.Tensor,
    memory_shrinkage: torch.Tensor | None,
    query_key: torch.Tensor,
    query_selection: torch.Tensor | None,
) -> torch.Tensor:
    """Anisotropic L2 similarity of every memory entry to every query position.

    memory_key [B, Ck, N]; memory_shrinkage [B, 1, N] or None (no scaling);
    query_key [B, Ck, Q]; query_selection [B, Ck, Q] or None (STCN's plain L2, without the
    query's own norm). Returns [B, N, Q].
    """
    key_dim = memory_key.shape[1]
    if query_selection is not None:
        mk = memory_key.transpose(1, 2)
        a_sq = mk.pow(2) @ query_selection
        two_ab = 2 * (mk @ (query_key * query_selection))
        b_sq = (query_selection * query_key.pow(2)).sum(1, keepdim=True)
        sim = -a_sq + two_ab - b_sq
    else:
        a_sq = memory_key.pow(2).sum(1).unsqueeze(2)
        sim = -a_sq + 2 * (memory_key.transpose(1, 2) @ query_key)
    if memory_shrinkage is not None:
        return sim * memory_shrinkage.flatten(start_dim=1).unsqueeze(2) / math.sqrt(key_dim)
    return sim / math.sqrt(key_dim)


def softmax_full(sim: torch.Tensor) -> torch.Tensor:
    """Softmax over the memory axis (dim 1) with the maximum subtracted. [B, N, Q] -> [B, N, Q]."""
    exp = torch.exp(sim - torch.max(sim, dim=1, keepdim=True)[0])
    return exp / torch.sum(exp, dim=1, keepdim=True)


def softmax_top_k(sim: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``top_k`` most similar memory entries per query, softmax them, zero the rest.

    sim [B, N, Q] (k is capped at N). Returns (affinity [B, N, Q], usage [B, N] = each
    entry's affinity summed over the queries, for long-term memory's usage counts).
    The similarities are <= 0, so the reference exponentiates them without subtracting the
    maximum; that is kept for equal floats, except for queries whose top-k all underflow
    to 0 (far-off keys of an untrained model), which are shifted by their maximum instead.
    """
    values, indices = torch.topk(sim, k=min(top_k, sim.shape[1]), dim=1)
    exp = values.exp()
    total = exp.sum(dim=1, keepdim=True)
    bad = ~(total > 0) | ~torch.isfinite(total)
    if bool(bad.any()):
        shifted = (values - values[:, :1]).exp()
        exp = torch.where(bad, shifted, exp)
        total = exp.sum(dim=1, keepdim=True)
    affinity = torch.zeros_like(sim).scatter_(1, indices, exp / total)
    return affinity, affinity.sum(dim=2)


def readout(affinity: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Affinity-weighted sum of memory values. affinity [B, N, Q]; values [B, K, C, N] -> [B, K, C, Q]."""
    batch, objects, channels, entries = values.shape
    out = values.reshape(batch, objects * channels, entries) @ affinity
    return out.view(batch, objects, channels, -1)
