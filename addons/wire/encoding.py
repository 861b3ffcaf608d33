"""Request bodies in a Content-Encoding, decoded with a cap.

mitmproxy's `get_content()` decodes whole: 40 KB of gzip becomes 40 MiB of JSON
(or far more) on the event loop. Here every decoder stops one byte past the
limit. Codex sends zstd request bodies on ChatGPT plans, so they are decoded,
not refused; an encoding aigw cannot decode is 415.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import brotli

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd


@dataclass
class BodyError(Exception):
    """Why an encoded request body cannot be read: the status and message to answer with."""

    status: int
    message: str
    error_type: str


def _zlib(wbits: int) -> Callable[[bytes, int], tuple[bytes, bool]]:
    def decode(raw: bytes, cap: int) -> tuple[bytes, bool]:
        decoder = zlib.decompressobj(wbits)
        return decoder.decompress(raw, cap), decoder.eof

    return decode


def _brotli(raw: bytes, cap: int) -> tuple[bytes, bool]:
    decoder = brotli.Decompressor()
    return decoder.process(raw, output_buffer_limit=cap), decoder.is_finished()


def _zstd(raw: bytes, cap: int) -> tuple[bytes, bool]:
    decoder = zstd.ZstdDecompressor()
    return decoder.decompress(raw, max_length=cap), decoder.eof


_DECODERS: dict[str, tuple[Callable[[bytes, int], tuple[bytes, bool]], ...]] = {
    "gzip": (_zlib(16 + zlib.MAX_WBITS),),
    "x-gzip": (_zlib(16 + zlib.MAX_WBITS),),
    "deflate": (_zlib(zlib.MAX_WBITS), _zlib(-zlib.MAX_WBITS)),  # zlib-wrapped, or raw as some clients send
    "br": (_brotli,),
    "zstd": (_zstd,),
}


def decode_body(raw: bytes, content_encoding: str, limit: int) -> bytes:
    """`raw` decoded per its Content-Encoding, at most `limit` bytes; BodyError (413/415/400) otherwise."""
    coding = content_encoding.strip().lower()
    if coding in ("", "identity"):
        return raw
    decoders = _DECODERS.get(coding)
    if decoders is None:
        raise BodyError(415, f"unsupported request Content-Encoding {coding[:32]!r} "
                             "(gzip, deflate, br, zstd or none)", "invalid_request_error")
    for decode in decoders:
        try:
            out, finished = decode(raw, limit + 1)
        except (zlib.error, brotli.error, zstd.ZstdError):
            continue
        if len(out) > limit:
            raise BodyError(413, f"decoded request body exceeds the gateway's limit of {limit} bytes",
                            "request_too_large")
        if finished:
            return out
    raise BodyError(400, f"request body is not valid {coding}", "invalid_request_error")


__all__ = ["BodyError", "decode_body"]
