"""The machine a benchmark runs on: description, thread limits and resident memory metering."""

from __future__ import annotations

import gc
import os
import platform
import sys
import threading
from pathlib import Path
from typing import Self

import numpy as np


def machine_info() -> dict:
    """CPU model, cores, memory, load and library versions (the context every timing needs)."""
    import faiss
    import torch

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "memory_bytes": mem,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "platform": platform.platform(),
    }


def set_threads(n: int) -> None:
    """torch and FAISS (OpenMP) thread counts."""
    import faiss
    import torch

    torch.set_num_threads(max(1, n))
    faiss.omp_set_num_threads(max(1, n))


def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; ru_maxrss elsewhere, an upper bound)."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemoryMeter:
    """Peak and retained RSS growth over a ``with`` block.

    The peak comes from the kernel's high-water mark (``VmHWM``), reset on entry by writing 5 to
    ``/proc/self/clear_refs``; where that is refused, a thread samples ``VmRSS`` every 10 ms (can miss
    short spikes). ``peak_delta`` = peak - RSS on entry; ``retained_delta`` = RSS on exit - RSS on entry.
    """

    def __init__(self) -> None:
        self.rss0 = self.rss1 = self.peak = 0
        self.method = "vmhwm"
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        gc.collect()
        self.rss0 = rss_bytes()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            if _status_kib("VmHWM") is None:
                raise OSError("no VmHWM")
        except OSError:
            self.method = "polled"
            self.peak = self.rss0
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        self.rss1 = rss_bytes()
        if self.method == "vmhwm":
            self.peak = (_status_kib("VmHWM") or 0) * 1024
        else:
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, self.rss1)

    def report(self) -> dict:
        return {"peak_rss_delta_bytes": int(self.peak - self.rss0),
                "retained_rss_delta_bytes": int(self.rss1 - self.rss0), "method": self.method}
