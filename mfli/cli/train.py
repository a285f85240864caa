"""``mfli train``: train the MFLI towers and co-trained codebook on a local dataset folder.

    mfli train ../shared/datasets/ml-latest-small --out runs/ml --split time --epochs 15 --seed 0
    mfli train data/synth --out runs/synth --split cold --config three_facets.json

``--config`` is a JSON object of :class:`mfli.train.TrainConfig` overrides, nested like the
dataclasses, e.g. ``{"batch_size": 512, "model": {"codebook": {"layers": 3}}}`` or, for the
paper's three facets::

    {"model": {"facets": [
        {"name": "engagement_any"},
        {"name": "engagement_high", "min_label": 4.0},
        {"name": "semantic", "kind": "semantic", "weight": 0.5, "temperature": 0.1}]}}

``--epochs`` and ``--seed`` win over it. Prints one JSON object (split summary, training time, final metrics and
codebook health) on stdout; progress goes to stderr. Bad input exits with code 2.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

EXIT_BAD_DATA = 2


class SplitKind(str, Enum):
    time = "time"
    last = "last"
    cold = "cold"


def register(app: typer.Typer) -> None:
    """Add the top-level ``train`` command to ``app``."""
    app.command(name="train")(train_command)


def train_command(
    data_path: Annotated[Path, typer.Argument(help="Dataset folder (MovieLens, Amazon LC-Rec, mfli-parquet).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the trained model (safetensors + JSON).")],
    split: Annotated[SplitKind, typer.Option("--split", help="Train on the train part of this split.")] = SplitKind.time,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Passes over the training events.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the split, batches and initialisation.")] = 0,
    config: Annotated[Path | None, typer.Option("--config", help="JSON file of TrainConfig overrides.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")] = True,
) -> None:
    """Train on DATA_PATH's training split, save the model to --out and print final metrics as JSON."""
    import time

    from mfli.data.errors import DataError
    from mfli.data.loaders import load_dataset
    from mfli.data.split import make_split
    from mfli.train import TrainConfig, train

    try:
        overrides: dict = {}
        if config is not None:
            try:
                overrides = json.loads(config.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(config, f"cannot read config JSON: {exc}") from None
            if not isinstance(overrides, dict):
                raise DataError(config, "config must be a JSON object")
        overrides = {**overrides, "seed": seed, "progress": progress}
        if epochs is not None:
            overrides["epochs"] = epochs
        try:
            cfg = TrainConfig.from_dict(overrides)
        except (TypeError, ValueError) as exc:
            raise DataError(config or "--config", str(exc)) from None
        t0 = time.time()
        ds = load_dataset(data_path)
        sp = make_split(ds, split.value, seed=seed)
        t1 = time.time()
        model = train(ds, sp.train, cfg)
        t2 = time.time()
        model.save(out)
    except DataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=EXIT_BAD_DATA) from None
    epochs_done = [h for h in model.history if isinstance(h.get("epoch"), int)]
    final = model.history[-1] if model.history else {}
    result = {
        "out": str(out),
        "split": sp.summary(),
        "facets": model.facets,
        "codebooks": list(model.codebooks.shape),
        "load_seconds": round(t1 - t0, 2),
        "train_seconds": round(t2 - t1, 2),
        "epochs": len(epochs_done),
        "steps": epochs_done[-1]["step"] if epochs_done else 0,
        "final_loss": epochs_done[-1].get("loss") if epochs_done else None,
        f"best_valid_recall@{cfg.valid_k}": final.get("best_valid_recall"),
        "codebook_health": final.get("codebook", {}),
    }
    typer.echo(json.dumps(result))
