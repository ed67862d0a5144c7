"""Streaming object bytes to and from lakeFS over its REST API.

The generated SDK reads whole bodies into memory (``upload_object`` takes ``bytes``,
``get_object`` returns a ``bytearray``), so uploads and downloads go through the SDK's own
connection pool and credentials but with streaming bodies: an upload sends the source in
chunks (with ``Content-Length`` when the size is known, chunked transfer encoding otherwise), a
download hands back the open response wrapped in a reader that checks lakeFS's MD5 checksum
(for objects flowlake wrote, see :data:`CONTENT_TYPE`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import urllib.parse
from collections.abc import Iterator
from typing import Any, BinaryIO

import urllib3

from store.backends.lakefs.errors import boundary, check_response, from_status, message_of
from store.errors import BranchNotFoundError, CorruptObjectError, ObjectNotFoundError

CHUNK = 1024 * 1024
#: Content type of objects flowlake uploads. lakeFS's checksum of an API upload is the MD5 of
#: the bytes, but objects written through the S3 gateway in several parts carry a multipart ETag
#: that looks the same; lakeFS returns the content type on every read, so it marks the objects
#: whose checksum can be verified, at no extra request.
CONTENT_TYPE = "application/octet-stream; flowlake-checksum=md5"
_AUTH = ["basic_auth", "jwt_token", "cookie_auth"]
_MD5 = re.compile(r"^[0-9a-f]{32}$")


def _known_size(source: BinaryIO) -> int | None:
    """Bytes left in ``source`` if it is a regular file, else None."""
    try:
        st = os.fstat(source.fileno())
        position = source.tell()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return max(st.st_size - position, 0)


def _chunks(source: BinaryIO) -> Iterator[bytes]:
    while chunk := source.read(CHUNK):
        yield chunk


def _request(
    api_client: Any, method: str, resource: str, query: dict[str, str], **kwargs: Any
) -> urllib3.BaseHTTPResponse:
    headers: dict[str, str] = kwargs.pop("headers", {})
    api_client.update_params_for_auth(headers, None, _AUTH, resource, method, None)
    host = api_client.configuration.host.rstrip("/")
    url = host + urllib.parse.quote(resource) + "?" + urllib.parse.urlencode(query)
    pool = api_client.rest_client.pool_manager
    response: urllib3.BaseHTTPResponse = pool.request(method, url, headers=headers, **kwargs)
    return response


def upload(api_client: Any, repository: str, branch: str, path: str, source: BinaryIO) -> Any:
    """Stage ``source`` at ``path`` on ``branch``; returns lakeFS's object stats as a dict.

    Raises:
        BranchNotFoundError, ProtectedBranchError, BackendUnavailableError.
    """
    headers = {"Content-Type": CONTENT_TYPE, "Accept": "application/json"}
    size = _known_size(source)
    body: Any
    if size is None:
        body, chunked = _chunks(source), True
    else:
        headers["Content-Length"] = str(size)
        body, chunked = _FileBody(source, size), False
    resource = f"/repositories/{repository}/branches/{branch}/objects"
    with boundary(BranchNotFoundError):
        resp = _request(
            api_client,
            "POST",
            resource,
            {"path": path},
            headers=headers,
            body=body,
            chunked=chunked,
        )
    check_response(resp, BranchNotFoundError)
    return json.loads(resp.data)


class _FileBody:
    """A file-like body that yields exactly ``size`` bytes in :data:`CHUNK` reads."""

    def __init__(self, source: BinaryIO, size: int) -> None:
        self._source, self._left = source, size

    def read(self, n: int = -1) -> bytes:
        want = self._left if n is None or n < 0 else min(n, self._left)
        data = self._source.read(min(want, CHUNK)) if want else b""
        self._left -= len(data)
        return data


def download(api_client: Any, repository: str, ref: str, path: str, verify: bool) -> BinaryIO:
    """An open stream of the object's bytes; checked against lakeFS's MD5 when ``verify``.

    Raises:
        ObjectNotFoundError: no such object or ref.
        CorruptObjectError: (on the read that reaches the end) bytes do not match the checksum.
    """
    resource = f"/repositories/{repository}/refs/{ref}/objects"
    with boundary(ObjectNotFoundError):
        resp = _request(
            api_client,
            "GET",
            resource,
            {"path": path},
            preload_content=False,
            headers={"Accept": "application/octet-stream"},
        )
    if resp.status >= 300:
        body = resp.read()
        resp.release_conn()
        raise from_status(resp.status, message_of(body), ObjectNotFoundError)
    etag = (resp.headers.get("ETag") or "").strip('"')
    ours = resp.headers.get("Content-Type") == CONTENT_TYPE
    expected = etag if verify and ours and _MD5.match(etag) else None
    return io.BufferedReader(_ResponseReader(resp, expected, f"{ref}:{path}"), CHUNK)


class _ResponseReader(io.RawIOBase):
    """Raw reader over an HTTP response that checks the MD5 of all bytes at end of stream."""

    def __init__(self, resp: urllib3.BaseHTTPResponse, md5: str | None, name: str) -> None:
        super().__init__()
        self._resp, self._expected, self._name = resp, md5, name
        self._hash = hashlib.md5(usedforsecurity=False) if md5 else None
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._next(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def readall(self) -> bytes:
        # ``read()`` and ``read_bytes`` end here. io.RawIOBase.readall would read 8 KiB at a
        # time (thousands of calls and copies for a large object); the caller wants the whole
        # body in memory anyway, so it is read in one call, like the SDK's own get_object.
        data = self._next(None)
        self._next(CHUNK)  # end of stream: verifies the checksum
        return data

    def _next(self, size: int | None) -> bytes:
        """Up to ``size`` bytes of the body, all that is left when None (b"" at its end, once
        the checksum is verified)."""
        with boundary(ObjectNotFoundError):
            data: bytes = self._resp.read(size)
        self._eof = self._eof or not data
        if self._hash is not None:
            if data:
                self._hash.update(data)
            elif self._hash.hexdigest() != self._expected:
                self._hash = None
                raise CorruptObjectError(
                    f"{self._name}: bytes read do not match lakeFS checksum {self._expected}"
                )
            else:
                self._hash = None
        return data

    def close(self) -> None:
        if not self.closed:
            # A half-read response cannot go back to the pool: its socket still holds body bytes.
            if self._eof:
                self._resp.release_conn()
            else:
                self._resp.close()
        super().close()
