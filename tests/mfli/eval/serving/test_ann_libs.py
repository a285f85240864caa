"""ScaNN's batch search runs on the threads the comparison allows: its parallel call uses every core
whatever ``set_num_threads`` says, so one thread must take the serial call."""

from __future__ import annotations

import numpy as np
import pytest

from mfli.eval.serving.ann_libs import scann_search


class _FakeScann:
    """Records which ScaNN entry point answered and with how many threads."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None]] = []
        self.threads: int | None = None

    def _rows(self, n: int, k: int):
        return np.tile(np.arange(k), (n, 1)), np.zeros((n, k), np.float32)

    def search(self, q, final_num_neighbors, pre_reorder_num_neighbors, leaves_to_search):
        self.calls.append(("search", self.threads))
        i, d = self._rows(1, final_num_neighbors)
        return i[0], d[0]

    def search_batched(self, q, final_num_neighbors, pre_reorder_num_neighbors, leaves_to_search):
        self.calls.append(("search_batched", self.threads))
        return self._rows(len(q), final_num_neighbors)

    def search_batched_parallel(self, q, final_num_neighbors, pre_reorder_num_neighbors, leaves_to_search,
                                batch_size):
        self.calls.append(("search_batched_parallel", self.threads))
        return self._rows(len(q), final_num_neighbors)

    def set_num_threads(self, n: int) -> None:
        self.threads = n


@pytest.mark.parametrize("batch, threads, call", [
    (1, 1, ("search", None)),
    (1, 2, ("search", None)),
    (8, 1, ("search_batched", None)),  # serial: the parallel call would use every core
    (8, 2, ("search_batched_parallel", 2)),
])
def test_scann_batches_use_the_serial_call_on_one_thread(batch, threads, call):
    fake = _FakeScann()
    rows, scores = scann_search(fake, np.zeros((batch, 4), np.float32), 5, 3, 10, threads)
    assert fake.calls == [call]
    assert rows.shape == scores.shape == (batch, 5) and rows.dtype == np.int64
