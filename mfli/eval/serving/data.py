"""The benchmark's catalogue: trained-model or synthetic embeddings, queries, codebooks."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from mfli.eval.serving.config import Log, ServingBenchConfig
from mfli.eval.serving.machine import set_threads


@dataclass
class BenchData:
    """Everything the methods share.

    Attributes:
        item_ids: ``(N,)`` int64.
        items: ``(N, F, d)`` float32 L2-normalised facet embeddings.
        queries: ``(Q, F, d)`` float32 query embeddings.
        codebooks: ``(L, F, M, d)`` float32.
        facet_names: F names.
        source: provenance (JSON).
        histories: Q lists of item ids, oldest first (model source; DR's queries).
        interactions: the training events (model source; DR's training data).
    """

    item_ids: np.ndarray
    items: np.ndarray
    queries: np.ndarray
    codebooks: np.ndarray
    facet_names: list[str]
    source: dict
    histories: list[list[int]] | None = None
    interactions: object | None = None


def facet_configs(n: int) -> list:
    """Facet list of the model source: 1 engagement; 2 + semantic; 3 the paper's count."""
    from mfli.model.config import FacetConfig, default_facets, three_facets

    if n == 1:
        return [FacetConfig(name="engagement", kind="engagement")]
    if n == 2:
        return default_facets()
    if n == 3:
        return three_facets()
    raise ValueError(f"facets must be 1, 2 or 3, got {n}")


def train_bench_model(ds, interactions, *, dim: int, facets: int, layers: int, codes: int | None,
                      hidden: int, steps: int, threads: int, seed: int):
    """Train a small MFLI model briefly on ``ds``'s items that have events (its training subsample).

    Returns:
        ``(model, seconds, n_train_items)``.
    """
    from mfli.data.dataset import Dataset
    from mfli.model.config import CodebookConfig, ModelConfig
    from mfli.train import TrainConfig, train

    seen = np.unique(interactions["item_id"].to_numpy(np.int64))
    items = ds.items[ds.items["item_id"].isin(seen)].reset_index(drop=True)
    sub = Dataset(name=f"{ds.name}-train", format=ds.format, interactions=interactions, items=items,
                  users=ds.users, meta={})
    cfg = TrainConfig(
        model=ModelConfig(dim=dim, hidden=hidden, facets=facet_configs(facets),
                          # the gradient share the published serving figures were measured with: a model
                          # trained this briefly needs L_QMF to pull its items onto the codewords (with the
                          # library default 0 the 8-step test model's beam recall fell from > 0.9 to 0.76)
                          codebook=CodebookConfig(layers=layers, codes=codes, straight_through_scale=1.0,
                                                  qmf_query_scale=1.0)),
        # epochs only bound the loop: max_steps decides; no validation split (the benchmark needs
        # geometry, not a tuned model), no progress bar, a fixed thread count on a shared machine
        epochs=10_000, max_steps=steps, valid_frac=0.0, progress=False, num_threads=threads, seed=seed,
    )
    t0 = time.perf_counter()
    model = train(sub, interactions, cfg)
    return model, time.perf_counter() - t0, len(items)


def user_histories(interactions) -> dict[int, list[int]]:
    """user id -> item ids oldest first."""
    inter = interactions.sort_values(["user_id", "event_ts", "item_id"], kind="stable")
    return {int(u): g.tolist() for u, g in inter.groupby("user_id", sort=True)["item_id"]}


def kmeans_rq_codebooks(emb: np.ndarray, layers: int, codes: int, seed: int = 0,
                        max_points: int | None = None) -> np.ndarray:
    """``(L, F, M, d)`` residual k-means codebooks (faiss) fitted per facet on a sample of ``emb (N, F, d)``.

    Layer l clusters the residuals left by layers < l (the RQ construction of REFERENCE.md 1.2); the
    stand-in for co-trained codebooks when there is no trained model.
    """
    import faiss

    N, F, d = emb.shape
    max_points = max_points or 256 * codes
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(N, min(N, max_points), replace=False))
    cb = np.zeros((layers, F, codes, d), np.float32)
    for f in range(F):
        r = np.ascontiguousarray(emb[sample, f], dtype=np.float32)
        for layer in range(layers):
            km = faiss.Kmeans(d, codes, niter=20, seed=seed + layer, verbose=False,
                              min_points_per_centroid=1, max_points_per_centroid=256)
            km.train(r)
            cb[layer, f] = km.centroids
            _, a = km.index.search(r, 1)
            r = r - km.centroids[a[:, 0]]
    return cb


def synthetic_embeddings(n: int, n_queries: int, F: int, d: int, seed: int = 0, topics: int = 100,
                         subtopics: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical topic clusters: ``items (n, F, d)`` and ``queries (n_queries, F, d)``, unit per facet.

    Per facet: topic centres ~ N(0, I); subtopic = topic + 0.6 N(0, I); item = subtopic + 0.5 N(0, I)
    with Zipf-sized topics. A query mixes 1-3 interest topics' subtopic centres plus noise, so its
    exact neighbours spread over several clusters, as a user's interests do.
    """
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, topics + 1) ** 0.7
    p /= p.sum()
    items = np.empty((n, F, d), np.float32)
    queries = np.empty((n_queries, F, d), np.float32)
    leaf_of = rng.choice(topics, n, p=p) * subtopics + rng.integers(0, subtopics, n)
    n_int = rng.integers(1, 4, n_queries)
    for f in range(F):
        tc = rng.standard_normal((topics, d)).astype(np.float32)
        sc = (np.repeat(tc, subtopics, 0) + 0.6 * rng.standard_normal((topics * subtopics, d))).astype(np.float32)
        for s in range(0, n, 1 << 18):
            e = min(n, s + (1 << 18))
            x = sc[leaf_of[s:e]] + 0.5 * rng.standard_normal((e - s, d)).astype(np.float32)
            items[s:e, f] = x / np.linalg.norm(x, axis=1, keepdims=True)
        for i in range(n_queries):
            leaves = rng.choice(topics, n_int[i], p=p) * subtopics + rng.integers(0, subtopics, n_int[i])
            x = sc[leaves].mean(0) + 0.3 * rng.standard_normal(d).astype(np.float32)
            queries[i, f] = x / np.linalg.norm(x)
    return items, queries


def prepare_data(cfg: ServingBenchConfig, log: Log) -> tuple[BenchData, dict]:
    """Embeddings, queries and codebooks per ``cfg.embeddings``; returns the data and stage seconds."""
    sec: dict[str, float] = {}
    if cfg.embeddings == "synthetic":
        t0 = time.perf_counter()
        items, queries = synthetic_embeddings(cfg.n_items, cfg.n_queries, cfg.facets, cfg.dim, cfg.seed)
        sec["embeddings"] = time.perf_counter() - t0
        set_threads(cfg.build_threads)
        t0 = time.perf_counter()
        cb = kmeans_rq_codebooks(items, cfg.layers, cfg.codes, cfg.seed)
        sec["codebooks_kmeans"] = time.perf_counter() - t0
        set_threads(cfg.threads)
        src = {"embedding_source": "synthetic_clusters",
               "description": "hierarchical topic clusters (100 Zipf-sized topics x 10 subtopics per facet), "
                              "queries = noisy mixtures of 1-3 subtopic centres; no model",
               "codebook_source": "faiss k-means RQ on a sample of the item embeddings (no trained codebook)"}
        return BenchData(np.arange(cfg.n_items, dtype=np.int64), items, queries, cb,
                         [f"facet{f}" for f in range(cfg.facets)], src), sec

    from mfli.data.synthetic import SyntheticConfig, generate
    from mfli.model.trained import TrainedModel

    t0 = time.perf_counter()
    n_users = max(cfg.n_users, cfg.n_queries)
    syn = SyntheticConfig(n_items=cfg.n_items, n_users=n_users,
                          n_interactions=max(cfg.n_interactions, 2 * n_users), seed=cfg.seed)
    ds = generate(syn)
    sec["generate"] = time.perf_counter() - t0
    log(f"  generated {len(ds.items):,} items, {len(ds.interactions):,} events in {sec['generate']:.1f}s")
    set_threads(cfg.threads)
    if cfg.model_dir:
        t0 = time.perf_counter()
        model = TrainedModel.load(cfg.model_dir)
        sec["model_load"] = time.perf_counter() - t0
        n_train = len(model.feature_space.known_item_ids)
        trained = False
    else:
        model, sec["train"], n_train = train_bench_model(
            ds, ds.interactions, dim=cfg.dim, facets=cfg.facets, layers=cfg.layers, codes=cfg.codes,
            hidden=cfg.hidden, steps=cfg.train_steps, threads=cfg.threads, seed=cfg.seed)
        trained = True
        log(f"  trained {cfg.train_steps} steps on {n_train:,} items in {sec['train']:.1f}s")
        if cfg.save_model_dir:
            model.save(cfg.save_model_dir)
    if model.model.cfg.dim != cfg.dim or len(model.facets) != cfg.facets:
        raise ValueError(f"model has F={len(model.facets)}, d={model.model.cfg.dim}; the run asks "
                         f"F={cfg.facets}, d={cfg.dim}")
    t0 = time.perf_counter()
    items = model.item_embeddings(ds.items, use_ids=False).numpy().astype(np.float32)
    sec["embed_items"] = time.perf_counter() - t0
    log(f"  embedded {len(items):,} items from content in {sec['embed_items']:.1f}s")
    t0 = time.perf_counter()
    hist = user_histories(ds.interactions)
    rng = np.random.default_rng(cfg.seed)
    users = np.sort(rng.choice(np.fromiter(hist.keys(), np.int64), cfg.n_queries, replace=False))
    histories = [hist[int(u)] for u in users]
    queries = model.user_embeddings(users, histories).numpy().astype(np.float32)
    sec["embed_queries"] = time.perf_counter() - t0
    cb = model.codebooks.numpy().astype(np.float32)
    cb_src = "co-trained (the model's codebooks)"
    if cb.shape[0] < cfg.layers or cb.shape[2] != cfg.codes:
        set_threads(cfg.build_threads)
        t0 = time.perf_counter()
        cb = kmeans_rq_codebooks(items, cfg.layers, cfg.codes, cfg.seed)
        sec["codebooks_kmeans"] = time.perf_counter() - t0
        set_threads(cfg.threads)
        cb_src = "faiss k-means RQ (the trained codebook had too few layers switched on)"
    src = {
        "embedding_source": "trained_model_content_only",
        "description": (f"synthetic catalogue of {cfg.n_items:,} items (mfli.data.synthetic, seed {cfg.seed}); an MFLI "
                        f"model trained {'for ' + str(cfg.train_steps) + ' steps ' if trained else ''}on its "
                        f"{n_train:,} items with events ({len(ds.interactions):,} events, {n_users:,} users); "
                        "item tower embeds every item from content only (no id embeddings); queries = "
                        "user-tower embeddings of sampled synthetic users from their histories"),
        "codebook_source": cb_src,
        "n_train_items": int(n_train),
        "n_events": len(ds.interactions),
        "n_users": int(n_users),
        "model_dir": cfg.model_dir,
    }
    return BenchData(ds.items["item_id"].to_numpy(np.int64), items, queries, cb, list(model.facets), src,
                     histories, ds.interactions), sec


def embedding_stats(items: np.ndarray, queries: np.ndarray, seed: int = 0, n: int = 1000,
                    pool: int = 200_000) -> dict:
    """Geometry that decides how hard recall@k is, per facet: mean cosine of random item pairs, of each
    of ``n`` probe items to its nearest other item among the first ``pool`` items, and of queries to items."""
    rng = np.random.default_rng(seed)
    N, F, _ = items.shape
    n = min(n, N // 2)
    pool = min(pool, N)
    out = {}
    for f in range(F):
        x = items[:, f]
        a, b = rng.choice(pool, n, replace=False), rng.choice(N, n, replace=False)
        best = np.full(n, -np.inf, np.float32)
        for s in range(0, pool, 25_000):
            sim = x[a] @ x[s : s + 25_000].T
            own = (a >= s) & (a < s + 25_000)
            sim[np.flatnonzero(own), a[own] - s] = -np.inf  # not itself
            best = np.maximum(best, sim.max(1))
        out[f"facet{f}"] = {
            "random_pair_cos": float(np.einsum("nd,nd->n", x[a], x[b]).mean()),
            "nn_cos": float(best.mean()),
            "nn_pool": int(pool),
            "query_item_cos": float((queries[: min(len(queries), 256), f] @ x[b].T).mean()),
        }
    return out
