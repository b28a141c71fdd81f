"""Pure checks for the two names a media object carries that come from outside: its MIME type and its
file name. Both end up in response headers (Content-Type, Content-Disposition), so both are reduced
here to forms that cannot break or inject a header, and a file name never names a path.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

DEFAULT_MIME = "application/octet-stream"
MIME_MAX = 255
FILENAME_MAX = 255

# type "/" subtype, RFC 6838 token characters, optionally followed by parameters (charset=...).
_MIME = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
    r"(\s*;\s*[A-Za-z0-9!#$&^_.+-]+=(\"[^\"\\]*\"|[A-Za-z0-9!#$&^_.+-]+))*$"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ASCII_UNSAFE = re.compile(r"[^A-Za-z0-9._ ()+-]")


def clean_mime(value: str | None) -> str | None:
    """The MIME type as stored (type/subtype lower-cased, parameters kept), or None if it is not one."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > MIME_MAX or not _MIME.match(value):
        return None
    essence, sep, params = value.partition(";")
    return essence.strip().lower() + (sep + params if sep else "")


def clean_filename(value: str | None) -> str:
    """A display name only: the last path component, without control characters, at most 255
    characters; '' when nothing is left. It never becomes a path on disk or a storage key."""
    if not value:
        return ""
    value = unicodedata.normalize("NFC", value)
    value = re.split(r"[/\\]", value)[-1]
    value = _CONTROL.sub("", value).strip().strip(".")
    return value[:FILENAME_MAX]


def content_disposition(filename: str, fallback: str) -> str:
    """``inline`` with an ASCII ``filename`` every client understands, plus RFC 5987 ``filename*``
    carrying the real (UTF-8) name when it is not plain ASCII."""
    name = clean_filename(filename) or fallback
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    ascii_name = _ASCII_UNSAFE.sub("_", ascii_name).strip() or fallback
    header = f'inline; filename="{ascii_name}"'
    if ascii_name != name:
        header += "; filename*=UTF-8''" + quote(name, safe="")
    return header
