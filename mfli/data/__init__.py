"""Data layer: canonical schemas, loaders (MovieLens, Amazon LC-Rec, canonical parquet), synthetic
catalogue generator and train/test splits."""

from mfli.data.dataset import Dataset
from mfli.data.errors import DataError

__all__ = ["Dataset", "DataError"]
