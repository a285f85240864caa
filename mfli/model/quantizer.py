"""Multifaceted residual quantisation (REFERENCE.md 1.2): functional core.

Codebooks are a tensor ``C`` of shape ``(L, F, M, d)``: L layers, F facets, M codes, dimension d.
Per facet: r_0 = e; k_l = argmin_k ||r_{l-1} - C[l, f, k]||^2; r_l = r_{l-1} - C[l, f, k_l];
reconstruction e_hat = sum_l C[l, f, k_l]. The code tuple packs into one cluster id
``sum_l k_l * M**(L-1-l)``.
"""

from __future__ import annotations

import torch


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
        # squared distance (N, F, M) without materialising (N, F, M, d)
        d2 = (
            (residual * residual).sum(-1, keepdim=True)
            - 2 * torch.einsum("nfd,fmd->nfm", residual, cb)
            + (cb * cb).sum(-1).unsqueeze(0)
        )
        k = d2.argmin(-1)  # (N, F)
        chosen = torch.gather(cb.unsqueeze(0).expand(x.shape[0], -1, -1, -1), 2,
                              k[..., None, None].expand(-1, -1, 1, cb.shape[-1])).squeeze(2)
        recon = recon + chosen
        residual = residual - chosen
        codes.append(k)
    if not codes:
        return torch.zeros(x.shape[0], x.shape[1], 0, dtype=torch.long), recon
    return torch.stack(codes, -1), recon


def rq_decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Codes ``(N, F, L')`` -> reconstruction ``(N, F, d)`` using the first L' layers."""
    N, F, L = codes.shape
    f_idx = torch.arange(F).view(1, F)
    out = torch.zeros(N, F, codebooks.shape[-1], dtype=codebooks.dtype)
    for layer in range(L):
        out = out + codebooks[layer][f_idx, codes[:, :, layer]]
    return out


def pack_codes(codes: torch.Tensor, M: int) -> torch.Tensor:
    """Codes ``(..., L)`` -> cluster ids ``(...)`` int64: ``sum_l k_l * M**(L-1-l)``."""
    L = codes.shape[-1]
    weights = torch.tensor([M ** (L - 1 - i) for i in range(L)], dtype=torch.long)
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
