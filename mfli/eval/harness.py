"""Quality benchmark: every method on the same split, in one process (REFERENCE.md section 4).

Per seed: split the dataset, train MFLI (towers + co-trained codebooks), build the index from the
items that have training events and rebalance it, then add the items without training events (the
split's cold items among them) through the delta path, from content alone. Methods:

- ``mfli``: user-to-item beam search over the codebook, items of the reached clusters scored by
  ``sum_f q_f . e_f`` (no ANN);
- ``mfli_blend``: blend mode (:mod:`mfli.serve.blend`): user mode through the scan engine, the
  co-engagement lists of the user's history (:mod:`mfli.index.coengagement`) and trigger mode from the
  neighbour lists, fused by weighted reciprocal rank, weights chosen on the validation split; reports
  each list's own recall (``part:{list}/...``) and the chosen weights (``blend_w:...``);
- ``mfli_trigger``: the paper's trigger mode, the user's most recent training items as triggers;
- ``mfli_trigger_lists``: trigger mode from the scan engine's neighbour lists (``EngineConfig.neighbours``):
  items ranked by their best ``e_t . e_i`` over the same triggers; same model, index and delta;
- ``exact``: exact maximum inner product search over the same embeddings (the embeddings' ceiling);
- ``mfli_kmeans``: ablation, k-means RQ fitted after training instead of co-trained;
- ``mfli_quota``: ablation, ``mfli`` with the per-facet quota merge instead of the summed score;
- ``mfli_facets``: ``mfli``'s merged result plus, for each facet f, user mode served from facet f alone
  (its clusters, ranked by ``q_f . e_f``: quota merge with all quota on f), same model and index;
- ``mfli_f1``, ``mfli_f3``: facet-count ablation, ``mfli`` trained with one facet (engagement) or three
  (engagement, recent engagement, semantic: :func:`_facet_set`), everything else as ``mfli``;
  ``mfli_f3`` also reports each of its facets alone, as ``mfli_facets`` does;
- ``mfli_neww``: ``mfli`` with the items without training events (the delta) ranked by
  ``sum_f w'_f q_f . e_f``, w' chosen on the validation split with simulated cold items
  (:mod:`mfli.eval.new_item_weights`); same model and index; the chosen w' and its validation recall
  are reported (``new_w:{facet}``, ``valid_recall_neww`` / ``valid_recall_equal``);
  ``mfli_new_sem0``: the fixed rule w' = 0 on semantic facets, 1 on the others (semantic off for new items);
- ``mfli_scan``: user mode through the compiled scan engine (``ServingConfig.engine="scan"``, its
  default settings) over the same model, index and delta as ``mfli``;
- ``hnsw``, ``ivf``: the same towers trained without codebooks, FAISS indexes rebuilt only at
  snapshot time (cold items invisible), ``hnsw_add``: HNSW with incremental ``add`` of new items;
  ``hnsw_i2i``: that HNSW searched once per recent item (item to item, the alternative to trigger
  lists), merged by each item's best score (their new items embedded by the item tower alone);
  ``hnsw_add_placed``, ``hnsw_i2i_placed``: the same with the two-tower model's new items placed as
  MFLI places them (:mod:`mfli.model.placement`): the baselines given MFLI's new-item trick;
- ``dr``: Deep Retrieval; ``pop``: popularity;
- ``ease``: EASE (closed-form item-item, lambda chosen on the validation split); ``itemknn``: cosine
  item-kNN (neighbourhood chosen on the validation split).

Every method sees the same test users, query histories, exclusions and metric code. Methods that
select hyper-parameters use :attr:`_SeedRun.validation` (:func:`mfli.eval.validation.validation_set`
of the split's training events: each user's latest events, the hold-out ``mfli.train`` early-stops
on), never the test events. Per-user recall@100 (and cold recall@100) arrays are kept per method so
the tables can give paired bootstrap intervals for every ratio (:mod:`mfli.eval.bootstrap`).

Queries come from each test user's training history; retrieval excludes the user's training items.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mfli.data.dataset import Dataset
from mfli.eval.metrics import (
    METRIC_KEYS,
    categories_by_item,
    evaluate_retrieval,
    histories_by_user,
    positives_by_user,
    recall_per_user,
    train_counts,
)

PER_USER_KEYS = ("recall@100", "cold_recall@100")  # kept per user for the bootstrap intervals

ALL_METHODS = ("mfli", "mfli_blend", "mfli_trigger", "mfli_trigger_lists", "mfli_scan", "mfli_neww", "mfli_new_sem0", "mfli_quota", "mfli_facets", "mfli_f1", "mfli_f3", "exact",
               "mfli_kmeans", "hnsw", "hnsw_add", "hnsw_i2i", "hnsw_add_placed", "hnsw_i2i_placed", "ivf", "dr", "pop",
               "ease", "itemknn")
BASELINES = ("hnsw", "hnsw_add", "hnsw_i2i", "ivf", "dr", "pop", "ease", "itemknn")  # "best baseline" is the best of these
K_MAX = 200  # the largest K any metric reads
FACET_PREFIX = "facet:"  # per-facet keys (mfli_facets, mfli_f3): f"facet:{name}/{metric}", one facet served alone


def _facet_set(name: str):
    """Facets of the facet-count ablation: "f1" engagement only, "f3" engagement + recent engagement +
    semantic (no ratings needed, so it runs on implicit data too). "default" is not here: it is the
    model config's own (library default or ``train_overrides``)."""
    from mfli.model.config import engagement_facet, recent_facets

    return {"f1": engagement_facet, "f3": recent_facets}[name]()


