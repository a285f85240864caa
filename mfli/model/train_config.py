"""The training configuration: what a :class:`~mfli.model.trained.TrainedModel` was trained with.

Its own file so that loading a trained model (serving) never imports the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mfli.model.config import ModelConfig, from_dict, to_dict


@dataclass
class TrainConfig:
    """Training configuration (model, batches, optimiser, schedule, stopping)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int = 1024  # user -> item pairs per step; also the in-batch negatives per query
    # contiguous shards of each step's batch, each with its own in-batch negatives, losses averaged.
    # Under torchrun it must be 1 or the world size (one shard per rank, batch_size stays global);
    # a single process with batch_shards=N reproduces an N-rank data-parallel run
    batch_shards: int = 1
    item_item_batch: int | None = None  # trigger -> co-engaged pairs per step; None -> batch_size
    semantic_batch: int | None = None  # semantic pairs per step; None -> batch_size // 2
    # items drawn uniformly from the training items per step as extra negatives of every engagement
    # softmax (mixed negative sampling; the logQ correction becomes the mixture's, see mfli.model.losses),
    # so popularity is learned instead of subtracted. None -> batch_size. Off by default: +1.6% recall on
    # amazon-scientific / last (inside the paired interval) but -32% cold recall on the synthetic
    # catalogue, whose new items then lose to popular warm ones (docs/benchmarks.md)
    uniform_negatives: int | None = 0
    co_window: int = 5  # events at most this far apart in a history count as co-engaged
    semantic_max_df: float = 0.01  # text tokens shared by more than 1% of items are not topics
    lr: float = 3e-3  # Adam; embeddings tables dominate the parameters and like a high rate
    weight_decay: float = 0.0
    epochs: int = 10  # passes over the user -> item events (early stopping may end sooner)
    max_steps: int | None = None  # hard cap on optimiser steps (None: epochs decide)
    seed: int = 0
    device: str = "auto"  # "auto": cuda when available, else cpu
    patience: int = 3  # epochs without a better validation recall before stopping
    valid_frac: float = 0.05  # share of each user's latest events held out for early stopping; 0: none
    valid_k: int = 100  # K of the validation recall@K
    valid_max_users: int = 2000  # validation users scored (a seeded sample beyond this)
    # items without a trained id take the mean embedding of this many content neighbours among the trained
    # items, mixed with the tower's own; the mix is chosen on the validation hold-out after training
    # (mfli.model.placement). 0: off (the tower alone)
    new_item_neighbours: int = 20
    # torch CPU threads during training (0: leave the process default). The step's ops are small:
    # on a busy 2-core machine 2 threads ran 2x slower than 1 (spin-waiting); raise it on idle many-core hosts
    num_threads: int = 1
    deterministic: bool = True  # deterministic torch kernels: multi-threaded embedding backward is not
    progress: bool = True  # tqdm bar on stderr with losses and codebook health
    health_max_items: int = 50000  # items embedded for the epoch-end codebook health

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> TrainConfig:
        return from_dict(cls, data)
