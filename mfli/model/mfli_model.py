"""The MFLI model: item tower, user tower and multifaceted RQ codebook, with the training loss.

Loss (REFERENCE.md 1.2), summed over facets f with weight w_f:

    w_f * [ L_MF,f + qmf_weight * L_QMF,f + lambda * penalty_f + beta * commit_f + anchor_weight * anchor_f ]

L_MF is in-batch sampled softmax on the raw facet embeddings, L_QMF the same softmax with the
positives (and in-batch negatives) replaced by their quantised reconstructions, so the retrieval
objective itself trains the codewords. The anchor term ``||sg(e) - e_hat||^2`` moves only the
codewords and keeps them on their items: L_QMF scores normalised reconstructions, so without it
nothing stops a deeper layer from drifting away and raising the quantisation error. The optional
commitment term ``||e - sg(e_hat)||^2`` (off by default) would pull the embeddings toward their
codewords instead. Engagement facets use user -> item and trigger -> co-engaged
pairs with logQ correction and an optional label filter; semantic facets use shared-key item pairs,
and fit their user head to the (detached) semantic item space.

L_MF's softmaxes also score the batch's uniformly sampled negatives (``Batch.neg_items``), with the
mixture's logQ correction (:func:`mfli.model.losses.mixture_log_q`); L_QMF keeps in-batch negatives.
How much of L_QMF's gradient reaches the towers is ``qmf_query_scale`` / ``straight_through_scale``
(default 1.0; 0 trains the codebook on the towers' output without reshaping it), one value for all
facets or one per facet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mfli.model.config import FacetConfig, ModelConfig
from mfli.model.features import FeatureSpace, ItemFeatures
from mfli.model.losses import mixture_log_q, sampled_softmax
from mfli.model.quantizer import MultiFacetRQ
from mfli.model.towers import ItemTower, UserTower


def _grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` in the forward pass; ``scale`` times its gradient in the backward pass."""
    if scale == 1.0:
        return x
    return x.detach() + scale * (x - x.detach())


@dataclass
class Batch:
    """One training step's tensors (all on the model's device).

    Attributes:
        users: ``(B, K)`` user feature ids.  hist: features of the U distinct history items.
        hist_index: ``(B, H)`` rows into ``hist``.  hist_mask: ``(B, H)`` bool (false = empty slot).
        ui_items: B target items.  ui_weight / ui_logq: ``(B,)``.
        ii_a / ii_b: trigger and co-engaged items (B2 rows each); ii_label, ii_logq: ``(B2,)``.
        sem_a / sem_b: semantic anchor and positive items (B3 rows each).
        neg_items: U items drawn uniformly from the ``neg_pool`` training items (None: in-batch
            negatives only); neg_logq: ``(U,)`` their log popularity, on the scale of ui_logq.
        ui_recency / ii_recency: ``(B,)`` / ``(B2,)`` place of the event(s) in the user's history,
            1 = latest (:class:`~mfli.model.pairs.UserItemBatch`); needed by facets with ``recent_share``.
    """

    users: torch.Tensor
    hist: ItemFeatures
    hist_index: torch.Tensor
    hist_mask: torch.Tensor
    ui_items: ItemFeatures
    ui_weight: torch.Tensor
    ui_logq: torch.Tensor
    ii_a: ItemFeatures
    ii_b: ItemFeatures
    ii_label: torch.Tensor
    ii_logq: torch.Tensor
    sem_a: ItemFeatures
    sem_b: ItemFeatures
    neg_items: ItemFeatures | None = None
    neg_logq: torch.Tensor | None = None
    neg_pool: int = 0
    ui_recency: torch.Tensor | None = None
    ii_recency: torch.Tensor | None = None


def _positive_mask(fc: FacetConfig, label: torch.Tensor, recency: torch.Tensor | None) -> torch.Tensor | None:
    """``(B,)`` bool: the pairs an engagement facet learns from (its ``min_label`` and ``recent_share``
    filters), or None when it keeps them all."""
    mask = None if fc.min_label is None else label >= fc.min_label
    if fc.recent_share is not None:
        if recency is None:
            raise ValueError(f"facet {fc.name!r} filters by recency but the batch carries no recency")
        # recency = position / length: the newest ``recent_share`` of each history has recency > 1 - share
        recent = recency > 1.0 - fc.recent_share
        mask = recent if mask is None else mask & recent
    return mask


def _cat(parts: list[ItemFeatures]) -> ItemFeatures:
    return ItemFeatures(*(torch.cat(ts) for ts in zip(*(p.tensors() for p in parts))))


