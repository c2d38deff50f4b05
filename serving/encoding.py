"""Request bodies sent with ``Content-Encoding``: decoded, or a 4xx that names the problem.

aiohttp's server decodes gzip/deflate itself, but answers a body that is not what its header says
with a 500 page (or a plain-text 400 from below the application for ``br``/``zstd`` it cannot
decode), and passes unknown codings through. The gateway turns that decoding off
(``auto_decompress=False``) and uses ``decode_body``: the two codings HTTP clients send (deflate
either zlib-wrapped, as the RFC says, or raw, as some clients send it), a size limit on the
decoded body, and a ``BodyError`` for anything else.
"""

from __future__ import annotations

import zlib


class BodyError(ValueError):
    def __init__(self, status: int, reason: str, info: str):
        super().__init__(info)
        self.status, self.reason = status, reason


GZIP_WBITS = 16 + zlib.MAX_WBITS


def decode_body(body: bytes, content_encoding: str, limit: int) -> bytes:
    """The body behind ``Content-Encoding`` (codings listed in the order applied); BodyError if not."""
    for coding in reversed([c.strip().lower() for c in content_encoding.split(",")]):
        if coding in ("", "identity"):
            continue
        if coding in ("gzip", "x-gzip"):
            wbits = GZIP_WBITS
        elif coding == "deflate":
            wbits = zlib.MAX_WBITS if body[:1] and body[0] & 0x0F == 8 else -zlib.MAX_WBITS
        else:
            raise BodyError(
                400,
                "UNSUPPORTED_CONTENT_ENCODING",
                f"Content-Encoding {content_encoding!r} is not supported: send gzip, deflate or no encoding",
            )
        decoder = zlib.decompressobj(wbits)
        try:
            decoded = decoder.decompress(body, limit + 1)
        except zlib.error as e:
            raise BodyError(
                400,
                "BAD_CONTENT_ENCODING",
                f"the body is not valid {coding} data (Content-Encoding: {coding}): {e}",
            ) from None
        if len(decoded) > limit:
            raise BodyError(413, "REQUEST_ENTITY_TOO_LARGE", f"the decoded body is larger than {limit} bytes")
        if not decoder.eof:
            raise BodyError(400, "BAD_CONTENT_ENCODING", f"the {coding} body ends early (truncated?)")
        if decoder.unused_data:
            raise BodyError(400, "BAD_CONTENT_ENCODING", f"the {coding} body has bytes after its end")
        body = decoded
    return body
