"""The MFLI loss: facet weights really weigh (a 0 weight removes a facet), 3-facet configs run,
L_QMF and the penalty switch on with the codebook."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mfli.model.config import (
    FacetConfig,
    ModelConfig,
    default_facets,
    engagement_facet,
    recent_facets,
    three_facets,
)
from mfli.train import TrainConfig, _Trainer


def _trainer(ds, facets, **codebook) -> _Trainer:
    torch.manual_seed(0)
    cfg = TrainConfig.from_dict({"batch_size": 32, "progress": False, "valid_frac": 0.0,
                                 "model": {"hidden": 16, "dim": 8, "codebook": {"codes": 4, **codebook}}})  # fmt: skip
    cfg.model.facets = facets
    return _Trainer(ds, ds.interactions, None, cfg)


def _loss(t: _Trainer, seed: int = 0):
    rng = np.random.default_rng(seed)
    batch = t._batch(np.arange(32), rng)
    torch.manual_seed(seed)
    return t.model.loss(batch)


def _head_grad(t: _Trainer, f: int) -> float:
    d = t.cfg.model.dim
    total = 0.0
    for heads in (t.model.item_tower.heads, t.model.user_tower.heads):
        g = heads.proj.weight.grad
        total += float(g[f * d : (f + 1) * d].abs().sum())
    return total


def test_zero_weight_removes_a_facet(tiny_dataset):
    t = _trainer(tiny_dataset, default_facets())
    full, parts = _loss(t)
    full.backward()
    assert _head_grad(t, 0) > 0 and _head_grad(t, 1) > 0
    sem_part = parts["loss_semantic"]
    eng_part = parts["loss_engagement"]
    assert full.item() == pytest.approx(1.0 * eng_part + 0.5 * sem_part, rel=1e-5)

    facets = default_facets()
    facets[1].weight = 0.0
    t0 = _trainer(tiny_dataset, facets)
    t0.model.load_state_dict(t.model.state_dict())
    zero, _ = _loss(t0)
    zero.backward()
    assert zero.item() == pytest.approx(eng_part, rel=1e-5)
    assert _head_grad(t0, 0) > 0
    assert _head_grad(t0, 1) == 0.0  # no gradient at all reaches the semantic heads

    facets = default_facets()
    facets[0].weight = 3.0
    t3 = _trainer(tiny_dataset, facets)
    t3.model.load_state_dict(t.model.state_dict())
    three, _ = _loss(t3)
    assert three.item() == pytest.approx(3.0 * eng_part + 0.5 * sem_part, rel=1e-5)


def test_qmf_and_penalty_join_when_the_codebook_is_on(tiny_dataset):
    t = _trainer(tiny_dataset, default_facets(), start_step=0)
    _, parts = _loss(t)
    assert parts["qmf"] == 0.0 and parts["pen"] == 0.0
    rq = t.model.rq
    rq.activate_next_layer()
    after, parts = _loss(t)
    assert rq.n_active == 1 and parts["qmf"] > 0 and parts["pen"] > 0
    after.backward()
    assert rq.codebooks.grad[0].abs().sum() > 0  # the retrieval loss trains the codewords
    t.cfg.model.codebook.qmf_weight = 0.0
    t.cfg.model.codebook.penalty_weight = 0.0
    t.cfg.model.codebook.anchor_weight = 0.0
    no_q, _ = _loss(t)
    assert no_q.item() < after.item()
    # with every codebook term weighted 0 the loss is the plain two-tower loss
    rng = np.random.default_rng(0)
    batch = t._batch(np.arange(32), rng)
    torch.manual_seed(0)
    plain, _ = t.model.loss(batch, quantise=False)
    assert no_q.item() == pytest.approx(plain.item(), rel=1e-6)


def test_three_facets_and_label_filter(tiny_dataset):
    t = _trainer(tiny_dataset, three_facets(), start_step=0)
    loss, parts = _loss(t)
    assert {k for k in parts if k.startswith("loss_")} == {
        "loss_engagement_any", "loss_engagement_high", "loss_semantic"}
    assert torch.isfinite(loss)
    # a label threshold nobody reaches leaves only the (unfiltered) parts of that facet
    facets = [FacetConfig(name="hi", min_label=100.0, logq=0.0)]
    t2 = _trainer(tiny_dataset, facets)
    loss2, _ = _loss(t2)
    assert loss2.item() == 0.0


def test_recency_of_events_is_their_place_in_the_user_history():
    import pandas as pd

    from mfli.model.pairs import PairSampler

    t = pd.Timestamp("2024-01-01", tz="UTC")
    # user 7: four events given out of time order; user 9: one event
    inter = pd.DataFrame({"user_id": [7, 7, 9, 7, 7], "item_id": [2, 0, 1, 3, 1],
                          "event_ts": [t + pd.Timedelta(days=d) for d in (3, 1, 5, 4, 2)],
                          "weight": np.ones(5, np.float32)})
    items = pd.DataFrame({"item_id": np.arange(4), "categories": [[]] * 4, "title": [""] * 4, "text": [""] * 4})
    s = PairSampler(inter, np.arange(4), np.array([7, 9]), items, history_len=4)
    ui = s.user_item(np.arange(5))
    # events sorted by (user, time): user 7's items 0, 1, 2, 3 then user 9's item 1
    assert ui.target_rows.tolist() == [0, 1, 2, 3, 1]
    assert ui.recency.tolist() == [0.25, 0.5, 0.75, 1.0, 1.0]
    ii = s.co_engaged(np.random.default_rng(0), 50, window=1)
    assert len(ii.recency) > 0
    # a co-engaged pair is as recent as its older event: consecutive events of user 7 here
    assert set(ii.recency.tolist()) <= {0.25, 0.5, 0.75}


def test_recent_facet_trains_on_implicit_data_where_the_high_rating_facet_cannot(tiny_dataset):
    implicit = tiny_dataset.interactions.assign(weight=np.float32(1.0))
    ds = dataclasses.replace(tiny_dataset, interactions=implicit)
    _, high = _loss(_trainer(ds, three_facets()))
    _, recent = _loss(_trainer(ds, recent_facets()))
    assert high["loss_engagement_high"] == 0.0  # min_label=4 keeps no positive of weight 1
    assert recent["loss_engagement_recent"] > 0.5
    # the recency filter really drops pairs: the recent facet's loss differs from the unfiltered one
    assert abs(recent["loss_engagement_recent"] - recent["loss_engagement"]) > 1e-3
    assert [f.name for f in engagement_facet()] == ["engagement"]
    assert [f.name for f in recent_facets()] == ["engagement", "engagement_recent", "semantic"]


def test_unknown_facet_kind_is_rejected(tiny_dataset):
    t = _trainer(tiny_dataset, [FacetConfig(name="x", kind="popularity")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown kind"):
        _loss(t)


def test_model_config_facet_names():
    assert ModelConfig().facet_names == ["engagement", "semantic"]


def test_qmf_query_scale_scales_the_query_towers_gradient_from_l_qmf(tiny_dataset):
    def user_grad(query_scale: float) -> tuple[float, torch.Tensor]:
        t = _trainer(tiny_dataset, default_facets(), start_step=0, qmf_query_scale=query_scale,
                     straight_through=False, penalty_weight=0.0, anchor_weight=0.0)
        t.model.load_state_dict(ref.model.state_dict())
        t.model.rq.codebooks.data.copy_(ref.model.rq.codebooks.data)
        t.model.rq.active.fill_(1)
        loss, parts = _loss(t)
        t.cfg.model.codebook.qmf_weight = 0.0  # the L_MF part alone
        mf_only, _ = _loss(t)
        (loss - mf_only).backward()  # gradient of L_QMF alone
        return parts["qmf"], t.model.user_tower.heads.proj.weight.grad.clone()

    ref = _trainer(tiny_dataset, default_facets(), start_step=0)
    ref.model.rq.observe(torch.nn.functional.normalize(torch.randn(64, 2, 8), dim=-1))
    ref.model.rq.activate_next_layer()
    q1, g1 = user_grad(1.0)
    q3, g3 = user_grad(0.3)
    q0, g0 = user_grad(0.0)
    assert q1 == pytest.approx(q3) == pytest.approx(q0)  # same loss value
    assert g1.abs().sum() > 0 and g0.abs().sum() == 0
    assert torch.allclose(g3, 0.3 * g1, atol=1e-6)
