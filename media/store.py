"""Where media bytes live: the store interface, the local-disk backend (the default) and the choice of
backend from settings.

A backend keeps opaque bytes under a key it makes itself — ``<tenant>/<yyyy>/<mm>/<uuid>``, never a
name or path that came from a user — and reports size and SHA-256 of what it kept. What the bytes are
(MIME type, file name, owner) is recorded in the ``media`` table by ``db.media``, which also names the
backend each object went to. ``MediaStore`` puts new objects into the configured backend and reads
each object from the backend its row names, so switching ``MEDIA_S3_ENDPOINT`` on later does not strand
objects already kept on disk.

The S3 backend lives in ``media.s3`` and is imported only when configured (boto3 is slow to import).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from core.config import ConfigError

CHUNK = 64 * 1024
# A put interrupted by a crash leaves its temp file behind; one this old cannot belong to a put
# still running in any process sharing DATA_DIR, so it is removed when a store is opened.
STALE_PARTIAL = 3600.0

Data = bytes | bytearray | memoryview | BinaryIO
KEY = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/[0-9]{4}/[0-9]{2}/[0-9a-f]{32}$")


class MediaError(Exception):
    """Base of the errors a caller of the store can act on."""


class MediaTooLarge(MediaError):
    """The object is over ``MEDIA_MAX_BYTES``; nothing was kept."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"media over the limit of {limit} bytes (MEDIA_MAX_BYTES)")
        self.limit = limit


class EmptyMedia(MediaError):
    """The object has no bytes; nothing was kept."""

    def __init__(self) -> None:
        super().__init__("media is empty")


class ObjectMissing(MediaError):
    """No object under this key (deleted, or the backend lost it)."""

    def __init__(self, backend: str, key: str) -> None:
        super().__init__(f"no {backend} media object under {key!r}")
        self.backend = backend
        self.key = key


class StorageUnavailable(MediaError):
    """The backend kept failing with transient faults until the retries ran out; try again later."""


@dataclasses.dataclass(frozen=True)
class StoredObject:
    backend: str  # "local" or "s3", as recorded in media.backend
    key: str
    size: int
    sha256: str  # hex


class Reader:
    """The bytes of one object as chunks; ``close`` releases the file or connection behind them
    (a WSGI server calls it when the response ends, also when the client went away)."""

    def __init__(self, chunks: Iterable[bytes], close: Callable[[], None]) -> None:
        self._chunks = chunks
        self._close = close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._chunks)

    def read_all(self) -> bytes:
        try:
            return b"".join(self._chunks)
        finally:
            self.close()

    def close(self) -> None:
        self._close()