@dataclass
class QualityConfig:
    """What ``mfli bench quality`` runs."""

    methods: tuple[str, ...] = ("mfli", "mfli_trigger", "exact", "hnsw", "ivf", "dr", "pop")
    split: str = "time"  # "time" | "last" | "cold" (mfli.data.split.make_split)
    split_args: dict = field(default_factory=dict)  # passed to the split function, e.g. {"cutoff": "2024-06-24"}
    seeds: int = 3  # seeds 0..seeds-1: split (cold), training and retrieval sampling
    epochs: int | None = None  # override TrainConfig.epochs (None: the library default)
    beam: int = 32  # user-mode beam per facet
    triggers: int = 10  # most recent training items used as triggers
    trigger_clusters: int = 16  # K clusters drawn per facet in trigger mode
    hnsw_ef_search: int = 128  # FAISS HNSW efSearch for the quality table
    ivf_nprobe: int = 16  # FAISS IVF nprobe for the quality table
    max_users: int | None = None  # evaluate a seeded sample of test users (None: all)
    dr_placement: str = "neighbours"  # DRConfig.placement for items without training events
    num_threads: int = 0  # torch threads for training (0: process default)
    train_overrides: dict = field(default_factory=dict)  # TrainConfig fields, nested, e.g. {"batch_size": 1024}


def content_matrix(items: pd.DataFrame, dim: int = 256) -> np.ndarray:
    """``(N, dim)`` float32 L2-normalised hashed bag of categories and title/text tokens.

    Deep Retrieval places items never seen in training on the paths of their nearest trained
    neighbours in this space (crc32 hashing keeps it deterministic across processes).
    """
    import re

    out = np.zeros((len(items), dim), np.float32)
    tok = re.compile(r"[a-z0-9]+")
    for row, (cats, title, text) in enumerate(zip(items["categories"], items["title"], items["text"])):
        feats = [f"c:{c}" for c in (list(cats) if cats is not None else [])]
        feats += [f"t:{t}" for t in tok.findall(f"{title or ''} {text or ''}".lower())[:64]]
        for f in feats:
            out[row, zlib.crc32(f.encode()) % dim] += 1.0
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norm, 1e-12)


def _summary(values: list[dict]) -> dict:
    keys = [k for k in values[0] if isinstance(values[0][k], (int, float))]
    out: dict = {
        k: {"mean": float(np.mean([v[k] for v in values])), "std": float(np.std([v[k] for v in values])),
            "values": [float(v[k]) for v in values]}
        for k in keys
    }
    if "per_user" in values[0]:
        # {metric: [seed 0 array, seed 1 array, ...]}, nan where the user has no (cold) positive
        out["per_user"] = {k: [[round(float(x), 5) for x in v["per_user"][k]] for v in values]
                           for k in values[0]["per_user"]}
    return out


