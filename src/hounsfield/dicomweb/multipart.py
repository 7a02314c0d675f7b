"""multipart/related bodies (RFC 2387) as DICOMweb uses them (PS3.18 §8.6.1.2, §8.7).

:func:`parse_related` splits a STOW-RS request body; :func:`related_stream` writes a WADO-RS
response part by part, so a large study is streamed and never held in memory whole.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from hounsfield.errors import InvalidInput

MAX_PART_HEADER = 16 * 1024


@dataclass
class Part:
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; a=b; c="d"`` -> (``type/subtype`` lower-cased, {a: b, c: d})."""
    head, *rest = split_unquoted(value, ";")
    params: dict[str, str] = {}
    for item in rest:
        name, sep, val = item.partition("=")
        if not sep:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1]
        params[name.strip().lower()] = val
    return head.strip().lower(), params


def split_unquoted(value: str, sep: str) -> list[str]:
    """Split a header value on ``sep`` outside double-quoted strings (RFC 9110 §5.6)."""
    out, cur, quoted = [], [], False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def parse_related(body: bytes, content_type: str) -> tuple[str, list[Part]]:
    """Split a multipart/related body.  Returns (the ``type`` parameter, the parts).

    Raises :class:`InvalidInput` naming what is wrong: not multipart/related, no boundary, a
    boundary that never occurs in the body, a part without a header block, no closing delimiter.
    """
    media, params = parse_media_type(content_type)
    if media != "multipart/related":
        raise InvalidInput(f"expected Content-Type multipart/related, got {media or 'none'!r}")
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 70:
        raise InvalidInput("multipart/related Content-Type needs a boundary parameter "
                           "(1-70 characters, RFC 2046)")
    delim = b"--" + boundary.encode("latin-1", "replace")
    pos = body.find(delim)
    if pos < 0:
        raise InvalidInput(f"the body does not contain the boundary {boundary!r} given in "
                           "Content-Type (wrong boundary?)")
    if pos != 0 and body[pos - 2:pos] != b"\r\n":
        raise InvalidInput("boundary delimiter must start a line")
    parts: list[Part] = []
    sep = b"\r\n" + delim
    while True:
        pos += len(delim)
        if body[pos:pos + 2] == b"--":
            break  # close delimiter
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            raise InvalidInput("multipart body ends after a boundary (no closing delimiter)")
        if body[pos:line_end].strip(b" \t"):
            raise InvalidInput("unexpected characters after a boundary delimiter")
        head_end = body.find(b"\r\n\r\n", line_end)
        if line_end + 2 <= len(body) and body[line_end + 2:line_end + 4] == b"\r\n":
            head_end = line_end  # a part with no header lines
        if head_end < 0 or head_end - line_end > MAX_PART_HEADER:
            raise InvalidInput(f"part {len(parts) + 1} has no header block ending in a blank line")
        headers = _headers(body[line_end + 2:head_end])
        start = head_end + 4
        nxt = body.find(sep, start)
        if nxt < 0:
            raise InvalidInput(f"part {len(parts) + 1} is not terminated by the boundary "
                               "(truncated body or missing closing delimiter)")
        parts.append(Part(headers, body[start:nxt]))
        pos = nxt + 2
    return params.get("type", ""), parts


def _headers(block: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in block.split(b"\r\n"):
        if not raw.strip():
            continue
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep:
            raise InvalidInput(f"malformed part header line: {raw[:80]!r}")
        out[name.strip().lower()] = value.strip()
    return out


def new_boundary() -> str:
    return "hounsfield-" + secrets.token_hex(12)


def related_content_type(boundary: str, part_type: str, **params: str) -> str:
    extra = "".join(f"; {k.replace('_', '-')}={v}" for k, v in params.items() if v)
    return f'multipart/related; type="{part_type}"; boundary={boundary}{extra}'


def related_stream(boundary: str, parts: Iterable[tuple[dict[str, str], bytes]]) -> Iterator[bytes]:
    """Yield a multipart/related body: one chunk per part header and body, then the close."""
    delim = b"--" + boundary.encode()
    for headers, body in parts:
        head = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
        yield delim + b"\r\n" + head + b"\r\n"
        yield body
        yield b"\r\n"
    yield delim + b"--\r\n"
