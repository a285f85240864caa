"""Multifaceted RQ: functional core (encode/decode/pack), the co-trained module, its schedule,
k-means init, dead-code re-seeding, penalty and health metrics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mfli.model.losses import sampled_softmax
from mfli.model.quantizer import MultiFacetRQ, pack_codes, rq_decode, rq_encode, unpack_codes


@pytest.fixture(autouse=True)
def _one_thread():
    """Small ops: extra threads only spin-wait on a shared machine (20x slower when it is busy)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def test_encode_decode_round_trip_and_packing():
    x = _unit(50, 2, 8)
    cb = torch.randn(3, 2, 5, 8, generator=torch.Generator().manual_seed(1)) * 0.5
    codes, recon = rq_encode(x, cb)
    assert codes.shape == (50, 2, 3) and codes.dtype == torch.long
    assert torch.allclose(rq_decode(codes, cb), recon, atol=1e-6)
    # recon is literally the sum of the chosen codewords
    for f in range(2):
        s = torch.zeros(50, 8)
        for layer in range(3):
            s += cb[layer, f][codes[:, f, layer]]
        assert torch.allclose(s, recon[:, f], atol=1e-6)
    cluster = pack_codes(codes, 5)
    assert int(cluster.max()) < 5**3
    assert torch.equal(cluster[:, 0], codes[:, 0, 0] * 25 + codes[:, 0, 1] * 5 + codes[:, 0, 2])
    assert torch.equal(unpack_codes(cluster, 5, 3), codes)


def test_residual_error_non_increasing_with_layers():
    x = _unit(400, 2, 8, seed=3)
    rq = MultiFacetRQ(3, 2, 8, 8, seed=0)
    rq.fit_kmeans(x)
    cb = rq.codebooks.detach()
    errs = [((x - rq_encode(x, cb, layers)[1]) ** 2).sum(-1).mean().item() for layers in range(4)]
    assert errs[0] == pytest.approx(1.0, abs=1e-5)  # unit vectors, empty reconstruction
    assert errs[1] < errs[0] and errs[2] < errs[1] and errs[3] < errs[2], errs
    # with a zero codeword available in every layer, greedy RQ never makes an item worse
    cb0 = torch.randn(3, 2, 6, 8, generator=torch.Generator().manual_seed(2)) * 0.4
    cb0[:, :, 0] = 0.0
    per_item = [(x - rq_encode(x, cb0, layers)[1]).norm(dim=-1) for layers in range(4)]
    for a, b in itertools.pairwise(per_item):
        assert torch.all(b <= a + 1e-6)


def test_straight_through_gradients_reach_encoder_and_codewords():
    x = _unit(16, 2, 8).requires_grad_(True)
    rq = MultiFacetRQ(2, 2, 4, 8, seed=0)
    rq.observe(x.detach())
    rq.activate_next_layer()
    rq.activate_next_layer()
    out = rq(x)
    assert out.x_hat.shape == (16, 2, 8) and out.codes.shape == (16, 2, 2)
    q = _unit(16, 8, seed=5)
    loss = sampled_softmax(q, out.x_hat[:, 0], torch.arange(16), 0.1)
    loss.backward()
    assert x.grad is not None and x.grad[:, 0].abs().sum() > 0  # straight-through to the encoder
    assert x.grad[:, 1].abs().sum() == 0  # facet 1 was not in the loss
    g = rq.codebooks.grad
    used = torch.zeros(2, 4, dtype=torch.bool)
    for layer in range(2):
        used[layer, out.codes[:, 0, layer].unique()] = True
    assert g[:, 0][used].abs().sum() > 0  # chosen codewords are trained by the retrieval loss
    assert g[:, 0][~used].abs().sum() == 0
    # without straight-through the encoder gets nothing from L_QMF
    x2 = x.detach().clone().requires_grad_(True)
    rq.straight_through = False
    sampled_softmax(q, rq(x2).x_hat[:, 0], torch.arange(16), 0.1).backward()
    assert x2.grad is None or x2.grad.abs().sum() == 0


