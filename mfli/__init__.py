"""MFLI: MultiFaceted Learnable Index for recommendation retrieval.

A plain Python/torch library (no Airflow imports): data layer, co-trained multi-facet towers and
residual-quantisation codebooks, a rebalanced multifaceted inverted index, delta assignment,
retrieval without ANN search, evaluation, publishing and serving.
"""

__version__ = "0.1.0"
