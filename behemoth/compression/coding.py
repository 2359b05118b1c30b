"""Lossless codecs for integer symbol streams: fixed-width bit packing, sparse positions as relative
indices, canonical Huffman coding and zstd (through blosc2).

Huffman is written here: Python's standard library has none, and the packages that do it fast (bitarray)
are not dependencies. Encoding is vectorised with numpy; decoding walks a 2^16-entry lookup table, one
Python step per symbol (about 0.3 s per million symbols), fine for the weight counts this is for.
"""

import heapq
import struct
import zlib

import numpy as np

MAX_CODE_BITS = 16  # Huffman codes are limited to this length (one table lookup decodes a symbol)


# ----- fixed-width bit packing -----


def bits_for(alphabet: int) -> int:
    """Bits needed to write symbols 0..alphabet-1 (at least 1)."""
    return max(1, int(alphabet - 1).bit_length())


def pack_bits(symbols: np.ndarray, bits: int) -> bytes:
    """Each symbol as `bits` bits, most significant first, concatenated and padded to whole bytes."""
    symbols = np.asarray(symbols, dtype=np.uint32)
    if symbols.size and int(symbols.max()) >> bits:
        raise ValueError(f"symbol {int(symbols.max())} does not fit in {bits} bits")
    if bits == 8:  # byte-aligned fast paths (the same bytes as below, without a (N, bits) bit matrix)
        return symbols.astype(np.uint8).tobytes()
    if bits == 4:
        nibbles = np.concatenate([symbols, np.zeros(symbols.size % 2, np.uint32)]).astype(np.uint8)
        return ((nibbles[0::2] << 4) | nibbles[1::2]).tobytes()
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    matrix = ((symbols[:, None] >> shifts) & 1).astype(np.uint8)  # (N, bits)
    return np.packbits(matrix.ravel()).tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    if bits in (4, 8) and len(data) * 8 >= count * bits:  # byte-aligned fast paths
        raw = np.frombuffer(data, dtype=np.uint8)
        if bits == 4:
            raw = np.stack([raw >> 4, raw & 15], axis=1).ravel()
        return raw[:count].astype(np.int64)
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: count * bits]
    if flat.size != count * bits:
        raise ValueError(f"bit stream too short: {flat.size} bits for {count} symbols of {bits} bits")
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)
    return flat.reshape(count, bits).astype(np.int64) @ weights


# ----- sparse positions as relative indices -----
# (Deep Compression §2, with an escape instead of filler zeros)


def relative_indices(positions: np.ndarray, bits: int) -> np.ndarray:
    """Sorted flat positions -> gap symbols of `bits` bits. A symbol s < E = 2^bits - 1 means "the next
    value is s + 1 places on"; E means "move E places on, no value here" (for gaps longer than E)."""
    escape = (1 << bits) - 1
    gaps = np.diff(np.concatenate([[-1], np.asarray(positions, dtype=np.int64)]))  # >= 1
    escapes = (gaps - 1) // escape
    symbols = np.full(int(escapes.sum()) + gaps.size, escape, dtype=np.int64)
    symbols[np.cumsum(escapes + 1) - 1] = gaps - 1 - escapes * escape
    return symbols


def absolute_positions(symbols: np.ndarray, bits: int) -> np.ndarray:
    escape = (1 << bits) - 1
    symbols = np.asarray(symbols, dtype=np.int64)
    is_escape = symbols == escape
    steps = np.where(is_escape, escape, symbols + 1)
    return (np.cumsum(steps) - 1)[~is_escape]


