"""A dataset, its split and an MFLI model trained on it, reused from disk when saved (diagnostic scripts).

    ds, split, model = split_and_model("../shared/datasets/ml-latest-small", "time", "runs/ml_time")

The model is trained on ``split.train`` with ``TrainConfig`` seed 0 plus ``overrides`` and saved to
``model_dir`` the first time; later calls load it, so a script can be re-run without retraining.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def split_and_model(data: str, split: str, model_dir: str | Path, overrides: dict[str, Any] | None = None,
                    log=print) -> tuple[Any, Any, Any]:
    """``(dataset, split, TrainedModel)``: ``split`` as ``mfli bench quality`` makes it (seed 0)."""
    from mfli.data.loaders import load_dataset
    from mfli.data.split import make_split
    from mfli.train import TrainConfig, TrainedModel, train

    mdir = Path(model_dir)
    ds = load_dataset(data)
    sp = make_split(ds, split, seed=0)
    if (mdir / "manifest.json").exists():
        return ds, sp, TrainedModel.load(mdir)
    t0 = time.time()
    model = train(ds, sp.train, TrainConfig.from_dict({"seed": 0, **(overrides or {})}))
    log(f"trained in {time.time() - t0:.0f} s")
    model.save(mdir)
    return ds, sp, model