class _SeedRun:
    """Everything shared by the methods of one seed: split, users, queries, ground truth."""

    def __init__(self, ds: Dataset, cfg: QualityConfig, seed: int) -> None:
        from mfli.data.split import make_split

        self.ds, self.cfg, self.seed = ds, cfg, seed
        self.split = make_split(ds, cfg.split, seed=seed, **cfg.split_args)
        test_users = np.sort(self.split.test["user_id"].unique())
        hist = histories_by_user(self.split.train)
        test_users = test_users[np.isin(test_users, hist.index.to_numpy())]
        if cfg.max_users and len(test_users) > cfg.max_users:
            rng = np.random.default_rng(seed)
            test_users = np.sort(rng.choice(test_users, cfg.max_users, replace=False))
        self.users = test_users
        self.histories = [hist[u] for u in test_users]
        self.positives = positives_by_user(self.split.test, test_users)
        self.known = np.sort(self.split.train["item_id"].unique())
        items = ds.items
        self.known_items = items[items["item_id"].isin(self.known)].reset_index(drop=True)
        self.new_items = items[~items["item_id"].isin(self.known)].reset_index(drop=True)
        self.counts = train_counts(self.split.train)
        self.metric_inputs = dict(
            cold_items=self.split.cold_items,
            item_categories=categories_by_item(items),
            train_counts=self.counts,
            catalogue=items["item_id"].to_numpy(np.int64),
        )
        self._models: dict[tuple[str, str], object] = {}
        self._validation = None

    @property
    def validation(self):
        """The :class:`~mfli.eval.validation.ValidationSet` of this seed's training events (built once)."""
        if self._validation is None:
            from mfli.eval.validation import validation_set

            self._validation = validation_set(self.split.train, seed=self.seed)
        return self._validation

    def evaluate(self, retrieved: np.ndarray) -> dict:
        out = evaluate_retrieval(retrieved, self.positives, **self.metric_inputs)
        cold = np.asarray(self.metric_inputs["cold_items"], dtype=np.int64)
        out["per_user"] = {
            "recall@100": recall_per_user(retrieved, self.positives, 100),
            "cold_recall@100": recall_per_user(retrieved, [p[np.isin(p, cold)] for p in self.positives], 100),
        }
        return out

    def model(self, mode: str, facets: str = "default"):
        """The trained model for codebook ``mode`` ("joint", "kmeans_after" or "none") and facet set
        ``facets`` ("default": the configured facets; "f1" / "f3": :func:`_facet_set`), trained once per pair."""
        key = (mode, facets)
        if key not in self._models:
            from mfli.train import TrainConfig, train

            # overrides may be nested like the dataclasses ({"model": {"codebook": {...}}})
            tcfg = TrainConfig.from_dict({"num_threads": self.cfg.num_threads, **self.cfg.train_overrides,
                                          "seed": self.seed})
            if self.cfg.epochs is not None:
                tcfg.epochs = self.cfg.epochs
            # "none_placed": the two-tower model with MFLI's new-item placement (a baseline given our trick)
            tcfg.model.codebook.mode = "none" if mode == "none_placed" else mode
            if facets != "default":
                tcfg.model.facets = _facet_set(facets)
            if mode == "none":  # the plain two-tower baseline: new items embedded by its item tower alone
                tcfg.new_item_neighbours = 0
            t0 = time.perf_counter()
            self._models[key] = (train(self.ds, self.split.train, tcfg), time.perf_counter() - t0)
        return self._models[key]

    def queries(self, model) -> np.ndarray:
        return model.user_embeddings(self.users, self.histories).numpy()


def _mfli_index(run: _SeedRun, model):
    """Full build over items with training events + rebalance, then new items through the delta path."""
    from mfli.index.build import build_from_encoded, encode_items, popularity_score
    from mfli.index.delta import apply_delta, assign_paths

    t0 = time.perf_counter()
    enc = encode_items(model, run.known_items)
    result = build_from_encoded(
        enc, model.codebooks, model.facets, popularity_score(enc.item_ids, run.split.train)
    )
    build_s = time.perf_counter() - t0
    view = result.index
    if len(run.new_items):
        new = encode_items(model, run.new_items)
        clusters = assign_paths(new.embeddings, model.codebooks, result.maps)
        view = apply_delta(result.index, new.item_ids, new.embeddings, clusters)
    return result, view, build_s