def relative_index_cost(positions: np.ndarray, bits: int, value_bits: float) -> float:
    """Bits to store the positions (and one value per position) with `bits`-bit relative indices."""
    gaps = np.diff(np.concatenate([[-1], np.asarray(positions, dtype=np.int64)]))
    entries = gaps.size + int(((gaps - 1) // ((1 << bits) - 1)).sum())
    return entries * bits + gaps.size * value_bits


def best_index_bits(positions: np.ndarray, value_bits: float, candidates: range = range(1, 13)) -> int:
    return min(candidates, key=lambda b: relative_index_cost(positions, b, value_bits))


# ----- canonical Huffman -----


def huffman_lengths(counts: np.ndarray, limit: int = MAX_CODE_BITS) -> np.ndarray:
    """Code length per symbol (0 for unused symbols), at most `limit` bits: when the optimal code is too
    long, the counts are flattened (halved, kept >= 1) and the code rebuilt, as zlib does."""
    counts = np.asarray(counts, dtype=np.int64).copy()
    used = np.flatnonzero(counts)
    lengths = np.zeros(counts.size, dtype=np.int64)
    if used.size == 1:
        lengths[used] = 1
        return lengths
    while True:
        heap = [(int(counts[s]), int(s), [int(s)]) for s in used]  # (weight, tie-break, symbols below)
        heapq.heapify(heap)
        lengths[:] = 0
        while len(heap) > 1:
            w1, t1, s1 = heapq.heappop(heap)
            w2, t2, s2 = heapq.heappop(heap)
            lengths[s1] += 1
            lengths[s2] += 1
            heapq.heappush(heap, (w1 + w2, min(t1, t2), s1 + s2))
        if lengths.max() <= limit:
            return lengths
        counts[used] = np.maximum(counts[used] // 2, 1)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values: symbols sorted by (length, symbol) take consecutive codes."""
    codes = np.zeros(lengths.size, dtype=np.int64)
    code, previous = 0, 0
    for symbol in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        codes[symbol], previous = code, int(lengths[symbol])
        code += 1
    return codes


def huffman_encode(symbols: np.ndarray, alphabet: int) -> bytes:
    """A self-describing stream: alphabet size, the zlib-packed code lengths, then the code bits."""
    symbols = np.asarray(symbols, dtype=np.int64)
    counts = np.bincount(symbols, minlength=alphabet) if symbols.size else np.zeros(alphabet, dtype=np.int64)
    lengths = huffman_lengths(counts)
    codes = canonical_codes(lengths)
    table = zlib.compress(lengths.astype(np.uint8).tobytes(), 9)
    chunks = []
    for start in range(0, symbols.size, 1 << 18):  # bounded memory: (chunk, 16) bit matrix
        part = symbols[start : start + (1 << 18)]
        lens, vals = lengths[part], codes[part]
        shifts = lens[:, None] - 1 - np.arange(MAX_CODE_BITS)[None, :]
        bits = (vals[:, None] >> np.clip(shifts, 0, None)) & 1
        chunks.append(bits[shifts >= 0].astype(np.uint8))  # row-major: symbol after symbol
    stream = np.packbits(np.concatenate(chunks)) if chunks else np.zeros(0, np.uint8)
    return struct.pack("<II", alphabet, len(table)) + table + stream.tobytes()


def huffman_decode(data: bytes, count: int) -> np.ndarray:
    alphabet, table_size = struct.unpack_from("<II", data)
    lengths = np.frombuffer(zlib.decompress(data[8 : 8 + table_size]), dtype=np.uint8).astype(np.int64)
    if lengths.size != alphabet:
        raise ValueError("Huffman table does not match its alphabet")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    codes = canonical_codes(lengths)
    # lookup table: every 16-bit window that starts with a symbol's code -> (symbol, length)
    symbol_of = np.zeros(1 << MAX_CODE_BITS, dtype=np.int64)
    length_of = np.zeros(1 << MAX_CODE_BITS, dtype=np.int64)
    for symbol in np.flatnonzero(lengths):
        shift = MAX_CODE_BITS - int(lengths[symbol])
        start = int(codes[symbol]) << shift
        symbol_of[start : start + (1 << shift)] = symbol
        length_of[start : start + (1 << shift)] = lengths[symbol]
    bits = np.unpackbits(np.frombuffer(data[8 + table_size :], dtype=np.uint8)).astype(np.int64)
    padded = np.concatenate([bits, np.zeros(MAX_CODE_BITS, dtype=np.int64)])
    windows = np.zeros(bits.size, dtype=np.int64)  # windows[p]: the 16 bits starting at bit p
    for k in range(MAX_CODE_BITS):
        windows = (windows << 1) | padded[k : k + bits.size]
    windows_list, symbols_list, lengths_list = windows.tolist(), symbol_of.tolist(), length_of.tolist()
    out, position, end = [0] * count, 0, bits.size
    for i in range(count):
        if position >= end:
            raise ValueError("Huffman stream ended early")
        window = windows_list[position]
        out[i] = symbols_list[window]
        position += lengths_list[window]
    return np.asarray(out, dtype=np.int64)


# ----- zstd (blosc2) -----


def zstd_encode(data: bytes, typesize: int = 1) -> bytes:
    import blosc2

    filters = [blosc2.Filter.SHUFFLE] if typesize > 1 else [blosc2.Filter.NOFILTER]
    return blosc2.compress2(data, codec=blosc2.Codec.ZSTD, clevel=9, typesize=typesize, filters=filters)


def zstd_decode(data: bytes) -> bytes:
    import blosc2

    return bytes(blosc2.decompress2(data))


# ----- one entry point for symbol streams -----


def encode_symbols(symbols: np.ndarray, alphabet: int, code: str) -> bytes:
    """Integer symbols in [0, alphabet) as bytes: bit-packed (code "none"), Huffman or zstd."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if code == "huffman":
        return huffman_encode(symbols, alphabet)
    if code == "zstd":
        dtype = np.uint8 if alphabet <= 256 else np.uint16 if alphabet <= 65536 else np.uint32
        return zstd_encode(symbols.astype(dtype).tobytes(), np.dtype(dtype).itemsize)
    return pack_bits(symbols, bits_for(alphabet))


def decode_symbols(data: bytes, alphabet: int, count: int, code: str) -> np.ndarray:
    if code == "huffman":
        return huffman_decode(data, count)
    if code == "zstd":
        dtype = np.uint8 if alphabet <= 256 else np.uint16 if alphabet <= 65536 else np.uint32
        return np.frombuffer(zstd_decode(data), dtype=dtype)[:count].astype(np.int64)
    return unpack_bits(data, bits_for(alphabet), count)


def entropy_bits(symbols: np.ndarray, alphabet: int) -> float:
    """Shannon bound on the coded size of `symbols` in bits (what a Huffman code gets close to)."""
    counts = np.bincount(np.asarray(symbols, dtype=np.int64), minlength=alphabet).astype(np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(counts[counts > 0] * np.log2(p)).sum())
