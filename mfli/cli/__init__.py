"""The ``mfli`` command-line tool.

Each command group lives in its own module and imports heavy libraries (torch, feast, faiss)
inside its commands, so ``mfli --help`` stays instant.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="MFLI Platform: learnable-index retrieval.")

# (module, group name); a group whose module is not there yet is simply not offered.
_GROUPS = [
    ("mfli.cli.data", "data"),
    ("mfli.cli.train", None),       # top-level commands: train
    ("mfli.cli.index", "index"),
    ("mfli.cli.retrieve", None),    # top-level commands: retrieve
    ("mfli.cli.bench", "bench"),
    ("mfli.cli.snapshot", "snapshot"),
    ("mfli.cli.serve", None),       # top-level commands: serve
]

for _module, _name in _GROUPS:
    try:
        _mod = importlib.import_module(_module)
    except ModuleNotFoundError as exc:  # only a missing group module is tolerated, not a broken one
        if exc.name != _module:
            raise
        continue
    if _name is None:
        _mod.register(app)
    else:
        app.add_typer(_mod.app, name=_name)


def main() -> None:  # pragma: no cover - console entry point
    app()