class Backend(Protocol):
    name: str
    max_bytes: int

    def put(self, tenant_id: str, data: Data, mime_type: str, filename: str = "") -> StoredObject: ...

    def open(self, key: str) -> Reader: ...

    def get(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None: ...


def new_key(tenant_id: str, now: datetime.datetime | None = None) -> str:
    """``<tenant>/<yyyy>/<mm>/<uuid>``: grouped by tenant and month so a tenant's media can be listed,
    exported or removed by prefix; the last part is random, so a key reveals nothing and never clashes."""
    now = now or datetime.datetime.now(datetime.UTC)
    return f"{uuid.UUID(str(tenant_id))}/{now:%Y}/{now:%m}/{uuid.uuid4().hex}"


def check_key(key: str) -> str:
    """Keys come from our own rows, but one that is not of our own making is refused before it can
    name a path or another bucket prefix."""
    if not isinstance(key, str) or not KEY.match(key):
        raise ValueError(f"not a media key: {key!r}")
    return key


def limited_chunks(data: Data, max_bytes: int) -> Iterator[bytes]:
    """The data as chunks; raises MediaTooLarge as soon as more than ``max_bytes`` have been read
    (a stream is never read further than that) and EmptyMedia at the end if there were none."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) > max_bytes:
            raise MediaTooLarge(max_bytes)
        if not len(data):
            raise EmptyMedia()
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            yield bytes(view[start : start + CHUNK])
        return
    total = 0
    while True:
        chunk = data.read(min(CHUNK, max_bytes + 1 - total))
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise MediaTooLarge(max_bytes)
        yield chunk
    if total == 0:
        raise EmptyMedia()


class LocalStore:
    """Objects as files under ``root`` (``DATA_DIR/media``). A put writes a temp file in
    ``root/.partial`` (same file system), fsyncs it and renames it into place, so an object either
    exists whole under its key or not at all. Disk I/O blocks the gevent hub while it runs; for
    objects of a few MiB on a local disk that is milliseconds."""

    name = "local"

    def __init__(self, root: str | os.PathLike[str], max_bytes: int) -> None:
        self.root = Path(root).resolve()
        self.max_bytes = max_bytes
        self.partial = self.root / ".partial"
        self.partial.mkdir(parents=True, exist_ok=True)
        self._remove_stale_partials()

    def put(self, tenant_id: str, data: Data, mime_type: str, filename: str = "") -> StoredObject:
        key = new_key(tenant_id)
        final = self._path(key)
        temp = self.partial / f"{uuid.uuid4().hex}.tmp"
        digest = hashlib.sha256()
        size = 0
        try:
            with open(temp, "xb") as out:
                for chunk in limited_chunks(data, self.max_bytes):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)  # the rename itself survives a power loss only once its directory is synced
        return StoredObject(self.name, key, size, digest.hexdigest())

    def open(self, key: str) -> Reader:
        try:
            handle = open(self._path(key), "rb")  # noqa: SIM115 - the Reader closes it
        except FileNotFoundError:
            raise ObjectMissing(self.name, key) from None
        return Reader(iter(lambda: handle.read(CHUNK), b""), handle.close)

    def get(self, key: str) -> bytes:
        return self.open(key).read_all()

    def delete(self, key: str) -> None:
        """Remove the object; removing one that is already gone is not an error."""
        self._path(key).unlink(missing_ok=True)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def _remove_stale_partials(self) -> None:
        cutoff = time.time() - STALE_PARTIAL
        for entry in os.scandir(self.partial):
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
            except FileNotFoundError:
                pass  # another process removed it first


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MediaStore:
    """The store the rest of the platform uses: ``put`` goes to the configured backend, and ``open``,
    ``get`` and ``delete`` go to the backend a media row names."""

    def __init__(self, primary: Backend, *others: Backend) -> None:
        self.primary = primary
        self.backends: dict[str, Backend] = {b.name: b for b in (*others, primary)}

    @property
    def max_bytes(self) -> int:
        return self.primary.max_bytes

    def put(self, tenant_id: str, data: Data, mime_type: str, filename: str = "") -> StoredObject:
        """Keep the bytes (bytes or a binary file-like object read to its end); returns where and what.

        Raises MediaTooLarge over MEDIA_MAX_BYTES, EmptyMedia for no bytes, StorageUnavailable when
        the backend stayed unreachable through the retries."""
        return self.primary.put(tenant_id, data, mime_type, filename)

    def open(self, backend: str, key: str) -> Reader:
        """The object's bytes as a stream of chunks (close it when done). Raises ObjectMissing."""
        return self._backend(backend).open(key)

    def get(self, backend: str, key: str) -> bytes:
        """The object's bytes in memory. Raises ObjectMissing."""
        return self._backend(backend).get(key)

    def delete(self, backend: str, key: str) -> None:
        self._backend(backend).delete(key)

    def _backend(self, name: str) -> Backend:
        try:
            return self.backends[name]
        except KeyError:
            raise MediaError(f"media backend {name!r} is not configured in this process") from None


def store_from_settings(settings: Any, **s3_options: Any) -> MediaStore:
    """S3 when ``MEDIA_S3_ENDPOINT`` is set (local disk stays readable for objects kept before), else
    local disk under ``DATA_DIR/media``. ``s3_options`` tune the S3 retries (tests shorten them)."""
    local = LocalStore(Path(settings.data_dir) / "media", settings.media_max_bytes)
    if not settings.media_s3_endpoint:
        return MediaStore(local)
    if not settings.media_s3_bucket:
        raise ConfigError("MEDIA_S3_BUCKET is required when MEDIA_S3_ENDPOINT is set")
    from media.s3 import S3Store

    s3 = S3Store(
        endpoint=settings.media_s3_endpoint,
        bucket=settings.media_s3_bucket,
        access_key_id=settings.media_s3_access_key_id,
        secret_access_key=settings.media_s3_secret_access_key,
        region=settings.media_s3_region,
        max_bytes=settings.media_max_bytes,
        **s3_options,
    )
    return MediaStore(s3, local)