def _run_mfli(run: _SeedRun, mode: str, codebook_mode: str = "joint", engine: str = "reference",
              merge: str = "sum", facets: str = "default", per_facet: bool = False,
              new_item_weights: tuple[float, ...] | None = None, lists: bool = False) -> dict:
    """MFLI in ``mode`` ("user" or "trigger"); ``lists``: trigger mode from the engine's neighbour lists
    (``engine="scan"``, ``neighbours`` = the largest K a metric reads); ``per_facet`` adds, for each facet f, the recall of user
    mode served from facet f alone (keys ``facet:{name}/{metric}``, per-user values too)."""
    from mfli.eval.metrics import index_health
    from mfli.serve.config import default_scan_config
    from mfli.serve.engine_retriever import EngineRetriever
    from mfli.serve.retriever import Retriever, RetrieverConfig

    model, train_s = run.model(codebook_mode, facets)
    result, view, build_s = _mfli_index(run, model)
    cfg = RetrieverConfig(beam=run.cfg.beam, merge=merge, n_clusters=run.cfg.trigger_clusters,
                          sampling="multinomial", seed=run.seed, new_item_facet_weights=new_item_weights)
    t0 = time.perf_counter()
    if engine == "scan":  # the serving default's engine settings (ServingConfig.scan)
        scan = default_scan_config()
        if lists:
            scan = dataclasses.replace(scan, neighbours=K_MAX)
        retriever = EngineRetriever(view, model.codebooks, model.facets, cfg, scan)
        build_s += time.perf_counter() - t0
    else:
        retriever = Retriever(view, model.codebooks, model.facets, cfg)
    t0 = time.perf_counter()
    if mode == "trigger":
        triggers = [h[-run.cfg.triggers:] for h in run.histories]
        res = retriever.retrieve_triggers(triggers, K_MAX, exclude=run.histories)
    else:
        queries = run.queries(model)
        res = retriever.retrieve_users(queries, K_MAX, exclude=run.histories)
    query_s = time.perf_counter() - t0
    out = run.evaluate(res.item_ids)
    if per_facet:  # user mode only: each facet's own beam, clusters and score
        facet_out = _per_facet(run, retriever, queries, cfg, model.facets)
        out["per_user"].update(facet_out.pop("per_user"))
        out.update(facet_out)
    health = index_health(result.index)
    out.update({f"index_{k}": v for k, v in health.items() if isinstance(v, (int, float))})
    out.update(train_s=train_s, build_s=build_s, query_s=query_s, n_facets=len(model.facets),
               placement_mix=model.placement.mix)
    return out


def _run_mfli_neww(run: _SeedRun) -> dict:
    """``mfli`` with new-item facet weights chosen on the validation split (:mod:`mfli.eval.new_item_weights`)."""
    from mfli.eval.new_item_weights import choose_new_item_weights

    model, _ = run.model("joint")
    t0 = time.perf_counter()
    choice = choose_new_item_weights(model, run.ds.items, run.split.train, run.validation, seed=run.seed)
    choose_s = time.perf_counter() - t0
    out = _run_mfli(run, "user", new_item_weights=choice.weights)
    out.update({f"new_w:{name}": w for name, w in zip(model.facets, choice.weights)})
    out.update(valid_recall_neww=choice.recall, valid_recall_equal=choice.recall_equal,
               valid_cold_recall_neww=choice.cold_recall, valid_cold_recall_equal=choice.cold_recall_equal,
               choose_s=choose_s)
    return out


