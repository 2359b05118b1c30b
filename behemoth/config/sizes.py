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
