"""Per-facet L_QMF gradient shares (``CodebookConfig.qmf_query_scale`` / ``straight_through_scale``):
one float or one value per facet, validated against the facet count, saved and loaded with the model,
and a facet at 0 gets no L_QMF gradient into its tower heads while a facet at 1 does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mfli.model.config import CodebookConfig, ModelConfig, three_facets
from mfli.model.quantizer import MultiFacetRQ
from mfli.model.trained import TrainedModel
from mfli.train import TrainConfig, _Trainer, train

TINY = {"batch_size": 32, "progress": False, "valid_frac": 0.0,
        "model": {"hidden": 16, "dim": 8, "codebook": {"codes": 4}}}  # fmt: skip


def _cfg(**codebook) -> TrainConfig:
    data = json.loads(json.dumps(TINY))
    data["model"]["codebook"].update(codebook)
    return TrainConfig.from_dict(data)


def test_float_and_per_facet_values_are_accepted_and_expanded():
    cb = CodebookConfig()
    assert cb.qmf_query_scale == 1.0 and cb.straight_through_scale == 1.0  # the default: one float
    assert cb.facet_scales("qmf_query_scale", 3) == [1.0, 1.0, 1.0]
    cfg = _cfg(qmf_query_scale=[0, 1], straight_through_scale=[1.0, 0.5])
    cb = cfg.model.codebook
    assert cb.qmf_query_scale == (0.0, 1.0) and cb.straight_through_scale == (1.0, 0.5)  # JSON list -> tuple
    assert cb.facet_scales("straight_through_scale", 2) == [1.0, 0.5]


@pytest.mark.parametrize("name", ["qmf_query_scale", "straight_through_scale"])
def test_per_facet_scale_of_the_wrong_length_is_rejected(name):
    with pytest.raises(ValueError, match=rf"codebook\.{name} has 3 value\(s\) but the model has 2 facet"):
        _cfg(**{name: [0.0, 1.0, 1.0]})
    with pytest.raises(ValueError, match=rf"codebook\.{name} has 2 value\(s\) but the model has 3 facet"):
        ModelConfig(facets=three_facets(), codebook=CodebookConfig(**{name: (0.0, 1.0)}))
    # facets replaced after the config was built: the model refuses it when it is constructed
    cfg = _cfg(**{name: [0.0, 1.0]})
    cfg.model.facets = three_facets()
    with pytest.raises(ValueError, match="has 2 value"):
        cfg.model.codebook.facet_scales(name, len(cfg.model.facets))


@pytest.mark.parametrize("bad", [[], ["a", 1.0], "0.5", True, [True, 1.0]])
def test_non_numeric_scales_are_rejected(bad):
    with pytest.raises(ValueError, match="codebook.qmf_query_scale: expected a number"):
        _cfg(qmf_query_scale=bad)


def test_quantizer_rejects_a_per_facet_scale_of_the_wrong_length():
    with pytest.raises(ValueError, match="3 value"):
        MultiFacetRQ(1, 2, 4, 8, straight_through_scale=[1.0, 1.0, 0.0])


def test_per_facet_scales_round_trip_through_the_saved_config(tiny_dataset, tmp_path):
    ds = tiny_dataset
    cfg = _cfg(qmf_query_scale=[0.0, 1.0], straight_through_scale=[0.0, 1.0], start_step=0)
    cfg.epochs = 1
    m = train(ds, ds.interactions, cfg)
    m.save(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["train"]["model"]["codebook"]["qmf_query_scale"] == [0.0, 1.0]
    m2 = TrainedModel.load(tmp_path / "model")
    assert m2.config == m.config
    assert m2.config.model.codebook.straight_through_scale == (0.0, 1.0)
    assert m2.model.rq.straight_through_scale == [0.0, 1.0]
    # an old config (floats) loads as floats
    old = TrainConfig.from_dict(json.loads(json.dumps(TrainConfig().to_dict())))
    assert old.model.codebook.qmf_query_scale == 1.0 and isinstance(old.model.codebook.qmf_query_scale, float)
    assert old == TrainConfig()


def _qmf_head_grads(ds, scale: list[float] | float, ref: _Trainer) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Gradient of L_QMF alone (loss minus the same loss with qmf_weight 0) on the item and user
    tower heads, ``(F, d, hidden)`` each, for one batch with layer 0 of the codebook on."""
    torch.manual_seed(0)
    cfg = _cfg(qmf_query_scale=scale, straight_through_scale=scale, start_step=0,
               penalty_weight=0.0, anchor_weight=0.0)  # fmt: skip
    t = _Trainer(ds, ds.interactions, None, cfg)
    t.model.load_state_dict(ref.model.state_dict())
    t.model.rq.active.fill_(1)

    def loss():
        rng = np.random.default_rng(0)
        batch = t._batch(np.arange(32), rng)
        torch.manual_seed(0)
        return t.model.loss(batch)

    full, parts = loss()
    t.cfg.model.codebook.qmf_weight = 0.0
    mf_only, _ = loss()
    (full - mf_only).backward()
    F, d = len(cfg.model.facets), cfg.model.dim
    item = t.model.item_tower.heads.proj.weight.grad.view(F, d, -1).clone()
    user = t.model.user_tower.heads.proj.weight.grad.view(F, d, -1).clone()
    return item, user, parts["qmf"]


def test_a_facet_at_scale_0_gets_no_qmf_gradient_while_a_facet_at_1_does(tiny_dataset):
    ds = tiny_dataset
    torch.manual_seed(0)
    ref = _Trainer(ds, ds.interactions, None, _cfg(start_step=0))
    ref.model.rq.observe(torch.nn.functional.normalize(torch.randn(64, 2, 8), dim=-1))
    ref.model.rq.activate_next_layer()
    item1, user1, q1 = _qmf_head_grads(ds, 1.0, ref)
    item01, user01, q01 = _qmf_head_grads(ds, [0.0, 1.0], ref)
    item10, user10, q10 = _qmf_head_grads(ds, [1.0, 0.0], ref)
    assert q1 == pytest.approx(q01) == pytest.approx(q10)  # the scales change gradients, not the loss
    # at 1.0 L_QMF reaches both facets' item heads and the engagement user head (the semantic facet's
    # L_QMF is item -> item only, so its user head gets none at any scale)
    assert item1[0].abs().sum() > 0 and user1[0].abs().sum() > 0 and item1[1].abs().sum() > 0
    assert user1[1].abs().sum() == 0
    # facet 0 (engagement) at 0: no L_QMF gradient into its heads; facet 1 unchanged from the all-1.0 run
    assert item01[0].abs().sum() == 0 and user01[0].abs().sum() == 0
    assert torch.allclose(item01[1], item1[1], atol=1e-6) and torch.allclose(user01[1], user1[1], atol=1e-6)
    # and the other way round
    assert item10[1].abs().sum() == 0 and user10[1].abs().sum() == 0
    assert torch.allclose(item10[0], item1[0], atol=1e-6) and torch.allclose(user10[0], user1[0], atol=1e-6)