def _run_mfli_blend(run: _SeedRun) -> dict:
    """Blend mode (:mod:`mfli.serve.blend`): user mode + co-engagement lists + trigger lists, fused by
    weighted reciprocal rank with the table and weights chosen on the validation split
    (:func:`mfli.eval.blend_select.select_blend`, as the daily evaluation chooses them).
    """
    from mfli.eval.blend_select import select_blend
    from mfli.index.coengagement import CoEngagementConfig
    from mfli.serve.blend import NEW_ITEMS_GRID, blend, blend_lists
    from mfli.serve.config import default_scan_config
    from mfli.serve.engine_retriever import EngineRetriever
    from mfli.serve.retriever import RetrieverConfig

    model, train_s = run.model("joint")
    _, view, build_s = _mfli_index(run, model)
    cfg = RetrieverConfig(beam=run.cfg.beam, merge="sum", seed=run.seed)
    scan = dataclasses.replace(default_scan_config(), neighbours=K_MAX)
    t0 = time.perf_counter()
    retriever = EngineRetriever(view, model.codebooks, model.facets, cfg, scan)
    build_s += time.perf_counter() - t0
    sel = select_blend(model, retriever, view, run.split.train, validation=run.validation,
                       coengagement=CoEngagementConfig(num_threads=run.cfg.num_threads), depth=K_MAX,
                       triggers=run.cfg.triggers, seed=run.seed, items=run.ds.items)
    co, weights = sel.table, sel.config.weights
    t0 = time.perf_counter()
    q = model.user_embeddings(run.users, run.histories).numpy()
    user, c, trig, trend = blend_lists(retriever, co, view, q, run.histories, K_MAX, run.cfg.triggers)
    u, t = user.item_ids, trig.item_ids
    ids, _ = blend(u, c, t, weights, co.item_ids, K_MAX, trend)
    query_s = time.perf_counter() - t0
    out = run.evaluate(ids)
    for name, part in (("user", u), ("coengagement", c), ("trigger", t), ("trending", trend)):
        if part is None:
            continue
        res = run.evaluate(part)
        out[f"part:{name}/recall@100"] = res["recall@100"]
        out[f"part:{name}/cold_recall@100"] = res["cold_recall@100"]
    # what each new-item credit would have given on the test split, the chosen weights otherwise fixed
    # (reported, never used to choose)
    for w in NEW_ITEMS_GRID:
        res = run.evaluate(blend(u, c, t, dataclasses.replace(weights, new_items=float(w)), co.item_ids, K_MAX,
                                 trend)[0])
        out[f"new_items_test:{w:g}/recall@100"] = res["recall@100"]
        out[f"new_items_test:{w:g}/cold_recall@100"] = res["cold_recall@100"]
    out.update({f"blend_w:{k}": float(v) for k, v in weights.to_dict().items()})
    out.update({f"valid_recall:{k}": v for k, v in sel.valid_recall.items()})
    co_s = sel.seconds["table"]
    out.update(placement_mix=model.placement.mix, train_s=train_s + co_s, coengagement_s=co_s, coengagement_is_ease=float(co.method == "ease"),
               coengagement_param=co.param, coengagement_mb=co.nbytes / 2**20, build_s=build_s,
               choose_s=sel.seconds["choose"], query_s=query_s, n_facets=len(model.facets))
    return out


def _per_facet(run: _SeedRun, retriever, queries: np.ndarray, cfg, facet_names: list[str]) -> dict:
    """Recall of user mode served from one facet at a time: the quota merge with the whole quota on
    facet f reads only the clusters facet f's beam reaches and ranks them by ``q_f . e_f`` alone."""
    import dataclasses

    out: dict = {"per_user": {}}
    for f, name in enumerate(facet_names):
        only = [1.0 if g == f else 0.0 for g in range(len(facet_names))]
        view = retriever.with_config(dataclasses.replace(cfg, merge="quota", quotas=only))
        res = run.evaluate(view.retrieve_users(queries, K_MAX, exclude=run.histories).item_ids)
        for k in PER_USER_KEYS:
            out[f"{FACET_PREFIX}{name}/{k}"] = res[k]
            out["per_user"][f"{FACET_PREFIX}{name}/{k}"] = res["per_user"][k]
    return out


def _run_exact(run: _SeedRun) -> dict:
    from mfli.index.build import encode_items
    from mfli.serve.exact import exact_search

    model, train_s = run.model("joint")
    enc = encode_items(model, run.ds.items)
    t0 = time.perf_counter()
    ids, _ = exact_search(run.queries(model), enc.embeddings, K_MAX, enc.item_ids, exclude=run.histories)
    out = run.evaluate(ids)
    out.update(train_s=train_s, query_s=time.perf_counter() - t0)
    return out


def _run_ann(run: _SeedRun, kind: str, incremental: bool, model_mode: str = "none") -> dict:
    from mfli.baselines.ann import AnnConfig, AnnIndex, concat_facets

    model, train_s = run.model(model_mode)
    known = model.item_embeddings(run.known_items).numpy()
    cfg = AnnConfig(kind=kind, mode="incremental" if incremental else "rebuild_at_snapshot",
                    ef_search=run.cfg.hnsw_ef_search, nprobe=run.cfg.ivf_nprobe)
    t0 = time.perf_counter()
    index = AnnIndex(cfg).build(concat_facets(known), run.known_items["item_id"].to_numpy(np.int64))
    build_s = time.perf_counter() - t0
    if len(run.new_items):
        new = model.item_embeddings(run.new_items).numpy()
        index.add(concat_facets(new), run.new_items["item_id"].to_numpy(np.int64))
    t0 = time.perf_counter()
    ids, _ = index.search(concat_facets(run.queries(model)), K_MAX, exclude=run.histories)
    out = run.evaluate(ids)
    out.update(train_s=train_s, build_s=build_s, query_s=time.perf_counter() - t0)
    return out


