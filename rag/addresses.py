"""Address blocks: a street that was found pulls in the unit, postcode, city and country after it.

Part of redaction (step three of ``parse -> chunk -> redact``) and of the ``no_residual_pii``
check. Street detectors see one line of an address ("Kungsvägen 7"); the parts after it
("lgh 1102, 113 51 Stockholm, Sweden") are only recognisable as address parts because they
follow a street. :func:`extend_addresses` grows each street finding over the comma- or
line-separated parts that follow (and a unit just before it) while they look like address
parts, so a postcode is removed even when no postcode pattern would fire on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import regex

_UNIT = (r"(?:(?i:apt|apartment|suite|ste|unit|flat|floor|fl|room|rm|bldg|building|block|p\.?[ \t]?o\.?[ \t]?box|"
         r"postbox|post[ \t]box|postfach|box|lgh|kv|lok|m|daire|apto|piso|bloco|d|door|no)\.?:?[ \t]*#?[ \t]*"
         r"\d{1,5}[A-Za-z]?(?:-[A-Za-z0-9]{1,3})?|\d{1,2}º[ \t]*(?:[A-Za-z]{1,4}\.?)?|\d{1,2}\.[ \t]*(?i:tv|th|mf)\.?|"
         r"(?i:st)\.[ \t]*(?i:tv|th)\.?|(?i:bajo|entlo|izq|dcha)\.?|\d{1,4}[A-Za-z]?)")
_POSTCODE = (r"(?:[A-Z]{1,2}-)?(?:〒[ \t]?)?(?:\d{2}-\d{3}|\d{3}[ \t]\d{2}|\d{4}[ \t]?[A-Z]{2}|\d{3}-\d{4}|\d{4}-\d{3}|"
             r"\d{5}-\d{3,4}|\d{3,6}|[A-Z]{1,2}\d[A-Z\d]?[ \t]\d[A-Z]{2})")
# A place name: capitalised words, or words of another script, up to the next separator.
_PLACE_WORD = r"(?:\p{Lu}[\p{L}\p{M}'’-]*|\p{Lu}\p{L}{0,2}\.|[\p{L}--\p{Script=Latin}][\p{L}\p{M}--\p{Script=Latin}]*)"
_PLACE = rf"(?:{_PLACE_WORD}(?:[ \t/-]+(?:{_PLACE_WORD}|\d{{1,2}})){{0,3}})"
_END = r"(?=[ \t]*(?:$|[,;.)|\n]))"
_PART = regex.compile(
    # a postcode (and its place) right after a street is one wherever the sentence goes on;
    # a unit or a bare place name only when a separator follows it
    rf"(?:[ \t]*,[ \t]*|[ \t]*\n[ \t]*|[ \t]+)(?:{_POSTCODE}(?:[ \t]+{_PLACE})?(?![\w-])"
    rf"|(?:{_UNIT}|{_PLACE}(?:,?[ \t]+{_POSTCODE})?){_END})",
    regex.V1 | regex.MULTILINE)
_UNIT_BEFORE = regex.compile(rf"{_UNIT}[ \t]*,[ \t]*$", regex.V1)

F = TypeVar("F")


def extend_addresses(text: str, findings: Sequence[F], entity_of: Callable[[F], str],
                     span_of: Callable[[F], tuple[int, int]], rebuild: Callable[[F, int, int], F],
                     max_parts: int = 5) -> list[F]:
    """``findings`` with every STREET_ADDRESS grown over the address parts that follow it."""
    out: list[F] = []
    for f in findings:
        if entity_of(f) != "STREET_ADDRESS":
            out.append(f)
            continue
        start, end = span_of(f)
        for _ in range(max_parts):
            m = _PART.match(text, end)
            if m is None or "\n\n" in m.group():
                break
            end = m.end()
        before = _UNIT_BEFORE.search(text[max(0, start - 24):start])
        if before is not None:
            start = start - (len(text[max(0, start - 24):start]) - before.start())
        out.append(rebuild(f, start, end))
    return out
