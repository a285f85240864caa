"""Shared set-up of the engine benchmarks: the 1M-item data, model and rebalanced index that
``bench/serving_engine.py`` builds, the common arguments, and the JSON record."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def engine_parser(doc: str, items: int = 1_000_000) -> argparse.ArgumentParser:
    """A parser with the data arguments every engine benchmark takes (catalogue size, facet width, model)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--items", type=int, default=items)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--model-dir", default=None, help="a model saved by an earlier run (skips training)")
    p.add_argument("--save-model-dir", default=None)
    p.add_argument("--out", help="write the JSON here")
    return p


def engine_index(a: argparse.Namespace, script: str, argv: list[str] | None, n_queries: int = 16) -> tuple:
    """``(data, codes, index, out)``: the catalogue and model (``prepare_data``, ``n_queries`` user-tower
    queries in ``data.queries``), every item's learned code path, the rebalanced index, and the JSON
    record started with the command and the machine (1 thread)."""
    from mfli.eval.serving.config import ServingBenchConfig
    from mfli.eval.serving.data import prepare_data
    from mfli.eval.serving.machine import machine_info, set_threads
    from mfli.index.build import auto_rebalance_config
    from mfli.index.inverted import MultiFacetIndex, encode_paths
    from mfli.index.split_merge import rebalance

    set_threads(1)
    scfg = ServingBenchConfig(n_items=a.items, dim=a.dim, n_queries=n_queries, model_dir=a.model_dir,
                              save_model_dir=a.save_model_dir, methods=("exact",))
    out: dict = {"command": " ".join([script, *(argv if argv is not None else sys.argv[1:])]),
                 "machine": machine_info()}
    data, out["data_seconds"] = prepare_data(scfg, print)
    codes = encode_paths(data.items, data.codebooks)
    index = rebalance(MultiFacetIndex.build(data.item_ids, data.items, codes, data.codebooks),
                      auto_rebalance_config(a.items)).index
    return data, codes, index, out


def write_record(out: dict, path: str | None) -> dict:
    """Add the load average at the end and write ``out`` to ``path`` (if given)."""
    out.setdefault("machine", {})["load_average_end"] = list(os.getloadavg())
    if path:
        Path(path).write_text(json.dumps(out, indent=1, default=float))
    return out


def blend_world(ds, split: str, epochs: int) -> tuple:
    """``(run, model, view, retriever, selection)`` of blend mode on dataset ``ds``, as the daily DAG serves
    it: the harness's split and model (seed 0), the index with the split's new items as a delta, the scan
    engine with 200-deep neighbour lists, and the co-engagement table and weights chosen on validation."""
    import dataclasses

    from mfli.eval.blend_select import select_blend
    from mfli.eval.harness import QualityConfig, _mfli_index, _SeedRun
    from mfli.index.coengagement import CoEngagementConfig
    from mfli.serve.config import default_scan_config
    from mfli.serve.engine_retriever import EngineRetriever
    from mfli.serve.retriever import RetrieverConfig

    run = _SeedRun(ds, QualityConfig(split=split, seeds=1, epochs=epochs), 0)
    model, _ = run.model("joint")
    _, view, _ = _mfli_index(run, model)
    scan = dataclasses.replace(default_scan_config(), neighbours=200)
    retriever = EngineRetriever(view, model.codebooks, model.facets, RetrieverConfig(merge="sum"), scan)
    sel = select_blend(model, retriever, view, run.split.train, validation=run.validation,
                       coengagement=CoEngagementConfig(num_threads=1), items=ds.items)
    return run, model, view, retriever, sel
