"""``mfli precompile`` reaches the kernels a served snapshot uses: after it, every top-level serving
kernel of both modes has a compiled (or cache-loaded) signature, and the CLI command runs it."""

from __future__ import annotations

from typer.testing import CliRunner

from mfli.cli import app
from mfli.index import coengagement
from mfli.serve import blend_kernels, engine_kernels, neighbours
from mfli.serve.precompile import precompile

SERVED = [
    neighbours.trigger_lists, neighbours.trigger_lists_serial, neighbours._merge_block,
    neighbours._entry_positions, neighbours._encode, neighbours.first_invalid,
    engine_kernels.rescore_candidates, engine_kernels.route_small, engine_kernels.segment_means,
    engine_kernels.delta_trigger_best, engine_kernels.delta_user_merge, coengagement._dense_top,
    blend_kernels.fuse, blend_kernels.first_positions, blend_kernels.best_distinct,
]


def test_precompile_compiles_the_served_kernels_of_both_modes():
    spent = precompile(n_items=300)
    assert spent > 0
    missing = [k.py_func.__name__ for k in SERVED if not k.signatures]
    assert not missing, f"not compiled by precompile(): {missing}"
    # both list stores (uint16 codes, int32 rows) and both co-engagement tables (float16, float32)
    assert len(neighbours.trigger_lists_serial.signatures) >= 2
    assert len(neighbours.first_invalid.signatures) >= 2  # lists read back from a snapshot, both stores
    assert len(coengagement._dense_top.signatures) >= 2


def test_precompile_command():
    r = CliRunner().invoke(app, ["precompile"])
    assert r.exit_code == 0, r.output
    assert "serving kernels compiled or loaded from cache in" in r.output