def test_schedule_delayed_start_and_progressive_activation():
    rq = MultiFacetRQ(3, 1, 4, 8, start_step=10, layer_interval=5, seed=0)
    assert [rq.target_active(s) for s in (0, 9, 10, 14, 15, 19, 20, 100)] == [0, 0, 1, 1, 2, 2, 3, 3]
    x = _unit(64, 1, 8)
    out = rq(x)
    assert out.active == 0 and torch.equal(out.x_hat, x)  # codebook off: identity
    rq.observe(x)
    active = []
    for step in range(1, 26):
        rq.schedule(step)
        active.append(rq.n_active)
    assert active[8] == 0 and active[9] == 1 and active[14] == 2 and active[19] == 3 and active[-1] == 3


def test_kmeans_init_activates_layer_and_fits_data():
    torch.manual_seed(0)
    centers = _unit(8, 16, seed=1)
    x = F.normalize(centers[torch.arange(400) % 8] + 0.05 * torch.randn(400, 16), dim=-1).unsqueeze(1)
    rq = MultiFacetRQ(2, 1, 8, 16, seed=0)
    random_err = ((x - rq_encode(x, rq.codebooks.detach(), 1)[1]) ** 2).sum(-1).mean().item()
    rq.observe(x, torch.arange(400))
    rq.activate_next_layer()
    assert rq.n_active == 1
    h = rq.health(x, ["f"])["f"]
    assert len(h) == 1
    assert h[0]["util"] == 1.0 and h[0]["ppl"] > 6.0  # near the 8 equal clusters
    assert h[0]["qerr"] < 0.2 * random_err, (h, random_err)


def test_dead_codes_are_reseeded_and_used_again():
    x = _unit(300, 1, 8, seed=4)
    rq = MultiFacetRQ(1, 1, 8, 8, seed=0)
    rq.observe(x, torch.arange(300))
    rq.activate_next_layer()
    with torch.no_grad():
        rq.codebooks[0, 0, 4:] = 50.0  # four codes nobody can reach
    rq.train()
    rq(x)
    assert rq.usage[0, 0, 4:].sum() == 0
    before = rq.health(x, ["f"])["f"][0]
    assert before["util"] == 0.5
    n = rq.reseed_dead()
    assert n == 4
    after = rq.health(x, ["f"])["f"][0]
    assert after["util"] == 1.0
    assert after["qerr"] < before["qerr"]
    # the schedule re-seeds on its own every dead_window steps
    rq2 = MultiFacetRQ(1, 1, 8, 8, start_step=0, dead_window=5, seed=0)
    rq2.observe(x, torch.arange(300))
    rq2.schedule(1)
    with torch.no_grad():
        rq2.codebooks[0, 0, :2] = 50.0
    rq2.train()
    events = []
    for step in range(2, 12):
        rq2(x[:64])
        events += rq2.schedule(step)
    assert any(e.startswith("reseeded") for e in events)
    assert rq2.health(x, ["f"])["f"][0]["util"] == 1.0


def test_penalty_is_zero_when_balanced_and_large_when_collapsed():
    cb = torch.eye(4).view(1, 1, 4, 4)
    rq = MultiFacetRQ(1, 1, 4, 4, seed=0, penalty_temperature=0.01)
    with torch.no_grad():
        rq.codebooks.copy_(cb)
    rq.active.fill_(1)
    balanced = torch.eye(4).repeat(8, 1).unsqueeze(1)  # every code used equally
    collapsed = torch.eye(4)[[0] * 32].unsqueeze(1)  # one code takes everything
    assert rq(balanced).penalty.item() == pytest.approx(0.0, abs=1e-3)
    assert rq(collapsed).penalty.item() == pytest.approx(3.0, abs=1e-2)  # M - 1