def _run_ann_i2i(run: _SeedRun, model_mode: str = "none") -> dict:
    """Item-to-item ANN, the real alternative to trigger lists: one HNSW search (with incremental add of
    the new items) per recent item over the two-tower's item embeddings, merged by each item's best
    ``e_t . e_i`` over the user's ``triggers`` most recent training items; history excluded."""
    from mfli.baselines.ann import AnnConfig, AnnIndex, concat_facets

    model, train_s = run.model(model_mode)
    known = concat_facets(model.item_embeddings(run.known_items).numpy())
    known_ids = run.known_items["item_id"].to_numpy(np.int64)
    cfg = AnnConfig(kind="hnsw", mode="incremental", ef_search=run.cfg.hnsw_ef_search)
    t0 = time.perf_counter()
    index = AnnIndex(cfg).build(known, known_ids)
    build_s = time.perf_counter() - t0
    if len(run.new_items):
        index.add(concat_facets(model.item_embeddings(run.new_items).numpy()),
                  run.new_items["item_id"].to_numpy(np.int64))
    from mfli.index.lookup import positions_in_sorted
    from mfli.serve.merge import merge_best

    order = np.argsort(known_ids)
    t0 = time.perf_counter()
    trig = [h[-run.cfg.triggers:] for h in run.histories]
    owner = np.concatenate([np.full(len(t), u, np.int64) for u, t in enumerate(trig)])
    pos, found = positions_in_sorted(known_ids[order], np.concatenate(trig))
    owner, rows = owner[found], order[pos[found]]
    ids, sc = index.search(known[rows], K_MAX, exclude=[run.histories[u] for u in owner])
    out_ids = merge_best(ids, sc, owner, len(trig), K_MAX)  # each item at its best trigger
    out = run.evaluate(out_ids)
    out.update(train_s=train_s, build_s=build_s, query_s=time.perf_counter() - t0)
    return out


def _run_dr(run: _SeedRun) -> dict:
    from mfli.baselines.deep_retrieval import DeepRetrieval, DRConfig

    n_items = len(run.ds.items)
    # published settings are for 1e5-1e6 items: smaller K keeps paths populated on small catalogues
    K = 20 if n_items < 50_000 else 50
    dr = DeepRetrieval(DRConfig(n_nodes=K, n_layers=2 if n_items < 50_000 else 3, seed=run.seed,
                                num_threads=run.cfg.num_threads or 1, placement=run.cfg.dr_placement))
    content = content_matrix(run.ds.items)
    ids = run.ds.items["item_id"].to_numpy(np.int64)
    t0 = time.perf_counter()
    dr.fit(run.split.train, item_ids=ids, item_content=content)
    train_s = time.perf_counter() - t0
    new_mask = ~np.isin(ids, run.known)
    # fit already placed every catalogue item without events; re-placing through the delta path
    # (neighbours only) is what the neighbour placement amounts to, and would undo "reranker"
    if new_mask.any() and run.cfg.dr_placement == "neighbours":
        dr.assign_new_items(ids[new_mask], content[new_mask])
    t0 = time.perf_counter()
    got, _ = dr.retrieve(run.histories, K_MAX, exclude=run.histories)
    out = run.evaluate(got)
    out.update(train_s=train_s, query_s=time.perf_counter() - t0)
    return out


def _run_pop(run: _SeedRun) -> dict:
    from mfli.baselines.popularity import Popularity

    pop = Popularity().fit(run.split.train, item_ids=run.ds.items["item_id"].to_numpy(np.int64))
    ids, _ = pop.retrieve(run.histories, K_MAX, exclude=run.histories)
    return run.evaluate(ids)


def _run_ease(run: _SeedRun) -> dict:
    from mfli.baselines.ease import Ease, EaseConfig

    return _run_item_item(run, Ease(EaseConfig(num_threads=run.cfg.num_threads)), "l2")


def _run_itemknn(run: _SeedRun) -> dict:
    from mfli.baselines.itemknn import ItemKNN

    return _run_item_item(run, ItemKNN(), "neighbours")


