"""``mfli precompile`` reaches the kernels a served snapshot uses: after it, every top-level serving
kernel of both modes has a compiled (or cache-loaded) signature, and the CLI command runs it."""

from __future__ import annotations

from typer.testing import CliRunner

from mfli.cli import app
from mfli.serve import engine_kernels, neighbours
from mfli.serve.precompile import precompile

SERVED = [
    neighbours.trigger_lists, neighbours.trigger_lists_serial, neighbours._merge_block,
    engine_kernels.rescore_candidates, engine_kernels.route_small, engine_kernels.segment_means,
    engine_kernels.delta_trigger_best, engine_kernels.delta_user_merge,
]


def test_precompile_compiles_the_served_kernels_of_both_modes():
    spent = precompile(n_items=300)
    assert spent > 0
    missing = [k.py_func.__name__ for k in SERVED if not k.signatures]
    assert not missing, f"not compiled by precompile(): {missing}"


def test_precompile_command():
    r = CliRunner().invoke(app, ["precompile"])
    assert r.exit_code == 0, r.output
    assert "serving kernels compiled or loaded from cache in" in r.output
