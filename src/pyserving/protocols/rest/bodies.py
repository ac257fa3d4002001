"""REST request bodies: inflated within the limits, parsed off the event loop when big; shared by
TF Serving's routes and the Open Inference Protocol's."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

from aiohttp import web

from pyserving.codecs import json_codec
from pyserving.errors import ServingError
from pyserving.serving.inline import SMALL_REQUEST_BYTES

# TF Serving's cap on an inflated request body (net_http); pyserving's --rest_api_max_decompressed_bytes.
DEFAULT_MAX_DECOMPRESSED_BYTES = 100 << 20
# A compressed body up to this size is inflated on the event loop (at most a few MB, < 1 ms of
# work); a larger one in a thread, as its inflation can take seconds.
INLINE_INFLATE_BYTES = 8 * 1024
INFLATE_CHUNK_BYTES = 1 << 20  # inflated at a time


class BodyTooLarge(Exception):
    """A request body over one of the limits (413), with the flag that sets it."""

    def __init__(self, limit: int, flag: str = "rest_api_max_request_bytes",
                 what: str = "Request body is larger than") -> None:
        super().__init__(f"{what} the limit of {limit} bytes (--{flag})")
        self.message = str(self)


def body_too_large(limit: int) -> web.Response:
    return web.json_response({"error": BodyTooLarge(limit).message}, status=413)


async def parse_json(raw: bytes) -> Any:
    """A request body's JSON: big bodies parsed off the event loop, small ones (cheaper) inline."""
    if len(raw) <= SMALL_REQUEST_BYTES:
        return json_codec.parse_json(raw)
    return await asyncio.to_thread(json_codec.parse_json, raw)


def decompress(raw: bytes, encoding: str, limit: int, flag: str = "rest_api_max_decompressed_bytes") -> bytes:
    """The body inflated, never past ``limit`` bytes: a small bomb is refused (413) once it has
    produced the limit, not after it has filled memory."""
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity":
        return raw
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise ServingError.invalid_argument(f"Unsupported Content-Encoding: {encoding}")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS)
    # In pieces: zlib's own max_length run joins its output blocks into one bytes, a copy of up
    # to the limit made holding the GIL (with its page faults: ~0.25 s per 100 MB here), which a
    # bomb refused at the limit never needs and which stalled the event loop for seconds.
    chunks: list[bytes] = []
    size, pending = 0, raw
    try:
        while not inflater.eof and size <= limit:
            chunk = inflater.decompress(pending, min(INFLATE_CHUNK_BYTES, limit + 1 - size))
            pending = inflater.unconsumed_tail
            if not chunk and not pending:
                break  # all of it in and nothing more out: the stream ends early
            chunks.append(chunk)
            size += len(chunk)
    except zlib.error as e:
        raise ServingError.invalid_argument(f"Request body is not valid {encoding}: {e}") from None
    if size > limit:
        chunks.clear()  # a traceback must not keep the inflated bytes alive until the next GC
        raise BodyTooLarge(limit, flag, "Request body inflates to more than")
    if not inflater.eof:
        raise ServingError.invalid_argument(f"Request body is not valid {encoding}: it ends early")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


__all__ = ["DEFAULT_MAX_DECOMPRESSED_BYTES", "INLINE_INFLATE_BYTES", "BodyTooLarge", "body_too_large",
           "decompress", "parse_json"]
