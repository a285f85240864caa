"""Neighbour lists on disk: an engine over the same index and list settings serves the stored lists
(same answers, no build); other settings or another index build their own; bad files are refused
naming the file and the array."""

from __future__ import annotations

import json

import numpy as np
import pytest
from topic_vectors import rebalanced_index

from mfli.serve import engine as engine_mod
from mfli.serve.engine import EngineConfig, ScanEngine
from mfli.serve.list_store import StoredLists, load_lists, save_lists
from mfli.serve.neighbours import ESC16, NeighbourLists

F, D, L, M, N, K = 2, 8, 2, 16, 900, 20


def _index(seed: int):
    return rebalanced_index(seed, N, F, D, L, M)


@pytest.fixture(scope="module")
def world():
    index, cb, codes = _index(0)
    cfg = EngineConfig(prerank="fastscan", neighbours=K)
    return index, cb, codes, cfg, ScanEngine(index, cb, cfg, codes=codes)


def _saved(engine, path) -> StoredLists:
    engine.save_lists(path)
    return load_lists(path)


def _answer(engine, triggers):
    res = engine.search_triggers(triggers, k=K)
    return res.item_ids, res.scores


def test_stored_lists_are_served_instead_of_built(world, tmp_path, monkeypatch):
    index, cb, codes, cfg, built = world
    stored = _saved(built, tmp_path / "l.npz")
    assert built.lists_source == "built" and stored.key == built.list_key()

    def no_build(*a, **kw):
        raise AssertionError("lists were built although matching ones were given")

    monkeypatch.setattr(engine_mod.ScanEngine, "build_lists", no_build)
    served = ScanEngine(index, cb, cfg, codes=codes, lists=stored)
    assert served.lists_source == str(tmp_path / "l.npz") and served.list_probe == built.list_probe
    np.testing.assert_array_equal(served.neighbour_rows(), built.neighbour_rows())
    np.testing.assert_array_equal(served.col_neighbours, built.col_neighbours)
    assert served._lists.has_scores and stored.key["list_scores"]  # the stored scores travel with the lists
    for a in ("score_q", "score_lo", "score_step"):
        np.testing.assert_array_equal(getattr(served._lists, a), getattr(built._lists, a))
    triggers = [index.item_ids[[5]], index.item_ids[[7, 300, 801]]]
    for a, b in zip(_answer(served, triggers), _answer(built, triggers)):
        np.testing.assert_array_equal(a, b)


def test_plain_row_lists_round_trip(world, tmp_path):
    index, cb, codes, _, _ = world
    cfg = EngineConfig(prerank="fastscan", neighbours=K, compact_lists=False)
    built = ScanEngine(index, cb, cfg, codes=codes)
    served = ScanEngine(index, cb, cfg, codes=codes, lists=_saved(built, tmp_path / "rows.npz"))
    assert not served._lists.compact and served.lists_source.endswith("rows.npz")
    np.testing.assert_array_equal(served.neighbour_rows(), built.neighbour_rows())


@pytest.mark.parametrize("change", ["neighbours", "probe", "compact", "scores", "index"])
def test_lists_for_other_settings_or_another_index_are_rebuilt(world, tmp_path, change):
    index, cb, codes, cfg, built = world
    stored = _saved(built, tmp_path / "l.npz")
    if change == "index":  # same shape and ids, other vectors: the layout digest differs
        index, cb, codes = _index(1)
    else:
        kw = {"neighbours": {"neighbours": K - 5}, "probe": {"neighbour_probe": built.list_probe + 1},
              "compact": {"compact_lists": False}, "scores": {"list_scores": False}}[change]
        cfg = EngineConfig(prerank="fastscan", **{"neighbours": K, **kw})
    other = ScanEngine(index, cb, cfg, codes=codes, lists=stored)
    assert other.lists_source == "built"
    fresh = ScanEngine(index, cb, cfg, codes=codes)
    np.testing.assert_array_equal(other.neighbour_rows(), fresh.neighbour_rows())
    assert other._lists.has_scores == cfg.list_scores


