"""multipart/form-data request bodies (RFC 7578), read as TorchServe's handlers read them.

TorchServe accepts a form upload (`curl -F data=@kitten.jpg`, `requests.post(files=...)`) and
hands its handler each field by name; its handlers take the field `data`, else `body`. The
TorchServe front does the same here, so the gateway forwards the one file the pool would have
read: the `data` field, else the `body` field, else the form's only field. A form that leaves
the choice open (no field, two `data` files, two fields of other names) is a 400, never a guess.
Parsing is strict and bounded: the body was already read within the model's size limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import bad_request

FIELDS_READ = ("data", "body")  # the fields TorchServe's handlers read, in their order
MAX_PARTS = 16
# A part that does not say what it holds: no type, RFC 7578's default for fields, and the
# default curl and browsers give files. The model's profile then decides, as for a raw body.
UNTYPED = frozenset({"", "text/plain", "application/octet-stream"})
BOUNDARY = re.compile(r"""(?:^|;)\s*boundary=(?:"([^"]{1,70})"|([^;\s"]{1,70}))""", re.IGNORECASE)
PARAMETER = r"""(?:^|;)\s*{name}=(?:"([^"]*)"|([^;\s"]*))"""
FIELD_NAME = re.compile(PARAMETER.format(name="name"), re.IGNORECASE)
FILE_NAME = re.compile(PARAMETER.format(name="filename"), re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Part:
    name: str | None
    content_type: str  # lower case, without parameters; "" when the part has none
    body: bytes
    filename: str | None = None


@dataclass(frozen=True, slots=True)
class Form:
    """A request announced as multipart/form-data, with its boundary (checked before the body is read)."""

    boundary: bytes

    @classmethod
    def from_content_type(cls, header: str) -> Form:
        match = BOUNDARY.search(header.split(";", 1)[1] if ";" in header else "")
        if match is None:
            raise bad_request("multipart/form-data without a boundary parameter in Content-Type")
        return cls((match.group(1) or match.group(2)).encode("latin-1"))

    def field(self, body: bytes) -> Part:
        """The one field the pool's handler would read (see the module's docstring)."""
        parts = parse(body, self.boundary)
        for name in FIELDS_READ:
            named = [part for part in parts if part.name == name]
            if len(named) > 1:
                raise bad_request(f"the form has {len(named)} {name!r} fields; send one")
            if named:
                return named[0]
        if len(parts) != 1:
            names = ", ".join(repr(part.name) for part in parts)
            raise bad_request(f"the form has {len(parts)} fields ({names}); send one, or name it 'data'")
        return parts[0]


def parse(body: bytes, boundary: bytes) -> list[Part]:
    """Every part of a multipart body; a 400 naming what is wrong when it is malformed."""
    delimiter = b"--" + boundary
    if body.startswith(delimiter):
        at = len(delimiter)
    else:  # a preamble before the first delimiter is allowed, and ignored
        found = body.find(b"\r\n" + delimiter)
        if found < 0:
            raise bad_request("the multipart body has no part (its boundary never appears)")
        at = found + 2 + len(delimiter)
    parts: list[Part] = []
    while True:
        if body.startswith(b"--", at):  # the close delimiter
            break
        line_end = body.find(b"\r\n", at)
        if line_end < 0 or body[at:line_end].strip(b" \t"):
            raise bad_request("the multipart body is malformed after a boundary")
        start = line_end + 2
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise bad_request("the multipart body ends before its closing boundary")
        if len(parts) == MAX_PARTS:
            raise bad_request(f"a form may carry at most {MAX_PARTS} fields")
        parts.append(_part(body[start:end]))
        at = end + 2 + len(delimiter)
    if not parts:
        raise bad_request("the multipart body has no part")
    return parts


def _part(raw: bytes) -> Part:
    if raw.startswith(b"\r\n"):  # no headers
        head, content = b"", raw[2:]
    else:
        head, separator, content = raw.partition(b"\r\n\r\n")
        if not separator:
            raise bad_request("a multipart part has no blank line after its headers")
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon:
            raise bad_request("a multipart part has a malformed header line")
        headers[name.strip().lower()] = value.strip()
    disposition = headers.get("content-disposition", "")
    if disposition.split(";")[0].strip().lower() != "form-data":
        raise bad_request("each multipart part needs Content-Disposition: form-data")
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    return Part(_parameter(FIELD_NAME, disposition), content_type, content, _parameter(FILE_NAME, disposition))


def _parameter(pattern: re.Pattern, disposition: str) -> str | None:
    match = pattern.search(disposition.split(";", 1)[1] if ";" in disposition else "")
    return None if match is None else (match.group(1) if match.group(1) is not None else match.group(2))
