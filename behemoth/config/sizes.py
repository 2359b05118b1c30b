"""Byte sizes written by people: '64MiB', '16GiB', '500k', '1GB', '2e9', '1048576'.

One rule everywhere (data shards, memory budgets): the binary units KiB, MiB, GiB, TiB are powers of 1024;
k, M, G, T (with or without a B) are powers of 1000, as disks and network links count.
"""

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes in a size such as 64MiB (2**20 units), 1GB (10**9) or 1048576; ValueError names the text."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match or (match[3] and not match[2]):
        raise ValueError(f"size {text!r}: expected a number of bytes such as 64MiB, 512KiB, 16GiB or 1GB")
    number, unit, binary = float(match[1]), match[2].lower(), bool(match[3])
    if not unit:
        return int(number)
    return int(number * (1024 if binary else 1000) ** " kmgt".index(unit))


def format_size(count: float) -> str:
    """Bytes for people, in the binary unit that keeps the number below 1024: '11.2 KiB', '0.6 MiB' never
    reads as nothing for a round of small adapters, '251.65 GiB' for a 7B model's."""
    for unit, scale in (("B", 1), ("KiB", 2**10), ("MiB", 2**20)):
        if count < 2**10 * scale:
            return f"{count:.0f} B" if unit == "B" else f"{count / scale:.1f} {unit}"
    return f"{count / 2**30:.2f} GiB"
