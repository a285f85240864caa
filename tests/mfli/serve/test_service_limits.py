"""No request can hurt another: every kind of bad input gets its own clear 4xx/5xx, and legitimate
requests answered in the same batch get exactly the answer they get alone. Also the limits (413,
503 + Retry-After, 504), /livez, /readyz, /metrics and the OpenAPI response models."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mfli.index.build import build_from_encoded, encode_items
from mfli.serve.limits import ServiceLimits, parse_limit_options
from mfli.serve.live import LiveRetriever
from mfli.serve.retriever import RetrieverConfig
from mfli.serve.service import create_app
from mfli.serve.snapshot_retriever import RetrievalRequest, ServingConfig, SnapshotBuilder, open_live
from mfli.store import open_store, publish_snapshot
from mfli.train import TrainConfig, train

pytestmark = pytest.mark.timeout(300)  # threads wait on events with timeouts; this bounds the worst case
TINY = {"batch_size": 32, "epochs": 2, "progress": False, "num_threads": 1, "valid_frac": 0.0,
        "model": {"hidden": 16, "dim": 8, "codebook": {"codes": 4}}}  # fmt: skip
_ART: dict[str, Path] = {}
LEGIT = [
    {"recent_items": [0, 3, 6], "k": 10},
    {"recent_items": [5], "k": 4, "facet_quotas": {"semantic": 1}},
    {"user_id": 4, "k": 7},
    {"user_id": 9, "user_features": {"history_item_ids": [1, 2, 8]}, "k": 12, "mode": "user"},
    {"recent_items": [7, 11], "k": 20, "facet_quotas": {"semantic": 2, "engagement": 1}},
    {"recent_items": [123456789, 2**62, 3], "k": 5},
]


@pytest.fixture()
def snapshot_dir(tiny_dataset, tmp_path_factory) -> Path:
    if "dir" not in _ART:
        ds = tiny_dataset
        model = train(ds, ds.interactions, TrainConfig.from_dict(TINY))
        index = build_from_encoded(encode_items(model, ds.items), model.codebooks, model.facets).index
        root = tmp_path_factory.mktemp("tiny_snapshot_limits")
        model.save(root / "model")
        index.save(root / "index")
        (root / "report").mkdir()
        (root / "metrics.json").write_text(json.dumps({"recall@50": 0.5}))
        # Deterministic cluster selection ("topk"), stored as the snapshot's serving config: with the default
        # multinomial draws a trigger request's answer is a random sample whatever it is batched with, so
        # "the same answer" could not be tested.
        serving = ServingConfig(retriever=RetrieverConfig(sampling="topk"), engine="reference")  # quota merge
        (root / "serving.json").write_text(json.dumps(serving.to_dict()))
        _ART["dir"] = root
    return _ART["dir"]


@pytest.fixture()
def live(snapshot_dir, tmp_path) -> LiveRetriever:
    """The published tiny snapshot, served with the "topk" selection its serving.json stores."""
    store = open_store(tmp_path / "store")
    publish_snapshot(store, snapshot_dir, "v1")
    return open_live(store, cache_dir=tmp_path / "cache")


@pytest.fixture()
def client(live):
    with TestClient(create_app(live, user_features=False, limits=ServiceLimits())) as c:
        yield c


# ------------------------------------------------------------------------------------------------
# every bad input kind: status, where, what
# ------------------------------------------------------------------------------------------------
def _many(n: int) -> list[int]:
    return list(range(n))


# (id, json body or raw bytes, status, loc (None: not checked), message substring)
BAD: list[tuple[str, Any, int, list | None, str]] = [
    ("user-id-2^63", {"user_id": 2**63}, 422, ["body", "user_id"], "64-bit"),
    ("user-id-below-int64", {"user_id": -(2**63) - 1}, 422, ["body", "user_id"], "64-bit"),
    ("user-id-huge", {"user_id": 10**40}, 422, ["body", "user_id"], "64-bit"),
    ("user-id-bool", {"user_id": True}, 422, ["body", "user_id"], "must be an integer id, got True"),
    ("user-id-string", {"user_id": "12"}, 422, ["body", "user_id"], "must be an integer id, got '12'"),
    ("user-id-float", {"user_id": 12.0}, 422, ["body", "user_id"], "must be an integer id, got 12.0"),
    ("user-id-list", {"user_id": [1]}, 422, ["body", "user_id"], "must be an integer id"),
    ("recent-bool", {"recent_items": [True]}, 422, ["body", "recent_items", 0], "must be an integer id"),
    ("recent-string", {"recent_items": [1, "3"]}, 422, ["body", "recent_items", 1], "must be an integer id"),
    ("recent-overflow", {"recent_items": [2**64]}, 422, ["body", "recent_items", 0], "64-bit"),
    ("recent-not-list", {"recent_items": "1,2"}, 422, ["body", "recent_items"], "valid list"),
    ("recent-object", {"recent_items": {"a": 1}}, 422, ["body", "recent_items"], "valid list"),
    ("recent-nested", {"recent_items": [[1]]}, 422, ["body", "recent_items", 0], "must be an integer id"),
    ("recent-too-many", {"recent_items": _many(1001)}, 422, ["body", "recent_items"], "at most 1000"),
    ("history-too-many", {"user_features": {"history_item_ids": _many(10_001)}}, 422,
     ["body", "user_features", "history_item_ids"], "at most 10000"),
    ("history-bool", {"user_features": {"history_item_ids": [False]}}, 422,
     ["body", "user_features", "history_item_ids", 0], "must be an integer id"),
    ("history-overflow", {"user_features": {"history_item_ids": [2**63]}}, 422,
     ["body", "user_features", "history_item_ids", 0], "64-bit"),
    ("history-string", {"user_features": {"history_item_ids": "1,2"}}, 422,
     ["body", "user_features", "history_item_ids"], "valid list"),
    ("features-not-object", {"user_features": "x"}, 422, ["body", "user_features"], "valid dictionary"),
    ("feature-list-value", {"user_features": {"segment": [1]}}, 422, ["body", "user_features"], "segment: must be"),
    ("feature-long-string", {"user_features": {"segment": "x" * 1001}}, 422, ["body", "user_features"], "longer than"),
    ("feature-too-many", {"user_features": {f"c{i}": 1 for i in range(300)}}, 422, ["body", "user_features"],
     "at most 256"),
    ("attrs-string", {"user_features": {"user_attrs": "a=b"}}, 422, ["body", "user_features", "user_attrs"],
     "valid list"),
    ("attrs-int", {"user_features": {"user_attrs": [1]}}, 422, ["body", "user_features", "user_attrs", 0],
     "valid string"),
    ("k-bool", {"recent_items": [1], "k": True}, 422, ["body", "k"], "valid integer"),
    ("k-string", {"recent_items": [1], "k": "5"}, 422, ["body", "k"], "valid integer"),
    ("k-float", {"recent_items": [1], "k": 5.0}, 422, ["body", "k"], "valid integer"),
    ("k-negative", {"recent_items": [1], "k": -1}, 422, ["body", "k"], "greater than or equal to 1"),
    ("k-huge", {"recent_items": [1], "k": 2**70}, 422, ["body", "k"], "less than or equal to 1000"),
    ("quota-1e308", {"recent_items": [1], "facet_quotas": {"semantic": 1e308}}, 422,
     ["body", "facet_quotas", "semantic"], "finite number in [0, 1e+06]"),
    ("quota-bool", {"recent_items": [1], "facet_quotas": {"semantic": True}}, 422,
     ["body", "facet_quotas", "semantic"], "must be a number, got True"),
    ("quota-string", {"recent_items": [1], "facet_quotas": {"semantic": "1"}}, 422,
     ["body", "facet_quotas", "semantic"], "must be a number"),
    ("quota-negative", {"recent_items": [1], "facet_quotas": {"semantic": -1}}, 422,
     ["body", "facet_quotas", "semantic"], "finite number"),
    ("quota-nan", b'{"recent_items": [1], "facet_quotas": {"semantic": NaN}}', 422,
     ["body", "facet_quotas", "semantic"], "finite number"),
    ("quota-infinity", b'{"recent_items": [1], "facet_quotas": {"semantic": Infinity}}', 422,
     ["body", "facet_quotas", "semantic"], "finite number"),
    ("quota-too-many", {"recent_items": [1], "facet_quotas": {f"f{i}": 1 for i in range(65)}}, 422,
     ["body", "facet_quotas"], "at most 64"),
    ("quota-list", {"recent_items": [1], "facet_quotas": [1]}, 422, ["body", "facet_quotas"], "valid dictionary"),
    ("quota-empty-name", {"recent_items": [1], "facet_quotas": {"": 1}}, 422, None, "at least 1 character"),
    ("quota-unknown-facet", {"recent_items": [1], "facet_quotas": {"colour": 1}}, 422,
     ["body", "facet_quotas", "colour"], "unknown facet 'colour'"),
    ("quota-all-zero", {"recent_items": [1], "facet_quotas": {"semantic": 0}}, 422, ["body", "facet_quotas"],
     "weight > 0"),
    ("mode-unknown", {"recent_items": [1], "mode": "ann"}, 422, ["body", "mode"], "'auto', 'trigger', 'user' or 'blend'"),
    ("mode-int", {"recent_items": [1], "mode": 1}, 422, ["body", "mode"], "'auto', 'trigger', 'user' or 'blend'"),
    ("trigger-no-items", {"user_id": 3, "mode": "trigger"}, 422, ["body", "recent_items"], "at least one recent item"),
    ("nothing-given", {"k": 5}, 422, ["body", "recent_items"], "give recent_items, a user_id or user_features"),
    ("extra-field", {"recent_item": [1]}, 422, ["body", "recent_item"], "Extra inputs are not permitted"),
    ("body-list", [1, 2], 422, ["body"], "valid dictionary"),
    ("body-string", "x", 422, ["body"], "valid dictionary"),
    ("body-null", b"null", 422, ["body"], "Field required"),
    ("body-empty", b"", 422, ["body"], "Field required"),
    ("json-invalid", b'{"recent_items": [1,', 422, None, "JSON decode error"),
    ("json-not-utf8", b'{"recent_items": [1]}\xff\xfe', 400, None, "error parsing the body"),
    ("json-deep-nesting", b"[" * 200_000 + b"]" * 200_000, 400, None, "error parsing the body"),
    ("body-too-large", {"user_features": {"history_item_ids": _many(300_000)}}, 413, None, "1048576-byte limit"),
]


def _post(client: TestClient, body: Any, **kw: Any):
    if isinstance(body, bytes):
        return client.post("/retrieve", content=body, headers={"content-type": "application/json"}, **kw)
    return client.post("/retrieve", json=body, **kw)


@pytest.mark.parametrize("body, status, loc, msg", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_each_bad_input_gets_its_own_clear_error(client, body, status, loc, msg):
    r = _post(client, body)
    assert r.status_code == status, r.text[:500]
    detail = r.json()["detail"]
    if isinstance(detail, str):
        assert msg in detail, detail
        return
    err = detail[0]
    assert msg in err["msg"], err
    if loc is not None:
        assert err["loc"] == loc, err


def test_at_least_forty_bad_input_kinds_are_covered():
    assert len({b[0] for b in BAD}) == len(BAD) >= 40


def test_body_over_the_limit_is_refused_while_streaming(client):
    """No Content-Length (chunked): the body is counted as it arrives and refused past the limit."""
    sent = []

    def chunks():
        for _ in range(40):  # 40 x 64 KiB = 2.5 MiB, over the 1 MiB limit
            sent.append(1)
            yield b" " * 65536

    r = client.post("/retrieve", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "1048576-byte limit" in r.json()["detail"]
    assert client.post("/retrieve", json=LEGIT[0]).status_code == 200


def test_content_length_over_the_limit_is_refused_before_reading(live):
    app = create_app(live, user_features=False, limits=ServiceLimits(max_body_bytes=1000))
    with TestClient(app) as c:
        r = c.post("/retrieve", json={"recent_items": _many(400)})
        assert r.status_code == 413 and "1000-byte limit" in r.json()["detail"]
        assert c.post("/retrieve", json={"recent_items": [1, 2], "k": 3}).status_code == 200
        assert 'mfli_request_errors_total{kind="too_large"} 1.0' in c.get("/metrics").text


# ------------------------------------------------------------------------------------------------
# isolation: bad requests in the same batch change nothing for the others
# ------------------------------------------------------------------------------------------------
class _GatedLive:
    """A live retriever whose retriever waits for ``gate`` once, so queued requests form one batch,
    and fails a whole batch whenever it holds a request with ``k == poison_k`` (a stand-in for any bug)."""

    def __init__(self, live: LiveRetriever, poison_k: int | None = None, block_first: bool = True) -> None:
        self._live = live
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.poison_k = poison_k
        self.batch_sizes: list[int] = []
        self._block = block_first
        self.refresh_failures = 0
        outer = self

        class Obj:
            def __getattr__(self, name: str) -> Any:
                return getattr(live.state.obj, name)

            def retrieve_batch(self, requests, lookup=None):
                outer.batch_sizes.append(len(requests))
                if outer._block:
                    outer._block = False
                    outer.entered.set()
                    assert outer.gate.wait(30)
                if outer.poison_k is not None and any(r.k == outer.poison_k for r in requests):
                    raise OverflowError("Python int too large to convert to C long")
                return live.state.obj.retrieve_batch(requests, lookup)

        self._obj = Obj()

    @property
    def state(self):
        return dataclasses.replace(self._live.state, obj=self._obj)

    def metadata(self) -> dict:
        return self._live.metadata()


def _same(got: dict, want: dict) -> bool:
    """Same snapshot, mode and items in the same order; scores equal up to float32 rounding (a batched
    matmul may sum in another order than a single-row one)."""
    if (got["snapshot_id"], got["mode"], len(got["items"])) != (want["snapshot_id"], want["mode"], len(want["items"])):
        return False
    for a, b in zip(got["items"], want["items"]):
        if {k: v for k, v in a.items() if k != "score"} != {k: v for k, v in b.items() if k != "score"}:
            return False
        if a["score"] != pytest.approx(b["score"], rel=1e-5, abs=1e-6):
            return False
    return True


def _answers(client: TestClient) -> list[dict]:
    out = []
    for body in LEGIT:
        r = client.post("/retrieve", json=body)
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out


def _fire(client: TestClient, bodies: list[Any]) -> list[Any]:
    results: list[Any] = [None] * len(bodies)

    def go(i: int) -> None:
        results[i] = _post(client, bodies[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    return [threads, results]


def test_legit_requests_batched_with_every_bad_kind_get_their_own_answers(live):
    with TestClient(create_app(live, user_features=False)) as c:
        alone = _answers(c)
    gated = _GatedLive(live)
    app = create_app(gated, user_features=False, limits=ServiceLimits(max_batch=512))
    with TestClient(app) as c:
        blocker = threading.Thread(target=lambda: c.post("/retrieve", json=LEGIT[0]))
        blocker.start()
        assert gated.entered.wait(30)  # the worker is busy: everything below queues up into one batch
        bodies = [b[1] for b in BAD] + LEGIT * 3
        threads, results = _fire(c, bodies)
        deadline = time.monotonic() + 30
        # the edge answers the bad ones at once; the legit ones and those the snapshot refuses queue
        while app.state.batcher.pending < len(LEGIT) * 3 + 4:
            assert time.monotonic() < deadline, app.state.batcher.pending
            time.sleep(0.01)
        gated.gate.set()
        for t in [*threads, blocker]:
            t.join(30)
    assert max(gated.batch_sizes) >= len(LEGIT) * 3 + 4  # legit and snapshot-refused requests shared a batch
    for (name, _, status, _, msg), r in zip(BAD, results[: len(BAD)]):
        assert r.status_code == status, (name, r.text[:300])
    for j, r in enumerate(results[len(BAD):]):
        assert r.status_code == 200 and _same(r.json(), alone[j % len(LEGIT)]), j


def test_a_batch_that_fails_is_bisected_so_only_the_culprit_fails(live):
    with TestClient(create_app(live, user_features=False)) as c:
        alone = _answers(c)
    gated = _GatedLive(live, poison_k=13)
    app = create_app(gated, user_features=False)
    with TestClient(app) as c:
        blocker = threading.Thread(target=lambda: c.post("/retrieve", json=LEGIT[0]))
        blocker.start()
        assert gated.entered.wait(30)
        bodies = LEGIT * 2 + [{"recent_items": [1], "k": 13}] + LEGIT
        threads, results = _fire(c, bodies)
        deadline = time.monotonic() + 30
        while app.state.batcher.pending < len(bodies):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        gated.gate.set()
        for t in [*threads, blocker]:
            t.join(30)
        metrics = c.get("/metrics").text
        service = c.get("/metadata").json()["service"]
    poison = len(LEGIT) * 2
    assert results[poison].status_code == 500 and "this request" in results[poison].json()["detail"]
    for j, r in enumerate(results):
        if j != poison:
            assert r.status_code == 200 and _same(r.json(), alone[(j if j < poison else j - 1) % len(LEGIT)]), j
    assert service["isolated_failures"] == 1
    assert 'mfli_request_errors_total{kind="internal"} 1.0' in metrics
    # one failed call of 19, then halves: log2(19) ~ 5 levels, far fewer calls than one per request
    assert len(gated.batch_sizes) <= 2 + 2 * 5


def test_python_api_refuses_an_overflowing_user_id_alone(live):
    obj = live.state.obj
    out = obj.retrieve_batch([RetrievalRequest(user_id=2**63, k=3), RetrievalRequest(recent_items=[1, 2], k=3)])
    assert "64-bit" in str(out[0]) and len(out[1]["items"]) == 3


# ------------------------------------------------------------------------------------------------
# queue bound, deadline
# ------------------------------------------------------------------------------------------------
def test_full_queue_is_503_with_retry_after_and_recovers(live):
    gated = _GatedLive(live)
    app = create_app(gated, user_features=False, limits=ServiceLimits(max_queue=2, retry_after_s=3))
    with TestClient(app) as c:
        blocker = threading.Thread(target=lambda: c.post("/retrieve", json=LEGIT[0]))
        blocker.start()
        assert gated.entered.wait(30)
        threads, results = _fire(c, [LEGIT[1], LEGIT[2]])
        deadline = time.monotonic() + 30
        while app.state.batcher.pending < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = c.post("/retrieve", json=LEGIT[3])
        assert r.status_code == 503 and r.headers["retry-after"] == "3" and "queue full" in r.json()["detail"]
        gated.gate.set()
        for t in [*threads, blocker]:
            t.join(30)
        assert [x.status_code for x in results] == [200, 200]
        assert c.post("/retrieve", json=LEGIT[3]).status_code == 200
        assert 'mfli_request_errors_total{kind="overloaded"} 1.0' in c.get("/metrics").text


def test_request_past_its_deadline_is_504_and_others_carry_on(live):
    gated = _GatedLive(live)
    app = create_app(gated, user_features=False, limits=ServiceLimits(deadline_s=1.0))
    with TestClient(app) as c:
        first: list = []
        blocker = threading.Thread(target=lambda: first.append(c.post("/retrieve", json=LEGIT[0])))
        blocker.start()
        assert gated.entered.wait(30)
        r = c.post("/retrieve", json=LEGIT[1])  # queued behind a batch that does not finish in time
        assert r.status_code == 504 and "1 s" in r.json()["detail"]
        gated.gate.set()
        blocker.join(30)
        assert first[0].status_code == 504  # its caller stopped waiting too
        assert c.post("/retrieve", json=LEGIT[2]).status_code == 200
        assert 'mfli_request_errors_total{kind="deadline"} 2.0' in c.get("/metrics").text
    assert gated.batch_sizes == [1, 1]  # the timed-out queued request was dropped, never computed


# ------------------------------------------------------------------------------------------------
# probes, metrics, OpenAPI, configuration
# ------------------------------------------------------------------------------------------------
def test_livez_readyz_and_health_before_and_after_a_snapshot(snapshot_dir, tmp_path):
    store = open_store(tmp_path / "store")
    live = LiveRetriever(store, SnapshotBuilder(), tmp_path / "cache")
    assert live.refresh() is False
    with TestClient(create_app(live, user_features=False)) as c:
        assert c.get("/livez").json() == {"status": "ok"}
        for path in ("/readyz", "/health"):
            r = c.get(path)
            assert r.status_code == 503 and "nothing published yet" in r.json()["last_refresh_error"]
        assert "mfli_snapshot_loaded 0.0" in c.get("/metrics").text
        assert "mfli_refresh_failures_total 1.0" in c.get("/metrics").text
        publish_snapshot(store, snapshot_dir, "v1")
        assert live.refresh() is True
        assert c.get("/readyz").json() == {"status": "ok", "snapshot_id": "v1", "last_refresh_error": None}
        assert c.get("/health").status_code == 200


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, flags=re.MULTILINE)
    assert m, name
    return float(m.group(1))


def test_metrics_count_requests_batches_errors_and_describe_the_snapshot(client):
    for body in LEGIT:
        assert client.post("/retrieve", json=body).status_code == 200
    for body in ({"user_id": True}, {"recent_items": [1], "facet_quotas": {"colour": 1}}):
        assert client.post("/retrieve", json=body).status_code == 422
    assert client.post("/retrieve", content=b"{", headers={"content-type": "application/json"}).status_code == 422
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert _metric(text, 'mfli_request_seconds_count{mode="trigger"}') == 4
    assert _metric(text, 'mfli_request_seconds_count{mode="user"}') == 2
    assert _metric(text, 'mfli_request_seconds_count{mode="rejected"}') == 1  # refused by the snapshot; edge 422s are not timed
    assert _metric(text, 'mfli_request_errors_total{kind="validation"}') == 2
    assert _metric(text, 'mfli_request_errors_total{kind="bad_json"}') == 1
    assert _metric(text, "mfli_batch_size_count") == 7  # 6 legit + the one the snapshot refused
    assert _metric(text, 'mfli_snapshot_info{snapshot_id="v1"}') == 1
    assert _metric(text, "mfli_deltas_applied") == 0
    assert 0 <= _metric(text, "mfli_snapshot_age_seconds") < 3600
    assert _metric(text, "mfli_queue_depth") == 0


def test_openapi_documents_bounds_and_response_models(client):
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/retrieve"]["post"]
    assert {"200", "413", "422", "500", "503", "504"} <= set(post["responses"])
    ok = post["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/RetrieveResponse")
    body = spec["components"]["schemas"]["RetrieveBody"]["properties"]
    assert body["recent_items"]["maxItems"] == 1000
    assert body["recent_items"]["items"] == {"type": "integer", "format": "int64"}
    assert body["k"]["maximum"] == 1000
    for path in ("/livez", "/readyz", "/metadata"):
        assert "$ref" in spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]


def test_limits_from_env_and_overrides_are_typed_and_checked():
    lim = ServiceLimits.from_env({"MFLI_SERVE_DEADLINE_S": "0.5", "MFLI_SERVE_MAX_QUEUE": "10", "OTHER": "x"})
    assert (lim.deadline_s, lim.max_queue, lim.max_k) == (0.5, 10, 1000)
    assert lim.with_overrides(parse_limit_options(["max-k=50"])).max_k == 50
    for bad, msg in [({"max_k": "many"}, "integer"), ({"deadline_s": "0"}, "positive"), ({"nope": "1"}, "unknown"),
                     ({"max_quota_weight": "inf"}, "positive")]:
        with pytest.raises(ValueError, match=msg):
            ServiceLimits().with_overrides(bad)
    with pytest.raises(ValueError, match="field=value"):
        parse_limit_options(["deadline_s"])


def test_smaller_limits_show_in_the_errors(live):
    lim = ServiceLimits(max_recent_items=3, max_k=10, max_history_items=2)
    with TestClient(create_app(live, user_features=False, limits=lim)) as c:
        assert "at most 3" in c.post("/retrieve", json={"recent_items": [1, 2, 3, 4]}).json()["detail"][0]["msg"]
        assert c.post("/retrieve", json={"recent_items": [1], "k": 11}).status_code == 422
        r = c.post("/retrieve", json={"user_features": {"history_item_ids": [1, 2, 3]}})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "history_item_ids"
        assert c.post("/retrieve", json={"recent_items": [1, 2, 3], "k": 10}).status_code == 200


# ------------------------------------------------------------------------------------------------
# the real process over loopback
# ------------------------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_mfli_serve_process_refuses_hostile_requests_and_keeps_serving(snapshot_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    import httpx

    store = open_store(tmp_path / "store")
    publish_snapshot(store, snapshot_dir, "v1")
    port = _free_port()
    env = {**os.environ, "MFLI_CACHE_DIR": str(tmp_path / "cache"), "MFLI_SERVE_DEADLINE_S": "5"}
    env.pop("MFLI_FEAST_REPO", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from mfli.cli import app; app()", "serve", "--store", str(tmp_path / "store"),
         "--port", str(port), "--refresh-seconds", "0", "--log-level", "warning", "--limit", "max_body_bytes=65536"],
        cwd=Path(__file__).resolve().parents[3], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240  # an empty numba cache: the first load compiles the kernels
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=10) as c:
            assert c.get("/livez").json() == {"status": "ok"}
            limits = c.get("/metadata").json()["service"]["limits"]
            assert (limits["max_body_bytes"], limits["deadline_s"]) == (65536, 5.0)
            big = json.dumps({"user_features": {"history_item_ids": _many(2_000_000)}}).encode()  # ~16 MB
            r = c.post("/retrieve", content=big, headers={"content-type": "application/json"})
            assert r.status_code == 413 and "65536-byte limit" in r.json()["detail"]
            assert c.post("/retrieve", json={"user_id": 2**64, "k": 5}).status_code == 422
            assert c.post("/retrieve", json={"user_id": True}).status_code == 422
            r = c.post("/retrieve", json={"recent_items": [0, 3], "k": 6})
            assert r.status_code == 200 and len(r.json()["items"]) == 6
            text = c.get("/metrics").text
            assert 'mfli_request_errors_total{kind="too_large"} 1.0' in text
            assert 'mfli_request_errors_total{kind="validation"} 2.0' in text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
