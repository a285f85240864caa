"""The prefetch hint compiles into kernels, changes no result, and types only rows of 2-D arrays."""

from __future__ import annotations

import numba as nb
import numpy as np
import pytest

from mfli.serve.prefetch import prefetch_row


@nb.njit
def _sum_rows(x, rows):
    acc = 0.0
    for i in range(rows.size):
        if i + 3 < rows.size:
            prefetch_row(x, rows[i + 3])
        for j in range(x.shape[1]):
            acc += x[rows[i], j]
    return acc


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint16])
def test_prefetch_changes_nothing_and_emits_the_hint(dtype):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 100, (50, 37)).astype(dtype)  # rows of 37 elements: not a whole number of lines
    rows = rng.integers(0, 50, 200)
    assert _sum_rows(x, rows) == pytest.approx(float(x[rows].astype(np.float64).sum()))
    assert "llvm.prefetch" in _sum_rows.inspect_llvm(_sum_rows.signatures[-1])


def test_prefetch_refuses_what_is_not_a_row_of_a_2d_array():
    @nb.njit
    def bad(x):
        prefetch_row(x, 0)

    with pytest.raises(nb.core.errors.TypingError):
        bad(np.zeros(4, np.float32))
