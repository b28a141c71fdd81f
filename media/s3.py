"""The S3 media backend (AWS S3, Cloudflare R2, MinIO — anything speaking the S3 API at
``MEDIA_S3_ENDPOINT``), through boto3.

Addressing is path-style (``endpoint/bucket/key``): it needs no per-bucket DNS name, which R2 and
local servers (moto, MinIO) do not provide.

Retries: botocore's own retries are switched off and every call goes through ``core.retry`` (tenacity),
the platform's one retry helper, with ``is_transient`` below deciding. Why not botocore's retry modes:
one policy and one log line ("transient fault, retrying") for every external dependency, a deadline
as well as an attempt count, backoff the caller (and tests) can set, and a put rewinds its body itself
before each attempt. Transient: connection refused/reset/closed, timeouts, 5xx, 429 and S3's
throttling codes. Never retried: other 4xx (403 bad credentials, 404 no such key or bucket, 400) —
repeating cannot change their outcome.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
import botocore.exceptions
from botocore.config import Config

from core import retry
from media.store import (
    CHUNK,
    Data,
    ObjectMissing,
    Reader,
    StorageUnavailable,
    StoredObject,
    check_key,
    limited_chunks,
    new_key,
)

T = TypeVar("T")

THROTTLING_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
     "TooManyRequestsException", "RequestThrottled", "RequestTimeout", "InternalError", "ServiceUnavailable"}
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
# A put keeps the data in memory up to this size while it is hashed and sent, and in a temp file above.
SPOOL_MEMORY = 1024 * 1024


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


def is_transient(exc: BaseException) -> bool:
    """Worth repeating the call for: the network or the service failed, not the request."""
    if isinstance(exc, botocore.exceptions.ClientError):
        status = _status(exc)
        return status >= 500 or status == 429 or _code(exc) in THROTTLING_CODES
    # EndpointConnectionError, ConnectTimeoutError (ConnectionError); ConnectionClosedError,
    # ReadTimeoutError, ResponseStreamingError (HTTPClientError).
    return isinstance(exc, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError))


def _checksum_options() -> dict[str, str]:
    # botocore >= 1.36 sends CRC32 checksums (aws-chunked uploads) by default, which several
    # S3-compatible services reject; compute them only where the API requires them.
    if "request_checksum_calculation" in Config.OPTION_DEFAULTS:
        return {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}
    return {}


class S3Store:
    name = "s3"

    def __init__(
        self,
        *,
        endpoint: str,
        bucket: str,
        access_key_id: str | None,
        secret_access_key: str | None,
        region: str,
        max_bytes: int,
        attempts: int = 5,
        initial_backoff: float = 0.2,
        max_backoff: float = 5.0,
        deadline: float = 60.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        self.bucket = bucket
        self.max_bytes = max_bytes
        self._retry: dict[str, Any] = dict(attempts=attempts, initial=initial_backoff, maximum=max_backoff,
                                           deadline=deadline)
        config = Config(
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 1, "mode": "standard"},  # core.retry does the retrying
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            **_checksum_options(),
        )
        # Empty keys fall back to boto3's usual credential chain (environment, instance role).
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=config,
        )

    def put(self, tenant_id: str, data: Data, mime_type: str, filename: str = "") -> StoredObject:
        key = new_key(tenant_id)
        digest = hashlib.sha256()
        size = 0
        # Spooled: the size and hash are known before the upload starts, and each retry can rewind.
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as body:
            for chunk in limited_chunks(data, self.max_bytes):
                body.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            sha256 = digest.hexdigest()

            def attempt() -> None:
                body.seek(0)
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentLength=size,
                    ContentType=mime_type,
                    Metadata={"sha256": sha256},
                )

            self._call(attempt, key)
        return StoredObject(self.name, key, size, sha256)

    def open(self, key: str) -> Reader:
        """Only the request is retried: once bytes flow to the caller, a fault mid-stream ends the stream."""
        check_key(key)
        response = self._call(lambda: self.client.get_object(Bucket=self.bucket, Key=key), key)
        body = response["Body"]
        return Reader(body.iter_chunks(CHUNK), body.close)

    def get(self, key: str) -> bytes:
        """The whole object; a fault while reading the body repeats the whole read."""
        check_key(key)

        def attempt() -> bytes:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                return body.read()
            finally:
                body.close()

        return self._call(attempt, key)

    def delete(self, key: str) -> None:
        """Remove the object; S3 answers a delete of a missing key with success too."""
        check_key(key)
        self._call(lambda: self.client.delete_object(Bucket=self.bucket, Key=key), key)

    def _call(self, fn: Callable[[], T], key: str) -> T:
        try:
            return retry.call(fn, repeatable=True, classify=is_transient, **self._retry)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in NOT_FOUND_CODES:
                raise ObjectMissing(self.name, key) from None
            if is_transient(exc):
                raise StorageUnavailable(f"media storage unavailable: {exc}") from exc
            raise
        except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
            raise StorageUnavailable(f"media storage unavailable: {exc}") from exc

