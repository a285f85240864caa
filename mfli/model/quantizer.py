"""Multifaceted residual quantisation (REFERENCE.md 1.2): functional core and the co-trained module.

Codebooks are a tensor ``C`` of shape ``(L, F, M, d)``: L layers, F facets, M codes, dimension d.
Per facet: r_0 = e; k_l = argmin_k ||r_{l-1} - C[l, f, k]||^2; r_l = r_{l-1} - C[l, f, k_l];
reconstruction e_hat = sum_l C[l, f, k_l]. The code tuple packs into one cluster id
``sum_l k_l * M**(L-1-l)``.

:class:`MultiFacetRQ` holds the codebooks as a parameter trained *by the retrieval loss* (the
reconstruction enters the sampled softmax), with a delayed start, layer-wise progressive
activation initialised by faiss k-means, dead-code re-seeding, an over-utilisation penalty and
codebook health metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def _sq_dist(residual: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    """Squared distances ``(N, F, M)`` between residuals ``(N, F, d)`` and codewords ``(F, M, d)``
    without materialising ``(N, F, M, d)``."""
    return (
        (residual * residual).sum(-1, keepdim=True)
        - 2 * torch.einsum("nfd,fmd->nfm", residual, cb)
        + (cb * cb).sum(-1).unsqueeze(0)
    )


def _gather_codewords(cb: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Codewords ``cb (F, M, d)`` picked by ``k (N, F)`` -> ``(N, F, d)`` (differentiable in ``cb``)."""
    f_idx = torch.arange(cb.shape[0], device=k.device).view(1, -1)
    return cb[f_idx, k]


