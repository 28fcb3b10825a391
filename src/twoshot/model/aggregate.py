"""Soft aggregation of per-object probabilities into one distribution over background + K objects."""

from __future__ import annotations

import torch


def aggregate_logits(prob: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """STCN's soft aggregation, returned as logits.

    prob: object probabilities with K objects along ``dim`` (e.g. [B,K,H,W]).
    Returns logits with K+1 entries along ``dim`` (background first): with
    p' = [prod(1 - p_i), p_1..p_K] clamped to [1e-7, 1 - 1e-7], logits = log(p' / (1 - p')).
    A softmax over ``dim`` gives the aggregated distribution.
    """
    background = torch.prod(1 - prob, dim=dim, keepdim=True)
    new_prob = torch.cat([background, prob], dim=dim).clamp(1e-7, 1 - 1e-7)
    return torch.log(new_prob / (1 - new_prob))


def aggregate(prob: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Aggregated probabilities, background first: softmax of :func:`aggregate_logits`.

    prob [.., K, ..] along ``dim`` -> [.., K+1, ..] summing to one along ``dim``.
    """
    return torch.softmax(aggregate_logits(prob, dim), dim=dim)
