"""Where objects live and how their bytes are encoded. The one place that knows either.

An object's id is the BLAKE3 hex digest of its *content*. It is stored at
``<root>/<id[:2]>/<id[2:4]>/<id><suffix>``, where the suffix names the codec:

* ``""``     raw bytes (incompressible data such as model weights or Parquet; DuckDB and
  pyarrow can read these files in place),
* ``".zst"`` one zstd frame.

Lake format version 1 is recorded in ``flowlake.json`` at the lake root; a future layout change
bumps it and adds a decoder here.
"""

from __future__ import annotations

import threading

import blake3
import zstandard

FORMAT_VERSION = 1
RAW = ""
ZSTD = ".zst"
CODECS = (RAW, ZSTD)
ID_LENGTH = 64
#: zstd level of whole in-memory objects (ranges and metaranges). Level 1 encodes
#: a 300 kB range in 1.2 ms where level 3 takes 2.0 ms, for about 12% more bytes; every commit
#: rewrites the ranges it touches, so this is on the path of every commit. The level is not
#: part of an object's identity (its id hashes the decoded content) and any level decodes.
ZSTD_LEVEL = 1
#: Level of the trial compression that picks an object's codec.
SAMPLE_LEVEL = 1
#: Compression must save at least this fraction of a sample, or the object is stored raw.
MIN_SAVING = 0.10
PARQUET_MAGIC = b"PAR1"


def address(object_id: str, codec: str) -> str:
    """The object's path relative to the object root."""
    return f"{object_id[:2]}/{object_id[2:4]}/{object_id}{codec}"


def parse_address(addr: str) -> tuple[str, str]:
    """Split an address into (object id, codec).

    Raises:
        ValueError: the address is not one this layout writes.
    """
    name = addr.rsplit("/", 1)[-1]
    object_id, codec = (name[: -len(ZSTD)], ZSTD) if name.endswith(ZSTD) else (name, RAW)
    if len(object_id) != ID_LENGTH or addr != address(object_id, codec):
        raise ValueError(f"not an object address: {addr!r}")
    return object_id, codec


def hasher() -> blake3.blake3:
    """A fresh content hasher (multi-threaded for large updates)."""
    return blake3.blake3(max_threads=blake3.blake3.AUTO)


def content_id(data: bytes) -> str:
    """The id of a complete, in-memory content."""
    return blake3.blake3(data).hexdigest()


def choose_codec(sample: bytes) -> str:
    """Pick the codec from the first bytes of an object: raw when compression would not pay."""
    if sample.startswith(PARQUET_MAGIC) or len(sample) < 64:
        return RAW
    compressed = _codecs().sampler.compress(sample)
    return ZSTD if len(compressed) <= len(sample) * (1 - MIN_SAVING) else RAW


def encode(data: bytes, codec: str) -> bytes:
    """Encode a whole in-memory content with ``codec``."""
    if codec == ZSTD:
        return _codecs().compressor.compress(data)
    return data


def decode(blob: bytes, codec: str) -> bytes:
    """Decode a whole stored blob.

    Raises:
        zstandard.ZstdError: the blob is not a valid frame.
    """
    return DECODERS[codec](blob)


class _Codecs(threading.local):
    """This thread's zstd contexts. A context is not thread-safe, and creating one allocates
    its tables (about as long as compressing a small object), so each thread keeps its own.
    A one-shot ``compress`` resets the context: the output depends only on the input and the
    level, never on what the context compressed before."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self.sampler = zstandard.ZstdCompressor(level=SAMPLE_LEVEL)
        self.decompressor = zstandard.ZstdDecompressor()


_THREAD_CODECS = _Codecs()


def _codecs() -> _Codecs:
    return _THREAD_CODECS


def _decode_zstd(blob: bytes) -> bytes:
    return _codecs().decompressor.decompress(blob, max_output_size=1 << 31)


DECODERS = {
    RAW: lambda blob: blob,
    ZSTD: _decode_zstd,
}