def _run_item_item(run: _SeedRun, model, chosen: str) -> dict:
    """Fit an item-item model (its hyper-parameter ``chosen`` picked on the validation split), retrieve
    for every test user with their training history excluded, and evaluate."""
    t0 = time.perf_counter()
    model.fit(run.split.train, valid=run.validation)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids, _ = model.retrieve(run.histories, K_MAX, exclude=run.histories)
    out = run.evaluate(ids)
    out.update({"train_s": train_s, "query_s": time.perf_counter() - t0, chosen: getattr(model, chosen)})
    return out


_RUNNERS = {
    "mfli": lambda r: _run_mfli(r, "user"),
    "mfli_trigger": lambda r: _run_mfli(r, "trigger"),
    "mfli_trigger_lists": lambda r: _run_mfli(r, "trigger", engine="scan", lists=True),
    "mfli_scan": lambda r: _run_mfli(r, "user", engine="scan"),
    "mfli_quota": lambda r: _run_mfli(r, "user", merge="quota"),
    "mfli_neww": _run_mfli_neww,
    "mfli_blend": _run_mfli_blend,
    "mfli_new_sem0": lambda r: _run_mfli(r, "user", new_item_weights=tuple(
        0.0 if fc.kind == "semantic" else 1.0 for fc in r.model("joint")[0].model.cfg.facets)),
    "mfli_facets": lambda r: _run_mfli(r, "user", per_facet=True),
    "mfli_f1": lambda r: _run_mfli(r, "user", facets="f1"),
    "mfli_f3": lambda r: _run_mfli(r, "user", facets="f3", per_facet=True),
    "mfli_kmeans": lambda r: _run_mfli(r, "user", codebook_mode="kmeans_after"),
    "exact": _run_exact,
    "hnsw": lambda r: _run_ann(r, "hnsw", incremental=False),
    "hnsw_add": lambda r: _run_ann(r, "hnsw", incremental=True),
    "hnsw_i2i": _run_ann_i2i,
    "hnsw_add_placed": lambda r: _run_ann(r, "hnsw", incremental=True, model_mode="none_placed"),
    "hnsw_i2i_placed": lambda r: _run_ann_i2i(r, model_mode="none_placed"),
    "ivf": lambda r: _run_ann(r, "ivf", incremental=False),
    "dr": _run_dr,
    "pop": _run_pop,
    "ease": _run_ease,
    "itemknn": _run_itemknn,
}


def run_quality(ds: Dataset, cfg: QualityConfig, log=print, on_seed=None) -> dict:
    """Run every method of ``cfg`` for each seed; returns ``{method: {metric: {mean, std, values}}}``.

    ``on_seed(summary)``, when given, receives the summary over the seeds finished so far after each
    seed, so a long run leaves usable partial results behind.
    """
    unknown = [m for m in cfg.methods if m not in _RUNNERS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(_RUNNERS)}")
    per_method: dict[str, list[dict]] = {m: [] for m in cfg.methods}
    summary: dict = {}
    for seed in range(cfg.seeds):
        run = _SeedRun(ds, cfg, seed)
        log(f"seed {seed}: {run.split.kind} split, {len(run.users)} test users, "
            f"{len(run.known_items)} items with training events, {len(run.new_items)} without")
        for method in cfg.methods:
            t0 = time.perf_counter()
            res = _RUNNERS[method](run)
            res["seconds"] = time.perf_counter() - t0
            per_method[method].append(res)
            log(f"  {method:<13} recall@100={res['recall@100']:.4f} cold_recall@100={res['cold_recall@100']:.4f} "
                f"({res['seconds']:.1f}s)")
        summary = add_ratio_intervals({m: _summary(v) for m, v in per_method.items()})
        if on_seed is not None:
            on_seed(summary)
    return summary


def ratio_refs(results: dict, ref: str | None = "exact", also: tuple[str, ...] = ("hnsw",)) -> list[tuple[str, str]]:
    """``[(column label, reference method)]`` of the ratio columns: ``ref``, ``also``, and the best
    baseline (:data:`BASELINES`) by mean recall@100, each when present in ``results``."""
    refs = [(r, r) for r in dict.fromkeys((ref, *also)) if r is not None and r in results]
    base = [b for b in BASELINES if b in results and not np.isnan(results[b]["recall@100"]["mean"])]
    if base:
        best = max(base, key=lambda b: results[b]["recall@100"]["mean"])
        refs.append((f"best baseline ({best})", best))
    return refs


