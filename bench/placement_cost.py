"""Cost of new-item placement (mfli.model.placement): neighbours of new items among N trained items.

Synthetic content: 20 token ids per item from a heavy-tailed (Pareto) vocabulary of 60,000, so a few
tokens are shared by a large share of the catalogue, as category and frequent title words are.
Embeddings are random (the cost does not depend on them). One thread::

    OMP_NUM_THREADS=1 python bench/placement_cost.py --trained 100000,1000000 --new 2000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp

from mfli.model.placement import ContentNeighbours


def content(rng: np.random.Generator, n: int, vocab: int = 60000, per_item: int = 20) -> sp.csr_matrix:
    cols = np.minimum((rng.pareto(1.1, size=(n, per_item)) * 50).astype(np.int64), vocab - 1)
    m = sp.csr_matrix((np.ones(n * per_item, np.float32), (np.repeat(np.arange(n), per_item), cols.ravel())),
                      shape=(n, vocab))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trained", default="100000,1000000")
    ap.add_argument("--new", type=int, default=2000)
    ap.add_argument("--neighbours", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("| trained items | index build s | new items | placement s | ms per new item |")
    print("| --- | --- | --- | --- | --- |")
    for n in (int(x) for x in args.trained.split(",")):
        c = content(rng, n)
        emb = rng.normal(size=(n, 2, 64)).astype(np.float32)
        t0 = time.perf_counter()
        nb = ContentNeighbours(c, emb)
        t1 = time.perf_counter()
        nb.neighbour_mean(content(rng, args.new), args.neighbours)
        t2 = time.perf_counter()
        print(f"| {n:,} | {t1 - t0:.1f} | {args.new:,} | {t2 - t1:.1f} | {(t2 - t1) / args.new * 1e3:.2f} |", flush=True)


if __name__ == "__main__":
    main()