class MFLIModel(nn.Module):
    """Towers + codebook.

    Args:
        cfg: model configuration (facets, sizes, codebook).
        fs: fitted feature space (vocabulary sizes).
        n_codes: M, resolved from the catalogue size when ``cfg.codebook.codes`` is None.
        start_step, layer_interval: resolved codebook schedule (optimiser steps).
        seed: codebook k-means / re-seeding seed.
        qmf_warmup: steps over which the L_QMF weight ramps from 0 to ``qmf_weight`` after the
            codebook starts (a sudden second objective on fresh k-means codewords jolts the towers).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        fs: FeatureSpace,
        n_codes: int,
        start_step: int,
        layer_interval: int,
        seed: int = 0,
        qmf_warmup: int = 0,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.qmf_warmup = qmf_warmup
        F, h, d = len(cfg.facets), cfg.hidden, cfg.dim
        if F == 0:
            raise ValueError("at least one facet is required")
        names = cfg.facet_names
        if len(set(names)) != len(names):
            raise ValueError(f"facet names must be unique, got {names}")
        self.item_tower = ItemTower(
            fs.n_ids, fs.n_categories, fs.n_tokens, fs.n_brands, fs.n_age, h, F, d, cfg.id_dropout
        )
        self.user_tower = UserTower(
            fs.n_user_values, len(fs.user_columns), self.item_tower.input_dim, h, F, d, cfg.history_len, cfg.pooling
        )
        cb = cfg.codebook
        self.rq = MultiFacetRQ(
            cb.layers, F, n_codes, d,
            start_step=start_step, layer_interval=layer_interval, buffer_size=cb.buffer_size,
            dead_window=cb.dead_window, penalty_temperature=cb.penalty_temperature,
            straight_through=cb.straight_through,
            straight_through_scale=cb.facet_scales("straight_through_scale", F),
            kmeans_iters=cb.kmeans_iters, seed=seed, normalize=cb.normalize,
        )  # fmt: skip

    # embeddings -------------------------------------------------------------------------------
    def item_embed(self, feats: ItemFeatures, drop_ids: bool | None = None) -> torch.Tensor:
        """N items -> ``(N, F, d)``."""
        return self.item_tower(feats, drop_ids)

    def user_embed(
        self,
        users: torch.Tensor,
        hist: ItemFeatures,
        hist_index: torch.Tensor,
        hist_mask: torch.Tensor,
        drop_ids: bool | None = None,
    ) -> torch.Tensor:
        """User feature ids ``(B, K)``, features of U distinct history items, ``hist_index (B, H)``
        into them and ``hist_mask (B, H)`` -> ``(B, F, d)``. Distinct items are embedded once."""
        reps = self.user_tower.project_items(self.item_tower.inputs(hist, drop_ids))  # (U, h)
        return self.user_tower(users, reps[hist_index], hist_mask)

    # loss -------------------------------------------------------------------------------------
    def loss(self, batch: Batch, quantise: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and its parts (floats, for logging) for one :class:`Batch`.

        ``quantise=False`` skips L_QMF / penalty (plain two-tower training, codebook modes
        "none" and "kmeans_after").
        """
        cb = self.cfg.codebook
        sizes = [len(batch.ui_items), len(batch.ii_a), len(batch.ii_b), len(batch.sem_a), len(batch.sem_b)]
        parts_in = [batch.ui_items, batch.ii_a, batch.ii_b, batch.sem_a, batch.sem_b]
        U = len(batch.neg_items) if batch.neg_items is not None else 0
        if U:
            sizes.append(U)
            parts_in.append(batch.neg_items)
        emb = self.item_embed(_cat(parts_in))
        e_ui, e_a, e_b, s_a, s_b, *rest = torch.split(emb, sizes)
        e_neg = rest[0] if U else None
        neg_ids = batch.neg_items.item_ids if U else None
        # logQ of the mixed candidate set (in-batch + uniform) for L_MF; L_QMF keeps in-batch negatives
        ui_lq, ii_lq = batch.ui_logq, batch.ii_logq
        ui_nlq = ii_nlq = None
        if U:
            ui_lq = mixture_log_q(batch.ui_logq, sizes[0], U, batch.neg_pool)
            ui_nlq = mixture_log_q(batch.neg_logq, sizes[0], U, batch.neg_pool)
            ii_lq = mixture_log_q(batch.ii_logq, sizes[2], U, batch.neg_pool)
            ii_nlq = mixture_log_q(batch.neg_logq, sizes[2], U, batch.neg_pool)
        user = self.user_embed(batch.users, batch.hist, batch.hist_index, batch.hist_mask)

        use_q = quantise and cb.mode == "joint" and self.rq.n_active > 0
        if use_q:
            # one quantiser call over every positive, so usage/penalty see the whole step's items
            targets = torch.cat([e_ui, e_b, s_b])
            q = self.rq(targets)
            q_ui, q_b, q_sb = torch.split(q.x_hat, [sizes[0], sizes[2], sizes[4]])
            penalty, commit, anchor = q.penalty, q.commit, q.anchor
            if self.training:
                ids = torch.cat([batch.ui_items.item_ids, batch.ii_b.item_ids, batch.sem_b.item_ids])
                self.rq.observe(targets, ids)
        elif self.training and cb.mode == "joint" and self.rq.n_active < self.rq.L:  # buffer for k-means init
            self.rq.observe(torch.cat([e_ui, e_b, s_b]),
                            torch.cat([batch.ui_items.item_ids, batch.ii_b.item_ids, batch.sem_b.item_ids]))

        ui_ids, b_ids, sb_ids = batch.ui_items.item_ids, batch.ii_b.item_ids, batch.sem_b.item_ids
        # query sides of L_QMF: same values, their gradient scaled by the facet's qmf_query_scale
        query_scales = cb.facet_scales("qmf_query_scale", len(self.cfg.facets))
        qmf_weight = cb.qmf_weight
        if self.qmf_warmup > 0:
            qmf_weight *= min(1.0, max(0.0, (self.rq.step - self.rq.start_step + 1) / self.qmf_warmup))
        total = emb.new_zeros(())
        parts = {"mf": 0.0, "qmf": 0.0, "pen": 0.0, "commit": 0.0}
        for f, fc in enumerate(self.cfg.facets):
            tau = fc.temperature
            if use_q:
                user_q = _grad_scale(user[:, f], query_scales[f])  # (B, d)
                e_a_q = _grad_scale(e_a[:, f], query_scales[f])  # (B2, d)
                s_a_q = _grad_scale(s_a[:, f], query_scales[f])  # (B3, d)
            mf = emb.new_zeros(())
            qmf = emb.new_zeros(())
            if fc.kind == "engagement":
                ui_mask = _positive_mask(fc, batch.ui_weight, batch.ui_recency)
                ii_mask = _positive_mask(fc, batch.ii_label, batch.ii_recency)
                if fc.user_item_weight:
                    mf = mf + fc.user_item_weight * sampled_softmax(
                        user[:, f], e_ui[:, f], ui_ids, tau, ui_lq, fc.logq, ui_mask,
                        *((e_neg[:, f], neg_ids, ui_nlq) if U else ()))
                    if use_q:
                        qmf = qmf + fc.user_item_weight * sampled_softmax(
                            user_q, q_ui[:, f], ui_ids, tau, batch.ui_logq, fc.logq, ui_mask)
                if fc.item_item_weight and len(e_a):
                    mf = mf + fc.item_item_weight * sampled_softmax(
                        e_a[:, f], e_b[:, f], b_ids, tau, ii_lq, fc.logq, ii_mask,
                        *((e_neg[:, f], neg_ids, ii_nlq) if U else ()))
                    if use_q:
                        qmf = qmf + fc.item_item_weight * sampled_softmax(
                            e_a_q, q_b[:, f], b_ids, tau, batch.ii_logq, fc.logq, ii_mask)
            elif fc.kind == "semantic":
                if fc.user_item_weight:
                    # the user head learns to query the semantic space; items are not moved by users
                    mf = mf + fc.user_item_weight * sampled_softmax(
                        user[:, f], e_ui[:, f].detach(), ui_ids, tau, ui_lq, fc.logq, None,
                        *((e_neg[:, f].detach(), neg_ids, ui_nlq) if U else ()))
                if fc.item_item_weight and len(s_a):
                    mf = mf + fc.item_item_weight * sampled_softmax(s_a[:, f], s_b[:, f], sb_ids, tau)
                    if use_q:
                        qmf = qmf + fc.item_item_weight * sampled_softmax(s_a_q, q_sb[:, f], sb_ids, tau)
            else:
                raise ValueError(f"facet {fc.name!r}: unknown kind {fc.kind!r}")
            facet_loss = mf + qmf_weight * qmf
            if use_q:
                facet_loss = (facet_loss + cb.penalty_weight * penalty[f] + cb.commit_weight * commit[f]
                              + cb.anchor_weight * anchor[f])
                parts["pen"] += float(penalty[f].detach())
                parts["commit"] += float(commit[f].detach())
            total = total + fc.weight * facet_loss
            parts["mf"] += float(mf.detach())
            parts["qmf"] += float(qmf.detach())
            parts[f"loss_{fc.name}"] = float(facet_loss.detach())
        parts["loss"] = float(total.detach())
        return total, parts
