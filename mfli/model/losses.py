"""Sampled softmax over in-batch (and optionally uniformly sampled) negatives with logQ correction.

For B (query, positive) pairs the other B-1 positives of the batch are the negatives. Because a
popular item shows up as an in-batch negative more often, its logit is lowered by
``alpha * log Q(item)`` (Q = the item's sampling probability), so the learned score estimates
relevance rather than popularity (Yi et al., RecSys 2019). Duplicates of a row's positive elsewhere
in the batch are masked so an item is never its own negative.

In-batch negatives alone almost never contain tail items, so the model is never told that a tail
item is *worse* than the positive and the correction can only push popular items down. Mixing in U
negatives drawn uniformly from the training items (mixed negative sampling, Yang et al., WWW 2020)
covers the tail; the logQ correction then uses the mixture's expected count of each item in the
candidate set, ``B * p(i) + U / N`` (:func:`mixture_log_q`), so the loss is still an unbiased
estimate of the full softmax and popularity is learned where it predicts engagement instead of
being subtracted away.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def mixture_log_q(log_p: torch.Tensor, n_batch: int, n_uniform: int, n_items: int) -> torch.Tensor:
    """Log expected count of each item in a candidate set of ``n_batch`` popularity-sampled and
    ``n_uniform`` uniformly sampled items: ``log(n_batch * p + n_uniform / n_items)``.

    Args:
        log_p: ``(...,)`` log probability of each item under the popularity (in-batch) sampler.
        n_batch, n_uniform: candidate counts of the two samplers.  n_items: items the uniform
            sampler draws from.

    With ``n_uniform = 0`` this is ``log_p + log n_batch``: a per-batch constant away from
    ``log_p``, which a softmax ignores, so the plain in-batch correction is the special case.
    """
    if n_uniform <= 0 or n_items <= 0:
        return log_p + math.log(max(n_batch, 1))
    return torch.logaddexp(log_p + math.log(max(n_batch, 1)),
                           torch.full_like(log_p, math.log(n_uniform / n_items)))


def sampled_softmax(
    query: torch.Tensor,
    target: torch.Tensor,
    target_ids: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
    logq_alpha: float = 1.0,
    row_mask: torch.Tensor | None = None,
    neg: torch.Tensor | None = None,
    neg_ids: torch.Tensor | None = None,
    neg_log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean softmax cross-entropy over the rows in ``row_mask``.

    Args:
        query: ``(B, d)`` query embeddings (user or trigger item, one facet).
        target: ``(B, d)`` positive item embeddings; row i is row i's positive, the rest negatives.
        target_ids: ``(B,)`` int64 item ids, to mask in-batch duplicates of a positive.
        temperature: logits are ``q . t / temperature``.
        log_q: ``(B,)`` log sampling probability (or expected count) of each target (None: no correction).
        logq_alpha: strength of the correction (0 none, 1 full).
        row_mask: ``(B,)`` bool, rows that count (e.g. label >= 4 for a high-rating facet). Every
            target still serves as a negative for the other rows.
        neg: ``(U, d)`` extra negatives shared by every row (e.g. uniformly sampled items), or None.
        neg_ids: ``(U,)`` their item ids (a negative equal to a row's positive is masked for that row).
        neg_log_q: ``(U,)`` their correction, on the same scale as ``log_q``.

    Returns:
        scalar loss; an exact 0 that keeps the graph when no row counts.
    """
    logits = query @ target.T / temperature  # (B, B)
    if log_q is not None and logq_alpha != 0.0:
        logits = logits - logq_alpha * log_q.unsqueeze(0)
    same = target_ids.unsqueeze(0) == target_ids.unsqueeze(1)
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    if neg is not None and len(neg):
        if neg_ids is None:
            raise ValueError("neg_ids are required with neg")
        extra = query @ neg.T / temperature  # (B, U)
        if neg_log_q is not None and logq_alpha != 0.0:
            extra = extra - logq_alpha * neg_log_q.unsqueeze(0)
        extra = extra.masked_fill(target_ids.unsqueeze(1) == neg_ids.unsqueeze(0), float("-inf"))
        logits = torch.cat([logits, extra], dim=1)
    labels = torch.arange(logits.shape[0], device=logits.device)
    per_row = F.cross_entropy(logits, labels, reduction="none")
    if row_mask is None:
        return per_row.mean()
    w = row_mask.to(per_row.dtype)
    return (per_row * w).sum() / w.sum().clamp_min(1.0)
