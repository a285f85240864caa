"""Least-privilege checks on the S3 IAM policies in infra/iam/.

Static rules (allowed actions, no wildcards, every resource inside the bucket prefix, ListBucket only
with an ``s3:prefix`` condition) plus a small evaluator of the Allow statements, so concrete requests
("may serving overwrite LATEST?") are answered the way AWS would for these policies.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IAM = REPO / "infra" / "iam"
BUCKET = "mfli-artifacts"
PREFIX = "prod"
BUCKET_ARN = f"arn:aws:s3:::{BUCKET}"
PREFIX_ARN = f"{BUCKET_ARN}/{PREFIX}/"

# Everything the publisher (Airflow tasks) may do, and the subset that only reads.
PUBLISHER_ALLOWED = {
    "s3:ListBucket",
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
}
SERVING_ALLOWED = {"s3:ListBucket", "s3:GetObject"}
BUCKET_LEVEL_ACTIONS = {"s3:ListBucket"}
WRITE_ACTIONS = {"s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:DeleteObjectVersion",
                 "s3:PutObjectAcl", "s3:PutBucketPolicy", "s3:RestoreObject"}
POLICIES = {"publisher": ("publisher-policy.json", PUBLISHER_ALLOWED),
            "serving": ("serving-policy.json", SERVING_ALLOWED)}


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _load(name: str) -> dict:
    path = IAM / POLICIES[name][0]
    return json.loads(path.read_text())


def allowed(policy: dict, action: str, resource: str, prefix: str | None = None) -> bool:
    """Whether ``policy`` allows ``action`` on ``resource`` (IAM wildcard matching, Allow/Deny).

    ``prefix`` is the request's ``s3:prefix`` (ListBucket only); supports the StringLike /
    StringEquals condition operators the policies use, anything else counts as not matching.
    """
    verdict = False
    for st in policy["Statement"]:
        if not any(fnmatchcase(action, a) for a in _as_list(st["Action"])):
            continue
        if not any(fnmatchcase(resource, r) for r in _as_list(st["Resource"])):
            continue
        ok = True
        for op, conds in st.get("Condition", {}).items():
            for key, values in conds.items():
                if key != "s3:prefix" or prefix is None:
                    ok = False
                elif op == "StringLike":
                    ok &= any(fnmatchcase(prefix, v) for v in _as_list(values))
                elif op == "StringEquals":
                    ok &= prefix in _as_list(values)
                else:
                    ok = False
        if not ok:
            continue
        if st["Effect"] == "Deny":
            return False
        verdict = True
    return verdict


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_shape_and_actions(name: str) -> None:
    policy = _load(name)
    allowed_actions = POLICIES[name][1]
    assert policy["Version"] == "2012-10-17"
    assert policy["Statement"], f"{name}: no statements"
    seen: set[str] = set()
    for st in policy["Statement"]:
        # Negated forms grant everything *except* the list: never least privilege.
        assert not {"NotAction", "NotResource", "NotPrincipal"} & st.keys(), f"{name}: {st.get('Sid')} uses Not*"
        assert st["Effect"] in {"Allow", "Deny"}
        for action in _as_list(st["Action"]):
            assert "*" not in action and "?" not in action, f"{name}: wildcard action {action!r}"
            assert action in allowed_actions, f"{name}: action {action!r} is not in the allowed list"
            seen.add(action)
    assert "s3:GetObject" in seen and "s3:ListBucket" in seen


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_resource_is_the_bucket_or_under_the_prefix(name: str) -> None:
    for st in _load(name)["Statement"]:
        actions = set(_as_list(st["Action"]))
        for res in _as_list(st["Resource"]):
            if res == BUCKET_ARN:
                # The bare bucket ARN only makes sense (and is only granted) for bucket-level actions.
                assert actions <= BUCKET_LEVEL_ACTIONS, f"{name}: {sorted(actions)} on the bucket itself"
            else:
                assert res.startswith(PREFIX_ARN), f"{name}: resource {res!r} is outside {PREFIX_ARN}"
                assert not actions & BUCKET_LEVEL_ACTIONS, f"{name}: ListBucket on an object ARN {res!r}"
                # A wildcard may only end the ARN, after a '/', never widen the bucket or the prefix.
                head = res[: res.index("*")] if "*" in res else res
                assert head.startswith(PREFIX_ARN) and "?" not in res


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_list_bucket_is_restricted_by_prefix_condition(name: str) -> None:
    list_statements = [st for st in _load(name)["Statement"] if "s3:ListBucket" in _as_list(st["Action"])]
    assert list_statements, f"{name}: no ListBucket statement"
    for st in list_statements:
        cond = st.get("Condition", {})
        prefixes = cond.get("StringLike", {}).get("s3:prefix") or cond.get("StringEquals", {}).get("s3:prefix")
        assert prefixes, f"{name}: ListBucket without an s3:prefix condition lists the whole bucket"
        for p in _as_list(prefixes):
            # "prod" without the slash would also list "production/..." keys.
            assert p.startswith(f"{PREFIX}/"), f"{name}: s3:prefix {p!r} is not under {PREFIX}/"


def test_serving_policy_has_no_write_action() -> None:
    actions = {a for st in _load("serving")["Statement"] for a in _as_list(st["Action"])}
    assert actions == SERVING_ALLOWED
    assert not actions & WRITE_ACTIONS


def test_publisher_deletes_only_what_the_pipeline_rewrites() -> None:
    """Retention (snapshots, deltas), re-ingest of a day (Feast partitions) and run pruning (runs/)."""
    granted = set()
    for st in _load("publisher")["Statement"]:
        if "s3:DeleteObject" in _as_list(st["Action"]):
            granted |= set(_as_list(st["Resource"]))
    assert granted == {f"{PREFIX_ARN}{p}/*" for p in ("snapshots", "deltas", "features", "runs")}


def test_serving_cannot_read_or_list_the_run_work_area() -> None:
    """runs/ holds raw interactions (PII-adjacent) and unvalidated artifacts: serving never needs them."""
    serving = _load("serving")
    for key in ("prod/runs/20240101T0000-abc/interactions.parquet", "prod/runs/delta-x/items.parquet"):
        assert not allowed(serving, "s3:GetObject", _obj(key))
    for prefix in ("prod/runs/", "prod/runs/20240101T0000-abc/", "prod/"):
        assert not allowed(serving, "s3:ListBucket", BUCKET_ARN, prefix=prefix)
    # an explicit Deny, so a later broad Allow added by mistake still cannot open runs/
    assert any(st["Effect"] == "Deny" and f"{PREFIX_ARN}runs/*" in _as_list(st["Resource"])
               for st in serving["Statement"])
    widened = {"Statement": [*serving["Statement"], {"Effect": "Allow", "Action": ["s3:GetObject"],
                                                       "Resource": [f"{PREFIX_ARN}*"]}]}
    assert not allowed(widened, "s3:GetObject", _obj("prod/runs/x/interactions.parquet"))


def _obj(key: str) -> str:
    return f"{BUCKET_ARN}/{key}"


@pytest.mark.parametrize(
    ("name", "action", "key", "expected"),
    [
        # the publishing protocol: objects, then LATEST, multipart clean-up, retention
        ("publisher", "s3:PutObject", "prod/snapshots/20240101T000000Z/model/weights.safetensors", True),
        ("publisher", "s3:PutObject", "prod/deltas/20240101T000000Z/2024-01-01T10.parquet", True),
        ("publisher", "s3:PutObject", "prod/LATEST", True),
        ("publisher", "s3:GetObject", "prod/LATEST", True),
        ("publisher", "s3:AbortMultipartUpload", "prod/snapshots/x/index.npz", True),
        ("publisher", "s3:DeleteObject", "prod/snapshots/20230101T000000Z/manifest.json", True),
        ("publisher", "s3:DeleteObject", "prod/deltas/20230101T000000Z/w.parquet", True),
        # re-ingesting a day rewrites its Feast partitions; runs/ is pruned by retention
        ("publisher", "s3:DeleteObject", "prod/features/interactions/day=2024-06-30/part-0.parquet", True),
        ("publisher", "s3:DeleteObject", "prod/runs/20240101T0000-abc/train/model.safetensors", True),
        # ... but never the pointer, other keys, or anything outside the prefix
        ("publisher", "s3:DeleteObject", "prod/LATEST", False),
        ("publisher", "s3:DeleteObject", "prod/feast/registry.db", False),
        ("publisher", "s3:PutObject", "staging/LATEST", False),
        ("publisher", "s3:PutObject", "production/LATEST", False),
        ("publisher", "s3:GetObject", "other/secret.txt", False),
        ("publisher", "s3:PutBucketPolicy", "", False),
        # serving reads the prefix and nothing else, and writes nothing
        ("serving", "s3:GetObject", "prod/LATEST", True),
        ("serving", "s3:GetObject", "prod/snapshots/x/manifest.json", True),
        ("serving", "s3:GetObject", "prod/deltas/20240101T0000-abc/w/items.parquet", True),
        # Feast's registry is SQL (feature_store.prod.yaml), not an object the service reads
        ("serving", "s3:GetObject", "prod/feast/registry.db", False),
        ("serving", "s3:GetObject", "prod/runs/20240101T0000-abc/interactions.parquet", False),
        ("serving", "s3:GetObject", "prod/features/interactions/day=2024-06-30/part-0.parquet", False),
        ("serving", "s3:GetObject", "staging/LATEST", False),
        ("serving", "s3:PutObject", "prod/LATEST", False),
        ("serving", "s3:DeleteObject", "prod/snapshots/x/manifest.json", False),
        ("serving", "s3:AbortMultipartUpload", "prod/snapshots/x/index.npz", False),
    ],
)
def test_object_requests(name: str, action: str, key: str, expected: bool) -> None:
    resource = _obj(key) if key else BUCKET_ARN
    assert allowed(_load(name), action, resource) is expected


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("prod/LATEST", True), ("prod/snapshots/", True), ("prod/deltas/20240101T000000Z/", True),
     ("", False), ("prod", False), ("production/", False), ("staging/", False), (None, False)],
)
def test_list_requests(name: str, prefix: str | None, expected: bool) -> None:
    assert allowed(_load(name), "s3:ListBucket", BUCKET_ARN, prefix=prefix) is expected


@pytest.mark.parametrize(("prefix", "publisher", "serving"),
                         [("prod/", True, False), ("prod/runs/", True, False), ("prod/features/", True, False)])
def test_list_requests_differ_by_role(prefix: str, publisher: bool, serving: bool) -> None:
    assert allowed(_load("publisher"), "s3:ListBucket", BUCKET_ARN, prefix=prefix) is publisher
    assert allowed(_load("serving"), "s3:ListBucket", BUCKET_ARN, prefix=prefix) is serving


def test_evaluator_catches_a_too_broad_policy() -> None:
    """The checks above must be able to fail: a bucket-wide grant is caught by the evaluator."""
    broad = {"Statement": [{"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": [f"{BUCKET_ARN}/*"]}]}
    assert allowed(broad, "s3:PutObject", _obj("staging/LATEST"))
    assert not allowed(_load("publisher"), "s3:PutObject", _obj("staging/LATEST"))
