"""File objects of ``flowlake://`` URLs: verified streams for reading, spooled uploads for writing.

The store reads an object as one forward-only stream, verified against its content hash when the
stream ends, and writes one from a stream. fsspec's buffered file wants byte ranges and chunked
uploads, so:

* reading serves ranges from the stream while they follow each other (the common case: ``cat``,
  ``get``, CSV and JSON readers); the first range behind or ahead of the stream copies the object
  once into a local temporary file (verified as it streams) and serves every later range from it.
  Parquet readers, which start at the footer, so read the object exactly once.
* writing keeps up to one block in memory, spills to a local temporary file beyond it, and hands
  the whole file to the store as one streamed write when the file is closed. A multi-GB write
  never sits in memory; it sits on local disk until ``close``.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from typing import IO, Any, BinaryIO

from fsspec.spec import AbstractBufferedFile

from store.errors import ObjectChangedError
from store.model import ObjectInfo

#: Bytes moved per read from the store's stream.
CHUNK = 4 << 20
#: Writes up to this size stay in memory; larger ones spill to a local temporary file.
BLOCK = 8 << 20


class _RangeReader:
    """Byte ranges of one object, from a forward-only stream opened by ``opener``."""

    def __init__(self, opener: Callable[[], BinaryIO], size: int, name: str) -> None:
        self._opener, self._size, self._name = opener, size, name
        self._stream: BinaryIO | None = None
        self._position = 0  # next byte the stream gives
        self._spool: IO[bytes] | None = None

    def read(self, start: int, end: int) -> bytes:
        end = min(end, self._size)
        if start >= end:
            return b""
        if self._spool is None and start == self._position:
            return self._from_stream(end - start)
        return self._from_spool(start, end)

    def _open(self) -> BinaryIO:
        if self._stream is None:
            self._stream = self._opener()
        return self._stream

    def _next(self, n: int) -> bytes:
        stream = self._open()
        parts, want = [], n
        while want:
            chunk = stream.read(min(want, CHUNK))
            if not chunk:
                raise ObjectChangedError(
                    f"{self._name} ended after {self._position} of {self._size} bytes: it was "
                    "replaced while being read; read it again"
                )
            parts.append(chunk)
            want -= len(chunk)
            self._position += len(chunk)
        if self._position == self._size:
            self._finish(stream)
        return b"".join(parts)

    def _finish(self, stream: BinaryIO) -> None:
        # The stream verifies the content hash on the read that reaches its end.
        if stream.read(1):
            raise ObjectChangedError(
                f"{self._name} holds more than {self._size} bytes: it was replaced while being "
                "read; read it again"
            )
        self._close_stream()

    def _from_stream(self, n: int) -> bytes:
        return self._next(n)

    def _from_spool(self, start: int, end: int) -> bytes:
        if self._spool is None:
            self._close_stream()
            self._position = 0
            self._spool = tempfile.TemporaryFile(prefix="flowlake-read-")  # noqa: SIM115 - closed by close()
        spool = self._spool
        if self._position < end:
            spool.seek(self._position)
            while self._position < end:
                spool.write(self._next(min(CHUNK, self._size - self._position)))
        spool.seek(start)
        return spool.read(end - start)

    def _close_stream(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.close()

    def close(self) -> None:
        self._close_stream()
        if self._spool is not None:
            spool, self._spool = self._spool, None
            spool.close()


class FlowlakeFile(AbstractBufferedFile):  # type: ignore[misc]
    """An open ``flowlake://`` object: read mode ``rb``, write modes ``wb`` and ``xb``.

    Build it with :meth:`FlowlakeFileSystem.open`. A file written inside
    ``fs.transaction`` goes to the transaction's branch when it is closed; one written outside a
    transaction is staged on its branch, uncommitted, when it is closed.
    """

    def __init__(
        self,
        fs: Any,
        path: str,
        mode: str,
        *,
        info: ObjectInfo | None = None,
        details: dict[str, Any] | None = None,
        opener: Callable[[], BinaryIO] | None = None,
        writer: Callable[[BinaryIO], ObjectInfo] | None = None,
        block_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        self._reader: _RangeReader | None = None
        self._writer = writer
        self._spill: IO[bytes] | None = None
        if mode == "rb":
            assert info is not None and opener is not None
            self._reader = _RangeReader(opener, info.size, f"flowlake://{path}")
            super().__init__(fs, path, mode, block_size or BLOCK, size=info.size, **kwargs)
            self._details = details
        else:
            super().__init__(fs, path, mode, block_size or BLOCK, **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        assert self._reader is not None
        return self._reader.read(start, end)

    def _upload_chunk(self, final: bool = False) -> bool:
        if not final:
            if self._spill is None:
                self._spill = tempfile.TemporaryFile(prefix="flowlake-write-")  # noqa: SIM115 - closed on upload
            self._spill.write(self.buffer.getbuffer())
            return True
        assert self._writer is not None
        if self._spill is None:
            # Small enough to have stayed in memory: no temporary file.
            self.buffer.seek(0)
            self._writer(self.buffer)
            return True
        self._spill.write(self.buffer.getbuffer())
        self._spill.seek(0)
        try:
            self._writer(self._spill)  # type: ignore[arg-type]
        finally:
            self._drop_spill()
        return True

    def _drop_spill(self) -> None:
        if self._spill is not None:
            spill, self._spill = self._spill, None
            spill.close()

    def discard(self) -> None:
        """Drop what was written without storing it (a failed transaction)."""
        self._drop_spill()
        self.buffer = io.BytesIO()
        self.closed = True

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # A with-block that fails half-way must not store half a file.
        if exc_type is not None and self.mode != "rb" and not self.closed:
            self.discard()
        self.close()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._reader is not None:
                self._reader.close()
            self._drop_spill()