def test_lists_saved_before_stored_scores_are_served_rescored(world, tmp_path):
    """A file without scores (written before them, key without ``list_scores``) serves an engine with
    ``list_scores=False``; a default engine builds lists with scores instead of serving it."""
    index, cb, codes, cfg, built = world
    old_key = {k: v for k, v in built.list_key().items() if k != "list_scores"}
    path = save_lists(tmp_path / "old.npz", built._lists.without_scores(), old_key)
    with np.load(path) as z:
        assert "score_q" not in z.files
    exact_cfg = EngineConfig(prerank="fastscan", neighbours=K, list_scores=False)
    served = ScanEngine(index, cb, exact_cfg, codes=codes, lists=load_lists(path))
    assert served.lists_source == str(path) and not served._lists.has_scores
    assert ScanEngine(index, cb, cfg, codes=codes, lists=load_lists(path)).lists_source == "built"
    with pytest.raises(ValueError, match="list_scores=False but the lists carry"):
        save_lists(tmp_path / "x.npz", built._lists, old_key)


def test_lists_set_by_hand_are_not_saved(world, tmp_path):
    index, cb, codes, cfg, built = world
    engine = ScanEngine(index, cb, cfg, codes=codes)
    engine.set_lists(built._lists)
    with pytest.raises(ValueError, match="no neighbour lists to save"):
        engine.save_lists(tmp_path / "x.npz")
    bare = ScanEngine(index, cb, EngineConfig(prerank="fastscan"), codes=codes)
    with pytest.raises(ValueError, match="no neighbour lists to save"):
        bare.save_lists(tmp_path / "y.npz")


def _rewrite(stored: StoredLists, path, **changes):
    lists = NeighbourLists(**{"codes": stored.lists.codes, "shift": stored.lists.shift, "col_nbr": stored.lists.col_nbr,
                              "esc_key": stored.lists.esc_key, "esc_row": stored.lists.esc_row,
                              "score_q": stored.lists.score_q, "score_lo": stored.lists.score_lo,
                              "score_step": stored.lists.score_step, **changes})
    save_lists(path, lists, stored.key)
    return load_lists(path)


def test_entries_that_do_not_decode_are_refused_naming_the_row(world, tmp_path):
    index, cb, codes, cfg, built = world
    stored = _saved(built, tmp_path / "l.npz")
    bad = stored.lists.codes.copy()
    shift = stored.lists.shift
    bad[17, 3] = (bad[17, 3] >> shift << shift) | ((1 << shift) - 1)  # a position past its column's end
    assert bad[17, 3] < ESC16
    with pytest.raises(ValueError, match=r"bad\.npz: array 'codes' row 17, entry 3"):
        ScanEngine(index, cb, cfg, codes=codes, lists=_rewrite(stored, tmp_path / "bad.npz", codes=bad))
    escaped = stored.lists.codes.copy()
    escaped[2, 0] = ESC16  # an escape with no side-table row
    with pytest.raises(ValueError, match="row 2, entry 0"):
        ScanEngine(index, cb, cfg, codes=codes, lists=_rewrite(stored, tmp_path / "esc.npz", codes=escaped))
    cols = stored.lists.col_nbr.copy()
    cols[0, 1] = 10**6
    with pytest.raises(ValueError, match="col_nbr"):
        ScanEngine(index, cb, cfg, codes=codes, lists=_rewrite(stored, tmp_path / "cols.npz", col_nbr=cols))


def test_malformed_files_are_refused_naming_the_array(world, tmp_path):
    *_, built = world
    path = tmp_path / "l.npz"
    stored = _saved(built, path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    cases = {
        "no_codes": ({k: v for k, v in arrays.items() if k != "codes"}, "no array 'codes'"),
        "dtype": ({**arrays, "codes": arrays["codes"].astype(np.int64)}, "array 'codes' is int64"),
        "length": ({**arrays, "codes": arrays["codes"][:, :5]}, r"array 'codes' .*expected uint16 \(N, 20\)"),
        "format": ({**arrays, "key": np.frombuffer(json.dumps({**stored.key, "format": "x/0"}).encode(), np.uint8)},
                   "format 'x/0'"),
        "key": ({**arrays, "key": np.frombuffer(b"{not json", np.uint8)}, "array 'key' is not JSON"),
        "esc": ({**arrays, "esc_row": np.zeros(3, np.int32)}, "'esc_key' / 'esc_row'"),
        "no_scores": ({k: v for k, v in arrays.items() if k != "score_q"}, "no array 'score_q'"),
        "score_shape": ({**arrays, "score_q": arrays["score_q"][:, :5]}, r"'score_q' / .*expected uint8 \(900, 20\)"),
        "score_step": ({**arrays, "score_step": -arrays["score_step"]}, "negative steps"),
    }
    for name, (content, message) in cases.items():
        p = tmp_path / f"{name}.npz"
        np.savez(p, **content)
        with pytest.raises(ValueError, match=f"{name}.npz: .*{message}"):
            load_lists(p)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        load_lists(tmp_path / "junk.npz")
