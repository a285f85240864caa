"""``mfli retrieve``: top-k items for users or trigger items, from a saved model and index (no ANN).

    mfli retrieve ../shared/datasets/ml-latest-small --model runs/ml --index runs/ml/index --user 1 --user 42
    mfli retrieve ../shared/datasets/ml-latest-small --model runs/ml --index runs/ml/index --triggers 1,50,260

User mode (``--user``): the user tower embeds the user's training history (the train part of
``--split``), then beam search over the codebook reaches clusters whose items are scored by the
summed facet similarity. Trigger mode (``--triggers``, or ``--mode trigger`` with ``--user``: the
user's most recent items): the paper's cluster histogram, sampled clusters, re-rank. Seen items
are excluded unless ``--include-seen``. Prints one JSON object per request (one per line): the
results with score, title and explanation (facet, cluster, beam path rank or trigger item).
"""

from __future__ import annotations

import json
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from mfli.cli.train import EXIT_BAD_DATA, SplitKind


class Mode(str, Enum):
    user = "user"
    trigger = "trigger"


def register(app: typer.Typer) -> None:
    """Add the top-level ``retrieve`` command to ``app``."""
    app.command(name="retrieve")(retrieve_command)


def _parse_triggers(text: str) -> list[int]:
    from mfli.data.errors import DataError

    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise DataError("--triggers", f"expected comma-separated item ids, got {text!r}") from None


def retrieve_command(
    data_path: Annotated[Path, typer.Argument(help="Dataset folder (users' histories, item titles).")],
    model: Annotated[Path, typer.Option("--model", help="Folder written by `mfli train`.")],
    index: Annotated[Path, typer.Option("--index", help="Folder written by `mfli index build`.")],
    user: Annotated[list[int] | None, typer.Option("--user", help="User id (repeatable).")] = None,
    triggers: Annotated[list[str] | None, typer.Option("--triggers", help="Comma-separated trigger item ids (repeatable: one request each).")] = None,
    mode: Annotated[Mode | None, typer.Option("--mode", help="user (beam search) or trigger; default: trigger when --triggers is given.")] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Results per request.")] = 10,
    beam: Annotated[int, typer.Option("--beam", min=1, help="User mode: beam width per facet.")] = 32,
    n_triggers: Annotated[int, typer.Option("--n-triggers", min=1, help="Trigger mode with --user: most recent items used.")] = 10,
    clusters: Annotated[int, typer.Option("--clusters", min=1, help="Trigger mode: clusters drawn per facet.")] = 16,
    split: Annotated[SplitKind, typer.Option("--split", help="Histories come from this split's train part.")] = SplitKind.time,
    seed: Annotated[int, typer.Option("--seed", help="Split seed and trigger-mode sampling seed.")] = 0,
    include_seen: Annotated[bool, typer.Option("--include-seen", help="Do not exclude the user's history.")] = False,
    engine: Annotated[str | None, typer.Option("--engine", help="User-mode scorer: reference | scan (default: "
                                               "the serving default, what new snapshots are gated with).")] = None,
) -> None:
    """Retrieve top-k items per --user or per --triggers list and print them as JSON lines."""
    from mfli.data.errors import DataError
    from mfli.data.loaders import load_dataset
    from mfli.data.split import make_split
    from mfli.eval.metrics import histories_by_user
    from mfli.index.inverted import IndexIntegrityError, MultiFacetIndex
    from mfli.model.trained import TrainedModel
    from mfli.serve.config import ServingConfig, default_retriever_config
    from mfli.snapshot import Snapshot, SnapshotLoadError

    users = list(user or [])
    try:
        trigger_lists = [_parse_triggers(t) for t in (triggers or [])]
        if bool(users) == bool(trigger_lists):
            raise DataError("arguments", "give either --user (one or more) or --triggers (one or more)")
        chosen = mode or (Mode.trigger if trigger_lists else Mode.user)
        if chosen is Mode.user and trigger_lists:
            raise DataError("--mode", "user mode needs --user, not --triggers")
        ds = load_dataset(data_path)
        trained = TrainedModel.load(model)
        idx = MultiFacetIndex.load(index)
        # the serving defaults (what the gates measure) with this command's beam, clusters and seed
        try:
            serving = ServingConfig(retriever=replace(default_retriever_config(), beam=beam, n_clusters=clusters,
                                                      seed=seed), engine=engine or ServingConfig().engine)
        except ValueError as exc:
            raise DataError("--engine", str(exc)) from None
        try:
            retriever = Snapshot(trained, idx, serving=serving).retriever()
        except SnapshotLoadError as exc:
            raise DataError(index, str(exc)) from None
        histories: list[np.ndarray] = []
        if users:
            hist = histories_by_user(make_split(ds, split.value, seed=seed).train)
            known = set(ds.users["user_id"].tolist())
            for u in users:
                if u not in hist.index and u not in known:
                    raise DataError(data_path, f"unknown user id {u}", column="user_id")
                histories.append(hist[u] if u in hist.index else np.zeros(0, np.int64))
        exclude = None if include_seen else (histories or None)
        if chosen is Mode.user:
            q = trained.user_embeddings(np.asarray(users, np.int64), histories).numpy()
            res = retriever.retrieve_users(q, k, exclude=exclude)
        else:
            reqs = trigger_lists or [h[-n_triggers:] for h in histories]
            res = retriever.retrieve_triggers(reqs, k, exclude=exclude)
    except (DataError, IndexIntegrityError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=EXIT_BAD_DATA) from None
    titles = dict(zip(ds.items["item_id"].tolist(), ds.items["title"].tolist()))
    for b, expl in enumerate(res.explanations()):
        request = {"user_id": users[b]} if users else {"triggers": trigger_lists[b]}
        for j, e in zip(np.flatnonzero(res.item_ids[b] >= 0), expl):
            e["score"] = round(float(res.scores[b, j]), 6)
            e["title"] = titles.get(e["item_id"])
        typer.echo(json.dumps({**request, "mode": res.mode, "results": expl}))