def add_ratio_intervals(results: dict, ref: str | None = "exact", also: tuple[str, ...] = ("hnsw",),
                        n_resamples: int = 1000, seed: int = 0) -> dict:
    """Add ``results[m]["ratios"][f"{metric} / {label}"] = {ratio, lo, hi}`` for recall@100 and cold
    recall@100 against every :func:`ratio_refs` column: paired bootstrap 95% intervals over (seed, user)
    units (:mod:`mfli.eval.bootstrap`). Methods without per-user values are skipped. Returns ``results``."""
    from mfli.eval.bootstrap import PairedBootstrap, pooled_per_user

    refs = ratio_refs(results, ref, also)
    for metric in PER_USER_KEYS:
        pooled = pooled_per_user(results, metric)
        if not pooled:
            continue
        boot = PairedBootstrap(pooled, n_resamples=n_resamples, seed=seed)
        for m in pooled:
            ratios = results[m].setdefault("ratios", {})
            for label, r in refs:
                if r in pooled:
                    ratios[f"{metric} / {label}"] = boot.ratio(m, r).as_dict()
    return results


def format_table(results: dict, metrics=METRIC_KEYS, ref: str | None = "exact",
                 also: tuple[str, ...] = ("hnsw",)) -> str:
    """Markdown table of mean ± std per method, plus each method's recall@100 ratio to ``ref``, to each
    method of ``also`` and to the best baseline, with paired bootstrap 95% intervals over users when
    the results hold per-user values, and the mean training seconds per seed."""
    from mfli.eval.bootstrap import PairedBootstrap, pooled_per_user

    refs = ratio_refs(results, ref, also)
    pooled = pooled_per_user(results, "recall@100")
    boot = PairedBootstrap(pooled) if pooled else None
    head = ["method", *metrics] + [f"recall@100 / {label}" for label, _ in refs] + ["train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, r in results.items():
        cells = [m] + [f"{r[k]['mean']:.4f} ± {r[k]['std']:.4f}" if k in r else "-" for k in metrics]
        for _, name in refs:
            if boot is not None and m in pooled and name in pooled:
                cells.append(boot.ratio(m, name).text())
                continue
            base = results[name]["recall@100"]["mean"]
            cells.append(f"{r['recall@100']['mean'] / base:.3f}" if base > 0 else "-")
        cells.append(f"{r['train_s']['mean']:.0f}" if "train_s" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_facet_table(results: dict, ref: str = "mfli") -> str:
    """Markdown table of the facet ablation: every MFLI method with a facet count (merged recall) and,
    for the methods with per-facet keys (``mfli_facets``, ``mfli_f3``), one row per facet served alone, each with its recall@100 and cold recall@100
    ratio to ``ref`` (paired bootstrap 95% intervals over users). Empty when no method has facets."""
    from mfli.eval.bootstrap import PairedBootstrap

    rows: list[tuple[str, str, dict, str]] = []  # (label, facets, result, per-user key prefix)
    for m, r in results.items():
        if "n_facets" not in r:
            continue
        rows.append((m, f"F={r['n_facets']['mean']:.0f}, merged", r, ""))
        names = dict.fromkeys(k[len(FACET_PREFIX):].rsplit("/", 1)[0] for k in r if k.startswith(FACET_PREFIX))
        rows += [(f"{m} [{n}]", f"{n} alone", r, f"{FACET_PREFIX}{n}/") for n in names]
    if not rows:
        return ""
    boots = {}
    for metric in PER_USER_KEYS:
        pooled = {}
        for label, _, r, prefix in rows:
            seeds = r.get("per_user", {}).get(prefix + metric)
            if seeds:
                pooled[label] = np.concatenate([np.asarray(s, dtype=np.float64) for s in seeds])
        boots[metric] = (PairedBootstrap(pooled), pooled) if pooled else (None, {})
    ref = ref if ref in results and "n_facets" in results[ref] else rows[0][0]
    head = ["method", "facets", "recall@100", f"/ {ref}", "cold recall@100", f"cold / {ref}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, facets, r, prefix in rows:
        cells = [label, facets]
        for metric in PER_USER_KEYS:
            v = r[prefix + metric]
            cells.append(f"{v['mean']:.4f} ± {v['std']:.4f}")
            boot, pooled = boots[metric]
            cells.append(boot.ratio(label, ref).text() if label in pooled and ref in pooled else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
