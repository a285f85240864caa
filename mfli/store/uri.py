"""Store URIs and object keys: parsing, validation and credential redaction.

A store is named by a URI:

- ``file:///abs/dir`` or a plain path (``.mfli/store``, ``/data/store``): a local directory, the
  embedded default;
- ``s3://bucket/prefix``: an S3 bucket (AWS, MinIO, SeaweedFS ...), objects under ``prefix/``.

Credentials never travel inside a URI (``s3://key:secret@bucket`` is refused without echoing it):
they come from the environment or are passed to :func:`mfli.store.open_store` explicitly.

Keys are relative, ``/``-separated paths such as ``snapshots/20240101T000000Z/model/weights.safetensors``.
Anything that could escape the store root or mean different things on different backends is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mfli.store.errors import InvalidKey, StoreError

# Segment characters are deliberately left open (S3 allows almost anything); only the shapes below
# are refused, because they are ambiguous between S3 and a filesystem or escape the store root.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
MAX_KEY_BYTES = 1024  # the S3 limit on a whole key


@dataclass(frozen=True)
class StoreURI:
    """A parsed store URI: ``scheme`` is ``"file"`` (with ``path``) or ``"s3"`` (with ``bucket``, ``prefix``)."""

    scheme: str
    path: Path | None = None  # file: absolute directory
    bucket: str = ""  # s3: bucket name
    prefix: str = ""  # s3: key prefix without leading/trailing "/" ("" = bucket root)

    def __str__(self) -> str:
        if self.scheme == "file":
            return self.path.as_uri() if self.path is not None else "file://"
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def _why_bad_key(key: object, what: str) -> str | None:
    if not isinstance(key, str):
        return f"{what} must be a string, got {type(key).__name__}"
    if key == "":
        return f"{what} is empty"
    if "\\" in key:
        return f"{what} {key!r} contains a backslash; use '/' as separator"
    if _CONTROL.search(key):
        return f"{what} {key!r} contains a control character"
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key):
        return f"{what} {key!r} is absolute; keys are relative to the store root"
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        return f"{what} is longer than {MAX_KEY_BYTES} bytes"
    for seg in key.split("/"):
        if seg == "":
            return f"{what} {key!r} has an empty path segment ('//' or a trailing '/')"
        if seg in (".", ".."):
            return f"{what} {key!r} has a '{seg}' segment; keys may not navigate directories"
    return None


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a safe object key, else raise :class:`InvalidKey`.

    Refused: empty keys, absolute paths (``/x``, ``C:...``), backslashes, empty segments (``a//b``,
    ``a/``), ``.`` or ``..`` segments, control characters, keys over 1024 bytes.
    """
    why = _why_bad_key(key, "object key")
    if why:
        raise InvalidKey(why)
    return key


def validate_prefix(prefix: str) -> str:
    """Validate a listing prefix: ``""`` (everything), or a key-like string optionally ending in ``/``."""
    if prefix == "":
        return prefix
    body = prefix.removesuffix("/")
    why = _why_bad_key(body, "prefix")
    if why:
        raise InvalidKey(why)
    return prefix


def join_key(*parts: str) -> str:
    """Join key parts with ``/`` and validate the result (``join_key("snapshots", sid, "manifest.json")``)."""
    return validate_key("/".join(p.strip("/") for p in parts if p not in ("", None)))


def parse_store_uri(uri: str | Path) -> StoreURI:
    """Parse ``file:///abs/dir``, a plain path, or ``s3://bucket/prefix`` into a :class:`StoreURI`.

    Raises:
        StoreError: an unknown scheme, a malformed bucket, a relative ``file://`` URI, or credentials
            embedded in the URI (the message never repeats them).
    """
    if isinstance(uri, Path):
        return StoreURI("file", path=uri.expanduser().resolve())
    if not isinstance(uri, str) or not uri.strip():
        raise StoreError("store URI is empty; use file:///abs/dir, a directory path, or s3://bucket/prefix")
    uri = uri.strip()
    if "://" not in uri:
        return StoreURI("file", path=Path(uri).expanduser().resolve())
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if "@" in parts.netloc:
        # Never echo the URI: the part before '@' is likely a key or a secret.
        raise StoreError(
            f"{scheme}:// store URI must not carry credentials (user:secret@...); "
            "pass them through the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) or open_store(...) "
            "arguments"
        )
    if parts.query or parts.fragment:
        raise StoreError(f"store URI {redact_uri(uri)!r} must not have a query string or fragment")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StoreError(f"file URI {uri!r} must be absolute: file:///abs/dir (three slashes)")
        if not parts.path.startswith("/"):
            raise StoreError(f"file URI {uri!r} must hold an absolute path")
        return StoreURI("file", path=Path(parts.path).resolve())
    if scheme in ("s3", "s3a"):
        bucket = parts.netloc
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise StoreError(
                f"S3 bucket name {bucket!r} in {uri!r} is invalid: 3-63 characters of a-z, 0-9, '.', '-'"
            )
        prefix = parts.path.strip("/")
        if prefix:
            why = _why_bad_key(prefix, "S3 prefix")
            if why:
                raise InvalidKey(f"{why} (in store URI {uri!r})")
        return StoreURI("s3", bucket=bucket, prefix=prefix)
    raise StoreError(f"unsupported store URI scheme {scheme!r} in {redact_uri(uri)!r}; use file:// or s3://")


def redact_uri(uri: str) -> str:
    """Drop any ``user:password@`` part of a URI so it can be logged."""
    return re.sub(r"(?<=://)[^/@]*@", "***@", uri)


def redact(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """Replace every occurrence of each non-empty ``secret`` in ``text`` with ``***`` (and strip URI userinfo)."""
    for s in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(s, "***")
    return redact_uri(text)