def test_health_metrics_on_a_hand_made_case():
    rq = MultiFacetRQ(2, 1, 4, 4, seed=0)
    with torch.no_grad():
        rq.codebooks.zero_()
        rq.codebooks[0, 0] = torch.eye(4)
        rq.codebooks[1, 0, 1] = torch.tensor([0.0, 0.0, 0.0, 0.5])
    rq.active.fill_(2)
    x = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0.5], [1, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.float).unsqueeze(1)
    h = rq.health(x, ["f"])["f"]
    # level 1 codes: 0, 0, 0, 1 ; level 2 codes: 0, 1, 0, 0
    assert h[0]["util"] == 0.5
    assert h[0]["ppl"] == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    assert h[0]["collision"] == 0.75 and h[0]["max_share"] == 0.75
    assert h[1]["collision"] == 0.5  # paths (0,0) x2, (0,1), (1,0)
    assert h[1]["paths"] == 0.75  # 3 distinct paths / min(16, 4)
    assert h[1]["qerr"] == pytest.approx(0.0, abs=1e-6)
    assert h[0]["qerr"] == pytest.approx(0.25 / 4, abs=1e-6)


def _cotrain(frozen: bool, steps: int = 160) -> dict:
    """Embeddings of 16 latent topics learned by in-batch softmax with L_MF + L_QMF; the codebook
    switches on early (k-means on still-random embeddings) and is then trained or kept frozen."""
    torch.manual_seed(0)
    N, C, d, M = 512, 16, 16, 16
    topic = torch.arange(N) % C
    emb = torch.nn.Parameter(torch.randn(N, 1, d))
    rq = MultiFacetRQ(1, 1, M, d, start_step=3, dead_window=20, seed=0)
    rq.frozen = frozen
    params = [emb] if frozen else [emb, rq.codebooks]
    opt = torch.optim.Adam(params, lr=0.05)
    rng = np.random.default_rng(0)
    rq.train()
    for step in range(steps):
        a = torch.as_tensor(rng.integers(0, N, 128))
        b = torch.as_tensor((rng.integers(0, N // C, 128) * C) + topic[a].numpy())
        xa, xb = F.normalize(emb[a], dim=-1), F.normalize(emb[b], dim=-1)
        loss = sampled_softmax(xa[:, 0], xb[:, 0], b, 0.1)
        if rq.n_active:
            out = rq(xb)
            loss = loss + sampled_softmax(xa[:, 0], out.x_hat[:, 0], b, 0.1) + 0.05 * out.penalty.sum()
            loss = loss + out.anchor.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rq.observe(xb.detach(), b)
        rq.schedule(step + 1)
    x = F.normalize(emb.detach(), dim=-1)
    return rq.health(x, ["f"])["f"][0]


def test_cotraining_beats_a_frozen_codebook():
    joint, frozen = _cotrain(frozen=False), _cotrain(frozen=True)
    assert joint["qerr"] < 0.5 * frozen["qerr"], (joint, frozen)
    assert joint["ppl"] > frozen["ppl"] + 1.0, (joint, frozen)
    assert joint["util"] >= frozen["util"]


def test_straight_through_scale_scales_only_the_encoder_gradient():
    q = _unit(16, 8, seed=5)
    grads = {}
    for scale in (1.0, 0.25):
        x = _unit(16, 2, 8).requires_grad_(True)
        rq = MultiFacetRQ(2, 2, 4, 8, seed=0, straight_through_scale=scale)
        rq.observe(x.detach())
        rq.activate_next_layer()
        out = rq(x)
        sampled_softmax(q, out.x_hat[:, 0], torch.arange(16), 0.1).backward()
        grads[scale] = (x.grad.clone(), rq.codebooks.grad.clone(), out.x_hat.detach())
    assert torch.equal(grads[1.0][2], grads[0.25][2])  # same forward value
    assert torch.allclose(grads[0.25][0], 0.25 * grads[1.0][0], atol=1e-7)
    assert torch.allclose(grads[0.25][1], grads[1.0][1])  # codewords get the full gradient either way
