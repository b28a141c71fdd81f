"""Media over the API: ``POST /api/v1/media`` keeps an upload as the tenant's and returns its id (for
outgoing messages to reference), ``GET /api/v1/media/<id>`` streams the bytes back.

The upload route alone may carry a body up to ``MEDIA_MAX_BYTES`` (web.app raises its body limit);
the store enforces the exact limit while it reads, so a body without a trustworthy length is never
kept past it. Downloads are served as inert content: whatever MIME type an uploader claimed, a
browser must not sniff it into something else or run it as a page on the API's origin.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, current_app, g, jsonify, request

import media
from db import media as media_db
from db import quotas as quotas_db
from media import names
from sansio import quotas as q
from web import audit
from web import validation as v
from web.api import api_blueprint, error_responses, operation
from web.auth import system
from web.errors import ApiError, bad_request, not_found
from web.schemas.streams import Media, MediaPath, MediaQuery

log = logging.getLogger(__name__)
blueprint = api_blueprint("media", __name__, "Media", "Images, audio, video and documents kept for the tenant.")


def media_store() -> media.MediaStore:
    """The process's store: the root's ``media_store`` when the process made one (shared with the
    pipeline), else one made from settings once per app."""
    root = system()
    store = root.media_store
    if store is None:
        store = current_app.extensions.get("wabot.media_store")
        if store is None:
            store = current_app.extensions["wabot.media_store"] = media.store_from_settings(root.settings)
    return store


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"media over the limit of {limit} bytes")


def check_room(size: int) -> None:
    """Refuse an upload whose length is known up front when it cannot fit under the tenant's media
    quota, before any of it is stored. Only a shortcut: the check that counts is made again, under the
    quota row's lock, in the transaction that records the object (``db.media.record``)."""
    limit, used = quotas_db.media_room(system().pool, g.tenant_id)
    message = q.refusal(q.MEDIA_BYTES, limit, used, size)
    if message is not None:
        assert limit is not None  # a refusal needs a limit
        raise quotas_db.QuotaExceeded(q.MEDIA_BYTES, limit, used, message)


def mime_of(value: str | None, field: str) -> str:
    # curl --data-binary sends form-urlencoded unless told otherwise: never a media type anyone meant.
    if not value or value.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        return names.DEFAULT_MIME
    mime = names.clean_mime(value)
    if mime is None:
        raise bad_request(field, "must be a MIME type like image/jpeg")
    return mime


def _upload() -> tuple[Any, str, str]:
    """(data, mime type, file name) from a multipart ``file`` part or a raw body."""
    store = media_store()
    if request.mimetype == "multipart/form-data":
        part = request.files.get("file")
        if part is None:
            raise bad_request("file", "is required: send the file as a multipart part named 'file'")
        filename = request.form.get("filename") or request.args.get("filename") or part.filename or ""
        return part.stream, mime_of(part.content_type, "file"), names.clean_filename(filename)
    # A raw body: its Content-Length (chunked ones get one in web.app) says up front whether it fits.
    if (request.content_length or 0) > store.max_bytes:
        raise _too_large(store.max_bytes)
    if request.content_length:
        check_room(request.content_length)
    filename = names.clean_filename(request.args.get("filename"))
    return request.stream, mime_of(request.content_type, "Content-Type"), filename


@operation(blueprint, "post", "/media", scope="send", raw_body=True, operation_id="uploadMedia",
           summary="Keep a file as the tenant's (for outgoing messages to reference)",
           description="The body is the file (`Content-Type` its MIME type, optional `?filename=`), or"
                       " `multipart/form-data` with a part named `file`. Limit: MEDIA_MAX_BYTES (413)."
                       " An upload that would take the tenant's media past its storage quota is refused"
                       " with 403 `quota_exceeded` and nothing is kept.",
           responses={201: Media, **error_responses(400, 413, 503)})
def upload_media(query: MediaQuery) -> Any:
    data, mime_type, filename = _upload()
    store = media_store()
    try:
        media_id, stored = media.save(system().pool, store, g.tenant_id, None, data, mime_type, filename,
                                      check_quota=True)
    except media.MediaTooLarge as exc:
        raise _too_large(exc.limit) from None
    except media.EmptyMedia:
        raise bad_request("file", "must not be empty") from None
    except media.StorageUnavailable as exc:
        log.warning("media storage unavailable", extra={"error": str(exc)})
        raise ApiError(503, "storage_unavailable", "media storage is unavailable; try again later") from None
    audit.note("media.upload", "media", media_id,
               after={"mime_type": mime_type, "size_bytes": stored.size, "filename": filename})
    response = jsonify(
        {"id": media_id, "mime_type": mime_type, "size_bytes": stored.size, "sha256": stored.sha256,
         "filename": filename}
    )
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/media/{media_id}"
    return response


@operation(blueprint, "get", "/media/<media_id>", scope="read", operation_id="getMedia",
           summary="A media object's bytes", description="Served as inert content: `X-Content-Type-Options: nosniff`,"
           " `Content-Security-Policy: default-src 'none'; sandbox`.",
           responses={200: {"description": "the bytes, with the MIME type recorded at upload"},
                      **error_responses(404, 503)})
def get_media(path: MediaPath) -> Any:
    return media_response(system().pool, g.tenant_id, v.uuid_arg(path.media_id, "media"))


def media_response(pool: Any, tenant_id: str, media_id: str) -> Any:
    """The object's bytes, streamed, as inert content (never sniffed, never run as a page); ApiError
    404 when the tenant has no such media, 503 when the store is away."""
    row = media_db.get(pool, tenant_id, media_id)
    if row is None:
        raise not_found("media")
    try:
        reader = media_store().open(row["backend"], row["object_key"])
    except media.ObjectMissing:
        # The row outlived its object: storage lost it or it was removed behind our back.
        log.error("media row without its object", extra={"media_id": media_id, "backend": row["backend"]})
        raise not_found("media") from None
    except media.StorageUnavailable as exc:
        log.warning("media storage unavailable", extra={"error": str(exc)})
        raise ApiError(503, "storage_unavailable", "media storage is unavailable; try again later") from None
    response = Response(reader, mimetype=None, content_type=row["mime_type"], direct_passthrough=True)
    response.headers["Content-Length"] = str(row["size_bytes"])
    response.headers["Content-Disposition"] = names.content_disposition(row["filename"], f"media-{media_id}")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response.headers["Cache-Control"] = "private, max-age=3600"
    response.headers["ETag"] = f'"{row["sha256"]}"'
    return response
