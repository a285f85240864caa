"""S3 object store through boto3 (AWS S3, MinIO, SeaweedFS, ... chosen by configuration alone).

Where the connection settings come from, first match wins:

- endpoint URL: the ``endpoint_url`` argument, ``MFLI_S3_ENDPOINT_URL``, then boto3's own
  ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (none = AWS itself);
- region: the ``region_name`` argument, ``AWS_REGION``, ``AWS_DEFAULT_REGION``, else ``us-east-1``;
- credentials: the ``credentials`` argument (e.g. read by an orchestrator from its connection store),
  else boto3's chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
  ``AWS_PROFILE``, instance/role credentials). Never from files in this repository.

Secrets are held only by the boto3 session; ``repr``, log lines and error messages carry the bucket,
key and endpoint, and every message passes through :meth:`S3Store.redact` anyway.

Retries: botocore's ``standard`` mode retries throttling and 5xx answers; around each call this module
adds its own exponential back-off with jitter for dropped connections and timeouts (a restarting
server, a flaky network). A lost precondition (HTTP 412) is never retried.

Checksums: every upload carries an S3 SHA-256 checksum (``ChecksumSHA256``, verified by the server on
write; multipart uploads get per-part checksums and record the whole file's SHA-256 as the
``x-amz-meta-sha256`` metadata), and ``head`` reads it back (``ChecksumMode=ENABLED``). Content
comparisons (resumed publishes, a write retried after a lost answer) use it, never the ETag, which is
not an MD5 for multipart uploads or SSE-KMS objects.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from mfli.store.base import ObjectInfo, ObjectStore, normalise_etag
from mfli.store.errors import ObjectNotFound, PreconditionFailed, StoreAuthError, StoreError
from mfli.store.uri import redact

log = logging.getLogger(__name__)
T = TypeVar("T")

_AUTH_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken",
    "InvalidClientTokenId", "AuthorizationHeaderMalformed", "403",
}
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "500", "502", "503", "504"}
_MiB = 1 << 20
_SHA256_META = "sha256"  # x-amz-meta-sha256: the whole object's sha256 (hex) on multipart uploads


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_MiB):
            h.update(chunk)
    return h.hexdigest()


def sha256_from_head(resp: dict) -> str | None:
    """Hex SHA-256 of a whole object from a HEAD/GET answer.

    A multipart upload's ``ChecksumSHA256`` is a checksum of the part checksums (``ChecksumType``
    ``COMPOSITE``, often suffixed ``-<parts>``), not of the object: for those the whole object's SHA-256
    recorded at upload (``x-amz-meta-sha256``) is used. Otherwise the server's full-object checksum.
    """
    meta = (resp.get("Metadata") or {}).get(_SHA256_META)
    if meta and len(meta) == 64:
        return meta.lower()
    value = resp.get("ChecksumSHA256")
    if value and "-" not in value and resp.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
        with contextlib.suppress(binascii.Error, ValueError):
            raw = base64.b64decode(value, validate=True)
            if len(raw) == 32:
                return raw.hex()
    return None


@dataclass
class S3Config:
    """Transfer and retry settings of the S3 backend."""

    max_attempts: int = 4  # own attempts per call on dropped connections / timeouts / 5xx
    botocore_max_attempts: int = 3  # botocore 'standard' retry mode attempts per request (throttling, 5xx)
    backoff_base_s: float = 0.25  # first back-off; doubles per attempt, with full jitter
    backoff_max_s: float = 8.0  # back-off ceiling
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    multipart_threshold: int = 64 * _MiB  # objects at least this big go up in parts (S3 minimum part: 5 MiB)
    multipart_chunksize: int = 16 * _MiB  # part size of multipart uploads/downloads
    max_concurrency: int = 4  # parallel parts per transfer
    addressing_style: str | None = None  # "path" | "virtual" | "auto"; None: "path" with a custom endpoint


@dataclass(frozen=True)
class S3Credentials:
    """Explicit credentials (e.g. from an orchestrator's connection); never printed by ``repr``."""

    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def _is_transient(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, IncompleteReadError
    from s3transfer.exceptions import RetriesExceededError
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return err.get("Code") in _TRANSIENT_CODES or status in _TRANSIENT_CODES
    return isinstance(exc, (ConnectionError, HTTPClientError, IncompleteReadError, RetriesExceededError, Urllib3Error))


class S3Store(ObjectStore):
    """Object store on ``s3://bucket/prefix``.

    Args:
        bucket: bucket name.
        prefix: key prefix inside the bucket ("" = bucket root), no leading/trailing "/".
        endpoint_url: S3 endpoint (MinIO/SeaweedFS ``http://host:port``); see module doc for defaults.
        region_name: signing region.
        credentials: explicit credentials; default boto3's credential chain.
        config: retry/transfer settings.
        client: a ready boto3 S3 client (shared between stores, or a test double); endpoint/region are then
            the client's, and ``credentials`` only tell :meth:`redact` what to hide.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        credentials: S3Credentials | None = None,
        config: S3Config | None = None,
        client=None,
    ):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config as BotoConfig

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.config = config or S3Config()
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url or os.environ.get("MFLI_S3_ENDPOINT_URL") or None
        custom_endpoint = bool(
            self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        self._secrets: tuple[str, ...] = ()
        if client is None:
            region = region_name or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            kw = {}
            if credentials is not None:
                kw = {
                    "aws_access_key_id": credentials.access_key_id,
                    "aws_secret_access_key": credentials.secret_access_key,
                    "aws_session_token": credentials.session_token,
                }
            session = boto3.session.Session(region_name=region, **kw)
            style = self.config.addressing_style or ("path" if custom_endpoint else "auto")
            boto_cfg = BotoConfig(
                retries={"max_attempts": self.config.botocore_max_attempts, "mode": "standard"},
                connect_timeout=self.config.connect_timeout_s,
                read_timeout=self.config.read_timeout_s,
                s3={"addressing_style": style},
                max_pool_connections=max(10, 2 * self.config.max_concurrency),
            )
            client = session.client("s3", endpoint_url=self.endpoint_url, config=boto_cfg)
            creds = session.get_credentials()
            if creds is not None:
                frozen = creds.get_frozen_credentials()
                self._secrets = tuple(s for s in (frozen.secret_key, frozen.token, frozen.access_key) if s)
        elif credentials is not None:
            self._secrets = tuple(s for s in (credentials.secret_access_key, credentials.session_token,
                                              credentials.access_key_id) if s)
        self._client = client
        self._transfer = TransferConfig(
            multipart_threshold=self.config.multipart_threshold,
            multipart_chunksize=self.config.multipart_chunksize,
            max_concurrency=self.config.max_concurrency,
            use_threads=self.config.max_concurrency > 1,
        )

    def __repr__(self) -> str:
        ep = f", endpoint={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"S3Store({self.uri!r}{ep})"

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    # -- plumbing -------------------------------------------------------------------------------------
    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, key: str) -> str:
        return f"{self.uri}/{key}" if key else self.uri

    def _error(self, exc: BaseException, op: str, key: str, *, conditional: bool = False) -> StoreError:
        """Translate a boto error into a store error whose message holds no secret."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        where = self._where(key)
        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
            exc = exc.__context__
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StoreAuthError(
                f"S3 {op} {where}: no usable credentials; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE / a role) or pass credentials explicitly"
            )
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            msg = self.redact(str(err.get("Message", "")))
            if code == "PreconditionFailed" or status == 412:
                return PreconditionFailed(f"S3 {op} {where}: precondition failed (the object changed)")
            if conditional and code != "NoSuchBucket" and (code in _NOT_FOUND_CODES or status == 404):
                # AWS answers If-Match on a missing key with 404; for the caller it is a lost precondition.
                return PreconditionFailed(f"S3 {op} {where}: precondition failed (the object does not exist)")
            if code == "NoSuchBucket":
                return StoreError(f"S3 {op} {where}: bucket {self.bucket!r} does not exist")
            if code in _NOT_FOUND_CODES or status == 404:
                return ObjectNotFound(f"S3 {op} {where}: no such object")
            if code in _AUTH_CODES or status == 403:
                return StoreAuthError(f"S3 {op} {where}: credentials refused ({code}: {msg})")
            return StoreError(f"S3 {op} {where}: {code or 'error'} (HTTP {status}) {msg}".rstrip())
        return StoreError(f"S3 {op} {where}: {type(exc).__name__}: {self.redact(str(exc))}")

    def _call(self, op: str, key: str, fn: Callable[[], T], *, conditional: bool = False,
              on_conflict_after_retry: Callable[[], T | None] | None = None) -> T:
        """Run ``fn`` with back-off on transient failures; translate errors (no chained boto text)."""
        from boto3.exceptions import S3UploadFailedError

        cfg = self.config
        retried = False
        for attempt in range(1, cfg.max_attempts + 1):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised as StoreError
                inner = exc.__context__ if isinstance(exc, S3UploadFailedError) and exc.__context__ else exc
                if _is_transient(inner) and attempt < cfg.max_attempts:
                    delay = random.uniform(0, min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** (attempt - 1)))
                    log.warning("S3 %s %s: %s, retry %d/%d in %.2fs", op, self._where(key),
                                type(inner).__name__, attempt, cfg.max_attempts - 1, delay)
                    retried = True
                    time.sleep(delay)
                    continue
                err = self._error(exc, op, key, conditional=conditional)
                botocore_retried = bool(
                    getattr(inner, "response", {}).get("ResponseMetadata", {}).get("RetryAttempts", 0)
                )
                if isinstance(err, PreconditionFailed) and (retried or botocore_retried) and on_conflict_after_retry:
                    # An earlier attempt may have succeeded with only its answer lost: if the object now
                    # holds exactly our bytes, that write was ours.
                    won = on_conflict_after_retry()
                    if won is not None:
                        return won
                if attempt > 1 and not isinstance(err, PreconditionFailed):
                    err = type(err)(f"{err} (after {attempt} attempts)")
                raise err from None
        raise AssertionError("unreachable")

    def _missing_or_denied(self, key: str, read: Callable[[], T]) -> T:
        """Run a GET/HEAD; turn a 403 on a key that does not exist into :class:`ObjectNotFound`.

        AWS answers 403 (not 404) for a missing key when the caller's ``s3:ListBucket`` is limited to a
        prefix (see infra/iam/README.md). A one-key listing, which such policies allow, tells the two apart.
        """
        try:
            return read()
        except StoreAuthError as denied:
            try:
                full = self._full(key)
                resp = self._client.list_objects_v2(Bucket=self.bucket, Prefix=full, MaxKeys=1)
            except Exception:  # noqa: BLE001 - listing refused too: the credentials really are the problem
                raise denied from None
            if any(o.get("Key") == full for o in resp.get("Contents", [])):
                raise denied from None
            raise ObjectNotFound(f"S3 get {self._where(key)}: no such object") from None

    # -- writes ---------------------------------------------------------------------------------------
    def _put_bytes(self, key: str, data: bytes, *, if_match: str | None, if_none_match: bool) -> str:
        full = self._full(key)
        conditional = if_match is not None or if_none_match
        sha_hex = hashlib.sha256(data).hexdigest()
        if not conditional and len(data) >= self.config.multipart_threshold:
            def upload() -> str:
                self._client.upload_fileobj(io.BytesIO(data), self.bucket, full, Config=self._transfer,
                                            ExtraArgs=self._multipart_args(sha_hex))
                return self._head(key).etag

            return self._call("put", key, upload)

        kw = {}
        if if_match is not None:
            kw["IfMatch"] = f'"{if_match}"'
        if if_none_match:
            kw["IfNoneMatch"] = "*"
        checksum = base64.b64encode(bytes.fromhex(sha_hex)).decode()

        def put() -> str:
            # the server recomputes the SHA-256 and refuses the write (BadDigest) if the bytes differ
            resp = self._client.put_object(Bucket=self.bucket, Key=full, Body=data, ChecksumAlgorithm="SHA256",
                                           ChecksumSHA256=checksum, **kw)
            return normalise_etag(resp["ETag"])

        def ours_after_retry() -> str | None:
            try:
                info = self._head(key)
            except StoreError:
                return None
            return info.etag if info.sha256 == sha_hex and info.size == len(data) else None

        return self._call("put", key, put, conditional=conditional, on_conflict_after_retry=ours_after_retry)

    @staticmethod
    def _multipart_args(sha_hex: str) -> dict:
        """Per-part SHA-256 checksums (verified by the server) plus the whole file's, as metadata."""
        return {"ChecksumAlgorithm": "SHA256", "Metadata": {_SHA256_META: sha_hex}}

    def _put_file(self, key: str, path: Path) -> str:
        full = self._full(key)
        if path.stat().st_size < self.config.multipart_threshold:
            def put() -> str:
                with open(path, "rb") as body:
                    return normalise_etag(self._client.put_object(
                        Bucket=self.bucket, Key=full, Body=body, ChecksumAlgorithm="SHA256")["ETag"])

            return self._call("put", key, put)

        extra = self._multipart_args(_file_sha256(path))

        def upload() -> str:
            self._client.upload_file(str(path), self.bucket, full, Config=self._transfer, ExtraArgs=extra)
            return self._head(key).etag

        return self._call("put", key, upload)

    def _delete(self, key: str) -> None:
        self._call("delete", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=self._full(key)))

    def _delete_many(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):  # S3's DeleteObjects limit
            batch = keys[i:i + 1000]
            objs = [{"Key": self._full(k)} for k in batch]
            resp = self._call(
                "delete", batch[0],
                lambda objs=objs: self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": objs, "Quiet": True}),
            )
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise StoreError(
                    f"S3 delete {self.uri}: {len(errors)} of {len(batch)} deletes failed, "
                    f"e.g. {first.get('Key')}: {first.get('Code')}"
                )

    # -- reads ----------------------------------------------------------------------------------------
    def _get_bytes(self, key: str) -> bytes:
        return self._get_bytes_etag(key)[0]

    def _get_bytes_etag(self, key: str) -> tuple[bytes, str]:
        def get() -> tuple[bytes, str]:
            resp = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
            data = resp["Body"].read()
            expected = resp.get("ContentLength")
            if expected is not None and len(data) != expected:
                from botocore.exceptions import IncompleteReadError

                raise IncompleteReadError(actual_bytes=len(data), expected_bytes=expected)
            return data, normalise_etag(resp["ETag"])

        return self._missing_or_denied(key, lambda: self._call("get", key, get))

    def _get_file(self, key: str, path: Path) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        os.close(fd)
        try:
            self._missing_or_denied(key, lambda: self._call("get", key, lambda: self._client.download_file(
                self.bucket, self._full(key), tmp, Config=self._transfer)))
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _head(self, key: str) -> ObjectInfo:
        resp = self._missing_or_denied(key, lambda: self._call(
            "head", key, lambda: self._client.head_object(Bucket=self.bucket, Key=self._full(key),
                                                          ChecksumMode="ENABLED")))
        return ObjectInfo(key, int(resp["ContentLength"]), normalise_etag(resp["ETag"]), resp.get("LastModified"),
                          sha256_from_head(resp))

    def _paginate(self, prefix: str, **kw) -> list[dict]:
        full = self._full(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")

        def pages() -> list[dict]:
            paginator = self._client.get_paginator("list_objects_v2")
            return list(paginator.paginate(Bucket=self.bucket, Prefix=full, **kw))

        return self._call("list", prefix, pages)

    def _strip(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def _list(self, prefix: str) -> list[ObjectInfo]:
        out = []
        for page in self._paginate(prefix):
            for o in page.get("Contents", []):
                out.append(ObjectInfo(self._strip(o["Key"]), int(o["Size"]), normalise_etag(o["ETag"]),
                                      o.get("LastModified")))
        return out

    def _list_dirs(self, prefix: str) -> list[str]:
        out = []
        for page in self._paginate(prefix, Delimiter="/"):
            for cp in page.get("CommonPrefixes", []):
                out.append(self._strip(cp["Prefix"])[len(prefix):].rstrip("/"))
        # Some servers (SeaweedFS) keep reporting a 'folder' after its last object is deleted; only
        # names that still hold an object count, as on AWS. One small request per name.
        return [d for d in out if d and self._paginate_one(f"{prefix}{d}/")]

    def _paginate_one(self, prefix: str) -> bool:
        resp = self._call("list", prefix, lambda: self._client.list_objects_v2(
            Bucket=self.bucket, Prefix=self._full(prefix), MaxKeys=1))
        return bool(resp.get("Contents"))

    # -- set-up -----------------------------------------------------------------------------------------
    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (local SeaweedFS/MinIO set-ups; on AWS use IaC)."""
        from botocore.exceptions import ClientError

        def create() -> None:
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                    raise
                region = self._client.meta.region_name
                kw = {} if region in (None, "us-east-1") else {
                    "CreateBucketConfiguration": {"LocationConstraint": region}}
                self._client.create_bucket(Bucket=self.bucket, **kw)

        self._call("create-bucket", "", create)
