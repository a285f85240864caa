"""In-batch sampled softmax with log-popularity (logQ) correction.

For B (query, positive) pairs the other B-1 positives of the batch are the negatives. Because a
popular item shows up as an in-batch negative more often, its logit is lowered by
``alpha * log Q(item)`` (Q = the item's sampling probability), so the learned score estimates
relevance rather than popularity (Yi et al., RecSys 2019). Duplicates of a row's positive elsewhere
in the batch are masked so an item is never its own negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sampled_softmax(
    query: torch.Tensor,
    target: torch.Tensor,
    target_ids: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
    logq_alpha: float = 1.0,
    row_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean in-batch softmax cross-entropy over the rows in ``row_mask``.

    Args:
        query: ``(B, d)`` query embeddings (user or trigger item, one facet).
        target: ``(B, d)`` positive item embeddings; row i is row i's positive, the rest negatives.
        target_ids: ``(B,)`` int64 item ids, to mask in-batch duplicates of a positive.
        temperature: logits are ``q . t / temperature``.
        log_q: ``(B,)`` log sampling probability of each target (None: no correction).
        logq_alpha: strength of the correction (0 none, 1 full).
        row_mask: ``(B,)`` bool, rows that count (e.g. label >= 4 for a high-rating facet). Every
            target still serves as a negative for the other rows.

    Returns:
        scalar loss; an exact 0 that keeps the graph when no row counts.
    """
    logits = query @ target.T / temperature  # (B, B)
    if log_q is not None and logq_alpha != 0.0:
        logits = logits - logq_alpha * log_q.unsqueeze(0)
    same = target_ids.unsqueeze(0) == target_ids.unsqueeze(1)
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(logits.shape[0], device=logits.device)
    per_row = F.cross_entropy(logits, labels, reduction="none")
    if row_mask is None:
        return per_row.mean()
    w = row_mask.to(per_row.dtype)
    return (per_row * w).sum() / w.sum().clamp_min(1.0)