def rq_encode(x: torch.Tensor, codebooks: torch.Tensor, layers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy residual quantisation.

    Args:
        x: ``(N, F, d)`` facet embeddings.
        codebooks: ``(L, F, M, d)``.
        layers: use only the first ``layers`` layers (progressive activation); default all.

    Returns:
        codes ``(N, F, L')`` int64 and reconstruction ``(N, F, d)`` (sum of chosen codewords).
    """
    L = codebooks.shape[0] if layers is None else layers
    residual = x
    recon = torch.zeros_like(x)
    codes = []
    for layer in range(L):
        cb = codebooks[layer]  # (F, M, d)
        k = _sq_dist(residual, cb).argmin(-1)  # (N, F)
        chosen = _gather_codewords(cb, k)
        recon = recon + chosen
        residual = residual - chosen
        codes.append(k)
    if not codes:
        return torch.zeros(x.shape[0], x.shape[1], 0, dtype=torch.long, device=x.device), recon
    return torch.stack(codes, -1), recon


def rq_decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Codes ``(N, F, L')`` -> reconstruction ``(N, F, d)`` using the first L' layers."""
    N, F, L = codes.shape
    out = torch.zeros(N, F, codebooks.shape[-1], dtype=codebooks.dtype, device=codebooks.device)
    for layer in range(L):
        out = out + _gather_codewords(codebooks[layer], codes[:, :, layer])
    return out


def pack_codes(codes: torch.Tensor, M: int) -> torch.Tensor:
    """Codes ``(..., L)`` -> cluster ids ``(...)`` int64: ``sum_l k_l * M**(L-1-l)``."""
    L = codes.shape[-1]
    weights = torch.tensor([M ** (L - 1 - i) for i in range(L)], dtype=torch.long, device=codes.device)
    return (codes.long() * weights).sum(-1)


def unpack_codes(cluster: torch.Tensor, M: int, L: int) -> torch.Tensor:
    """Cluster ids ``(...)`` -> codes ``(..., L)``."""
    out = []
    rest = cluster.long()
    for i in range(L):
        div = M ** (L - 1 - i)
        out.append(rest // div)
        rest = rest % div
    return torch.stack(out, -1)


def kmeans(points: np.ndarray, k: int, iters: int = 20, seed: int = 0) -> np.ndarray:
    """faiss k-means: ``points (n, d)`` -> centroids ``(k, d)`` float32.

    With fewer distinct points than ``k`` the points are repeated with small noise, so a layer can
    always be initialised (its surplus codes are then re-seeded once real data arrives).
    """
    import faiss

    pts = np.ascontiguousarray(points, dtype=np.float32)
    if len(pts) == 0:
        raise ValueError("k-means needs at least one point")
    if len(pts) < k:
        rng = np.random.default_rng(seed)
        reps = pts[rng.integers(0, len(pts), size=k - len(pts))]
        scale = float(pts.std()) + 1e-3
        pts = np.concatenate([pts, reps + rng.normal(0, 0.01 * scale, reps.shape).astype(np.float32)])
    # min_points_per_centroid=1: small layers (tests, tiny catalogues) are fine, no stderr warning
    km = faiss.Kmeans(pts.shape[1], k, niter=iters, seed=seed, verbose=False,
                      max_points_per_centroid=256, min_points_per_centroid=1)
    km.train(pts)
    return np.asarray(km.centroids, dtype=np.float32).reshape(k, pts.shape[1])


@dataclass
class QuantOutput:
    """Result of :meth:`MultiFacetRQ.forward` for B embeddings.

    Attributes:
        x_hat: ``(B, F, d)`` quantised embeddings to score with: value = sum of chosen codewords;
            gradient reaches the codewords directly and, with straight-through on, the encoder too.
            Equals the input when no layer is active.
        codes: ``(B, F, A)`` int64 codes of the A active layers.
        penalty: ``(F,)`` over-utilisation penalty per facet, summed over active layers (0 = balanced).
        commit: ``(F,)`` mean ``||x - sg(recon)||^2`` per facet (commitment: moves embeddings only).
        anchor: ``(F,)`` mean ``||sg(x) - recon||^2`` per facet (moves codewords only).
        active: A, the number of active layers.
    """

    x_hat: torch.Tensor
    codes: torch.Tensor
    penalty: torch.Tensor
    commit: torch.Tensor
    anchor: torch.Tensor
    active: int


class MultiFacetRQ(nn.Module):
    """Co-trained multifaceted residual-quantisation codebook.

    Args:
        n_layers: L.  n_facets: F.  n_codes: M.  dim: d.
        start_step: optimiser step at which layer 0 switches on (delayed start: the embeddings
            warm up first; quantising random embeddings wastes the k-means init).
        layer_interval: layer l switches on at ``start_step + l * layer_interval`` (coarse first).
        buffer_size: recent item embeddings kept (deduplicated by item id) for k-means init and
            dead-code re-seeding.
        dead_window: steps over which usage is counted; codes unused over a window are re-seeded.
        penalty_temperature: soft-assignment temperature, relative to each row's mean squared
            distance so the same value works at every layer (residuals shrink layer by layer).
        straight_through: L_QMF gradients also flow to the encoder (d x_hat / d x = scale * I).
        straight_through_scale: that scale (1: the plain estimator; 0: same as no straight-through);
            one float for all facets or one per facet (length ``n_facets``).
        normalize: return ``x_hat`` L2-normalised. The facet embeddings are unit vectors scored
            with one temperature; an unnormalised reconstruction lets the retrieval loss sharpen
            its softmax by inflating codeword norms, which wrecks the residual quantisation.
        kmeans_iters: faiss iterations at switch-on.  seed: k-means and re-seeding seed.

    Over-utilisation penalty (FLOPs-style, per facet and active layer):
    ``M * sum_k P_k^2 - 1`` with ``P_k`` the batch mean of the soft assignment to code k. It is 0
    when codes are used equally and M - 1 when one code takes everything; its gradient reaches
    only the codewords (residuals are detached) so it balances the codebook without bending the
    embeddings. It was chosen over DR's ``alpha * sum |c|^4`` because it is scale-free in M and
    differentiable through the soft assignment.

    Example:
        >>> rq = MultiFacetRQ(2, 2, 16, 32, start_step=100, layer_interval=50)
        >>> rq.observe(e.detach(), item_ids); rq.schedule(step)   # each training step
        >>> out = rq(e)                                           # e (B, 2, 32)
        >>> out.x_hat.shape, out.codes.shape                      # (B, 2, 32), (B, 2, active)
    """

    def __init__(
        self,
        n_layers: int,
        n_facets: int,
        n_codes: int,
        dim: int,
        start_step: int = 0,
        layer_interval: int = 0,
        buffer_size: int = 8192,
        dead_window: int = 100,
        penalty_temperature: float = 0.2,
        straight_through: bool = True,
        straight_through_scale: float | Sequence[float] = 1.0,
        kmeans_iters: int = 20,
        seed: int = 0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.L, self.F, self.M, self.d = n_layers, n_facets, n_codes, dim
        self.start_step, self.layer_interval = start_step, layer_interval
        self.buffer_size, self.dead_window = buffer_size, dead_window
        self.penalty_temperature = penalty_temperature
        self.straight_through = straight_through
        if isinstance(straight_through_scale, (int, float)):
            straight_through_scale = [float(straight_through_scale)] * n_facets
        scales = [float(v) for v in straight_through_scale]
        if len(scales) != n_facets:
            raise ValueError(f"straight_through_scale has {len(scales)} value(s) for {n_facets} facet(s)")
        # one float when every facet shares it (the plain estimator's exact arithmetic at 1.0)
        self.straight_through_scale: float | list[float] = scales[0] if len(set(scales)) == 1 else scales
        self.normalize = normalize
        self.kmeans_iters, self.seed = kmeans_iters, seed
        g = torch.Generator().manual_seed(seed)
        self.codebooks = nn.Parameter(torch.randn(n_layers, n_facets, n_codes, dim, generator=g) * 0.01)
        self.register_buffer("active", torch.zeros((), dtype=torch.long))
        # usage counts since the last re-seed check, per layer/facet/code
        self.register_buffer("usage", torch.zeros(n_layers, n_facets, n_codes), persistent=False)
        self.register_buffer("_buf", torch.zeros(buffer_size, n_facets, dim), persistent=False)
        self.register_buffer("_buf_ids", torch.full((buffer_size,), -1, dtype=torch.long), persistent=False)
        self._buf_pos = 0
        self._buf_fill = 0
        self._last_check = 0
        self.step = 0  # last step passed to :meth:`schedule`
        self.frozen = False  # true: no re-seeding (the frozen-codebook control of the tests)

    # forward ----------------------------------------------------------------------------------
    @property
    def n_active(self) -> int:
        return int(self.active.item())

    def forward(self, x: torch.Tensor, active_layers: int | None = None) -> QuantOutput:
        """Quantise ``x (B, F, d)`` with the first ``active_layers`` layers (default: the scheduled count)."""
        A = self.n_active if active_layers is None else int(active_layers)
        B = x.shape[0]
        zeros_f = x.new_zeros(self.F)
        if A == 0:
            no_codes = torch.zeros(B, self.F, 0, dtype=torch.long, device=x.device)
            return QuantOutput(x, no_codes, zeros_f, zeros_f, zeros_f, 0)
        residual = x.detach()
        recon = x.new_zeros(x.shape)
        penalty = zeros_f
        codes = []
        for layer in range(A):
            cb = self.codebooks[layer]  # (F, M, d) with grad
            d2 = _sq_dist(residual, cb)  # grad reaches cb only: residual is detached
            k = d2.detach().argmin(-1)  # (B, F)
            soft = torch.softmax(-d2 / (self.penalty_temperature * d2.detach().mean(-1, keepdim=True) + 1e-8), -1)
            share = soft.mean(0)  # (F, M)
            penalty = penalty + self.M * (share * share).sum(-1) - 1.0
            chosen = _gather_codewords(cb, k)  # (B, F, d), grad to the codewords
            recon = recon + chosen
            residual = residual - chosen.detach()
            codes.append(k)
            if self.training:
                self.usage[layer] += torch.nn.functional.one_hot(k, self.M).sum(0).to(self.usage.dtype)
        if self.straight_through:
            # forward value is recon; d x_hat / d x = scale * I
            scale = self.straight_through_scale
            if isinstance(scale, list):  # per facet: (1, F, 1) broadcast over (B, F, d)
                scale = x.new_tensor(scale).view(1, -1, 1)
            x_hat = recon + scale * (x - x.detach())
        else:
            x_hat = recon
        if self.normalize:
            x_hat = torch.nn.functional.normalize(x_hat, dim=-1)
        commit = ((x - recon.detach()) ** 2).sum(-1).mean(0)
        anchor = ((x.detach() - recon) ** 2).sum(-1).mean(0)
        return QuantOutput(x_hat, torch.stack(codes, -1), penalty, commit, anchor, A)

    def encode(self, x: torch.Tensor, layers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """No-grad :func:`rq_encode` with this codebook: ``x (N, F, d)`` -> codes ``(N, F, A)``, recon."""
        with torch.no_grad():
            return rq_encode(x, self.codebooks.detach(), self.n_active if layers is None else layers)

    # buffer, schedule, init, re-seeding -----------------------------------------------------
    def observe(self, x: torch.Tensor, item_ids: torch.Tensor | None = None) -> None:
        """Push ``x (B, F, d)`` (detached) and their ids ``(B,)`` into the ring buffer."""
        x = x.detach()
        B = min(x.shape[0], self.buffer_size)
        x = x[-B:]
        ids = item_ids[-B:] if item_ids is not None else torch.full((B,), -1, dtype=torch.long)
        idx = (torch.arange(B, device=self._buf.device) + self._buf_pos) % self.buffer_size
        self._buf[idx] = x.to(self._buf)
        self._buf_ids[idx] = ids.to(self._buf_ids)
        self._buf_pos = (self._buf_pos + B) % self.buffer_size
        self._buf_fill = min(self._buf_fill + B, self.buffer_size)

    def buffer(self) -> torch.Tensor:
        """Buffered embeddings ``(n, F, d)``, one row per item id (latest kept; id -1 rows all kept)."""
        n = self._buf_fill
        if n == 0:
            return self._buf[:0]
        # order oldest -> newest so that "last occurrence" is the latest embedding of an item
        order = (torch.arange(n, device=self._buf.device) + (self._buf_pos - n)) % self.buffer_size
        x, ids = self._buf[order], self._buf_ids[order].cpu().numpy()
        rev = ids[::-1]
        _, first_in_rev = np.unique(rev, return_index=True)
        keep = np.sort(len(ids) - 1 - first_in_rev)
        keep = np.union1d(keep, np.flatnonzero(ids < 0))
        return x[torch.as_tensor(keep, device=x.device)]

    def target_active(self, step: int) -> int:
        """Layers that should be on at optimiser step ``step`` (delayed start + progressive activation)."""
        if step < self.start_step:
            return 0
        if self.layer_interval <= 0:
            return self.L
        return min(self.L, 1 + (step - self.start_step) // self.layer_interval)

    def schedule(self, step: int) -> list[str]:
        """Advance the schedule to ``step``: switch layers on (k-means init) and re-seed dead codes.

        Returns human-readable events (for logs), e.g. ``["layer 0 on", "reseeded 3 codes"]``.
        """
        events = []
        self.step = step
        while self.n_active < self.target_active(step) and self._buf_fill > 0:
            self.activate_next_layer()
            events.append(f"layer {self.n_active - 1} on")
            self._last_check = step
        if self.n_active and not self.frozen and step - self._last_check >= self.dead_window:
            n = self.reseed_dead()
            self._last_check = step
            if n:
                events.append(f"reseeded {n} codes")
        return events

    def _residuals(self, x: torch.Tensor, layers: int) -> torch.Tensor:
        """Residual ``(N, F, d)`` of ``x`` after the first ``layers`` layers."""
        if layers == 0:
            return x
        _, recon = rq_encode(x, self.codebooks.detach(), layers)
        return x - recon

    @torch.no_grad()
    def activate_next_layer(self) -> None:
        """k-means (faiss) the buffer's residuals after the active layers into the next layer; switch it on."""
        layer = self.n_active
        if layer >= self.L:
            return
        res = self._residuals(self.buffer(), layer)
        for f in range(self.F):
            cent = kmeans(res[:, f].cpu().numpy(), self.M, self.kmeans_iters, self.seed + 1000 * layer + f)
            self.codebooks.data[layer, f] = torch.from_numpy(cent).to(self.codebooks)
        self.active.fill_(layer + 1)
        self.usage.zero_()

    @torch.no_grad()
    def fit_kmeans(self, x: torch.Tensor) -> None:
        """Fit every layer by k-means on ``x (N, F, d)`` residuals (the "kmeans_after" ablation)."""
        self.active.zero_()
        for layer in range(self.L):
            res = self._residuals(x, layer)
            for f in range(self.F):
                cent = kmeans(res[:, f].cpu().numpy(), self.M, self.kmeans_iters, self.seed + 1000 * layer + f)
                self.codebooks.data[layer, f] = torch.from_numpy(cent).to(self.codebooks)
            self.active.fill_(layer + 1)

    @torch.no_grad()
    def reseed_dead(self, min_count: float = 1.0) -> int:
        """Re-seed codes used fewer than ``min_count`` times since the last check.

        A dead code is moved onto the residual (at its layer) of a buffered item with a high
        quantisation error at that layer, drawn among the worst-served items, so it takes load
        off overcrowded codes. Returns the number of codes re-seeded; usage counts restart.
        """
        x = self.buffer()
        if len(x) == 0:
            return 0
        g = torch.Generator().manual_seed(self.seed + int(self.usage.sum().item()) % 100003)
        total = 0
        residual = x
        for layer in range(self.n_active):
            cb = self.codebooks.data[layer]
            d2 = _sq_dist(residual, cb)
            k = d2.argmin(-1)
            err = d2.gather(-1, k.unsqueeze(-1)).squeeze(-1)  # (N, F)
            for f in range(self.F):
                dead = torch.nonzero(self.usage[layer, f] < min_count).flatten()
                if len(dead) == 0:
                    continue
                pool = torch.argsort(err[:, f], descending=True)[: max(4 * len(dead), 16)].cpu()
                pick = pool[torch.randperm(len(pool), generator=g)[: len(dead)]]
                if len(pick) < len(dead):
                    pick = pool[torch.randint(len(pool), (len(dead),), generator=g)]
                noise = torch.randn(len(dead), self.d, generator=g).to(cb) * 1e-3
                cb[f, dead] = residual[pick.to(residual.device), f] + noise
                total += len(dead)
            residual = residual - _gather_codewords(cb, _sq_dist(residual, cb).argmin(-1))
        self.usage.zero_()
        return total

    # health -----------------------------------------------------------------------------------
    @torch.no_grad()
    def health(self, x: torch.Tensor, facet_names: list[str] | None = None) -> dict[str, list[dict]]:
        """Codebook health on ``x (N, F, d)`` (e.g. all training items), per facet and active layer.

        For facet f and level l (1-based, the first l layers together):
          - ``util``: share of the M codes of layer l used by at least one item;
          - ``ppl``: perplexity exp(H) of the layer-l code distribution (M = perfectly even);
          - ``paths``: distinct code paths (k_1..k_l) / min(M^l, N), i.e. occupied clusters;
          - ``collision``: share of items whose path (k_1..k_l) is shared with at least one other
            item (at the last level: items that do not have a cluster to themselves);
          - ``max_share``: share of items in the largest level-l cluster;
          - ``qerr``: mean ||x - sum_{j<=l} C_j[k_j]||^2.
        Returns ``{facet_name: [level dicts]}``; empty lists when no layer is active.
        """
        names = facet_names or [f"facet{f}" for f in range(self.F)]
        A = self.n_active
        out: dict[str, list[dict]] = {n: [] for n in names}
        if A == 0 or len(x) == 0:
            return out
        codes, _ = rq_encode(x, self.codebooks.detach(), A)
        codes = codes.cpu()
        N = x.shape[0]
        recon = torch.zeros_like(x)
        for layer in range(A):
            recon = recon + _gather_codewords(self.codebooks.detach()[layer], codes[:, :, layer].to(x.device))
            qerr = ((x - recon) ** 2).sum(-1).mean(0).cpu()  # (F,)
            for f, name in enumerate(names):
                k = codes[:, f, layer]
                cnt = torch.bincount(k, minlength=self.M).double()
                p = cnt / cnt.sum()
                ent = -(p[p > 0] * p[p > 0].log()).sum().item()
                path = pack_codes(codes[:, f, : layer + 1], self.M)
                _, inv, pc = torch.unique(path, return_inverse=True, return_counts=True)
                out[name].append(
                    {
                        "level": layer + 1,
                        "util": float((cnt > 0).double().mean()),
                        "ppl": float(math.exp(ent)),
                        "paths": float(len(pc) / min(self.M ** (layer + 1), N)),
                        "collision": float((pc[inv] > 1).double().mean()),
                        "max_share": float(pc.max().item() / N),
                        "qerr": float(qerr[f]),
                    }
                )
        return out
