"""The .bhm artifact: codecs round-trip, load_packed rebuilds models that compute exactly what the packed
model computed (float, pruned, weight-shared, int8 static and dynamic, structurally pruned), sizes are
bytes on disk, and corruption fails with a checksum error naming the file; every record kind in the
registry round-trips on its own."""

import dataclasses
import json
import typing
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import behemoth
from behemoth.compression import coding, kmeans, prune, quantize, structured
from behemoth.compression.pack import PackedFileError, packed_info, read_packed, save_packed
from behemoth.compression.pack_format import CODES, PREFIX, PackedModel, decode, encode, read_header
from behemoth.compression.pack_records import KINDS, Int8Weight, Record, kind_of
from behemoth.compression.pack_weight_only_records import Int4WeightOnly, Int8WeightOnly
from behemoth.compression.rebuild import shapes_of, to_packed
from behemoth.models import build_model
from behemoth.spec import DataSpec

SPEC = DataSpec("classification", (1, 8, 8), 10)
MLP_OPTIONS = {"hidden": [64, 32]}


def model_and_input(name: str = "mlp", options: dict | None = None, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name, options or MLP_OPTIONS, SPEC).eval(), torch.randn(32, 1, 8, 8)


def pack(model, path, code="huffman", name="mlp", options=None, **kwargs):
    shapes = kwargs.pop("shapes", None) or shapes_of(model)
    packed = to_packed(
        model,
        name,
        options or MLP_OPTIONS,
        SPEC,
        shapes=shapes,
        class_names=[str(i) for i in range(10)],
        **kwargs,
    )
    return save_packed(path, packed, code)


@pytest.mark.parametrize("code", ["none", "huffman", "zstd"])
def test_symbol_codecs_round_trip(code):
    rng = np.random.default_rng(0)
    symbols = np.minimum(rng.geometric(0.2, 5000) - 1, 63)
    data = coding.encode_symbols(symbols, 64, code)
    assert np.array_equal(coding.decode_symbols(data, 64, symbols.size, code), symbols)
    if code != "none":  # skewed symbols: entropy coding beats 6-bit packing, and Huffman nears the entropy
        assert len(data) < 0.8 * len(coding.encode_symbols(symbols, 64, "none"))
    if code == "huffman":
        assert len(data) * 8 < coding.entropy_bits(symbols, 64) * 1.05 + 600


def test_relative_indices_round_trip_with_long_gaps():
    positions = np.array([0, 1, 2, 40, 41, 1000, 1003])
    for bits in (2, 3, 5, 8):
        symbols = coding.relative_indices(positions, bits)
        assert symbols.max() < 2**bits
        assert np.array_equal(coding.absolute_positions(symbols, bits), positions)


def test_huffman_codes_stay_within_16_bits():
    fibonacci = [1, 1]
    while len(fibonacci) < 22:
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    counts = np.array(fibonacci)  # the optimal code for Fibonacci counts is 21 bits deep
    lengths = coding.huffman_lengths(counts)
    assert lengths.max() <= 16 and (2.0 ** -lengths.astype(float)).sum() <= 1.0  # a valid prefix code
    symbols = np.repeat(np.arange(22), counts)  # 46,367 symbols
    assert np.array_equal(coding.huffman_decode(coding.huffman_encode(symbols, 22), symbols.size), symbols)


def test_float_model_round_trips_exactly_and_size_is_bytes_on_disk(tmp_path):
    model, x = model_and_input()
    size = pack(model, tmp_path / "m.bhm", "none")
    assert size == (tmp_path / "m.bhm").stat().st_size
    assert size < 4 * sum(p.numel() for p in model.parameters()) + 2000  # float32 plus a small header
    restored = behemoth.load_packed(tmp_path / "m.bhm")
    assert torch.equal(restored(x), model(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.bhm"]  # written atomically: no temp file left


def test_pruned_and_weight_shared_model_round_trips_and_shrinks(tmp_path):
    model, x = model_and_input()
    dense = pack(model, tmp_path / "dense.bhm", "none")
    prune.prune_magnitude(model, 0.9, "global")
    prune.make_permanent(model)
    sparse = pack(model, tmp_path / "sparse.bhm", "none")
    books = kmeans.share_weights(model, bits=4)
    books = kmeans.finalize_shared(model)
    sizes = {
        code: pack(model, tmp_path / f"k-{code}.bhm", code, codebooks=books)
        for code in ("none", "huffman", "zstd")
    }
    assert sparse < dense / 3 and sizes["none"] < sparse * 0.6 and sizes["huffman"] < sizes["none"]
    for code in sizes:
        assert torch.equal(behemoth.load_packed(tmp_path / f"k-{code}.bhm")(x), model(x))
    header = packed_info(tmp_path / "k-huffman.bhm")
    layouts = {t["name"]: t["layout"] for t in header["tensors"]}
    assert layouts["net.fc1.weight"] == "sparse" and layouts["net.fc1.bias"] == "dense"
    assert header["model"] == {"name": "mlp", "options": MLP_OPTIONS}
    book = read_packed(tmp_path / "k-huffman.bhm").tensors["net.fc1.weight"]
    assert isinstance(book, kmeans.Codebook) and book.centroids.numel() == 16


def test_int8_static_and_dynamic_round_trip_on_int8_kernels(tmp_path):
    model, x = model_and_input("cnn", {"channels": [4, 8], "hidden": 16, "norm": "batch"})
    static = quantize.quantize_static(model, [x])
    pack(
        static,
        tmp_path / "s.bhm",
        name="cnn",
        options={"channels": [4, 8], "hidden": 16, "norm": "batch"},
        shapes=shapes_of(model),
    )
    restored = behemoth.load_packed(tmp_path / "s.bhm")
    assert quantize.int8_layers(restored) == quantize.int8_layers(static)
    assert torch.equal(restored(x), static(x))
    mlp, x = model_and_input()
    dynamic = quantize.quantize_dynamic(mlp)
    pack(dynamic, tmp_path / "d.bhm", shapes=shapes_of(mlp))
    restored = behemoth.load_packed(tmp_path / "d.bhm")
    assert len(quantize.int8_layers(restored)) == 3 and torch.equal(restored(x), dynamic(x))


def test_structurally_pruned_model_is_rebuilt_at_its_pruned_size(tmp_path):
    model, x = model_and_input()
    structured.prune_units(model, 0.5, x[:2])
    pack(model, tmp_path / "s.bhm")
    restored = behemoth.load_packed(tmp_path / "s.bhm")
    assert restored.net.fc1.out_features == 32 and restored.net.fc2.in_features == 32
    assert torch.equal(restored(x), model(x))


@pytest.mark.parametrize("where", ["payload", "header"])
def test_corrupted_file_fails_with_a_checksum_error_naming_the_file(tmp_path, where):
    model, _ = model_and_input()
    path = tmp_path / "model.bhm"
    pack(model, path)
    data = bytearray(path.read_bytes())
    position = len(data) - 100 if where == "payload" else 20
    data[position] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(PackedFileError, match=f"{path}: checksum mismatch"):
        behemoth.load_packed(path)


def test_truncated_and_foreign_files_are_refused(tmp_path):
    model, _ = model_and_input()
    path = tmp_path / "model.bhm"
    pack(model, path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(PackedFileError, match="truncated"):
        behemoth.load_packed(path)
    (tmp_path / "other.bhm").write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(PackedFileError, match="not a behemoth packed model"):
        behemoth.load_packed(tmp_path / "other.bhm")


# ----- record kinds, one row per case: (kind, case, record, the layout the writer picks with code none) -----


def _random(shape, seed, keep=1.0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=g, dtype=torch.float64)
    return (values * (torch.rand(shape, generator=g) < keep)).to(dtype)


def _int8(shape, seed, keep, scales, axis) -> Int8Weight:
    q = torch.randint(-128, 128, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)
    q = q * (_random(shape, seed + 1, keep) != 0)
    scales = torch.tensor(scales, dtype=torch.float64)
    return Int8Weight(q.to(torch.int8), scales, torch.arange(len(scales), dtype=torch.int64) - 1, axis)


def _codebook(shape, seed, k, pruned) -> kmeans.Codebook:
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, k, shape, generator=g)
    index[torch.rand(shape, generator=g) < pruned] = -1
    return kmeans.Codebook(torch.randn(k, generator=g), index, bits=int(np.ceil(np.log2(k))))


def _int8w(shape, seed) -> Int8WeightOnly:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, shape, generator=g, dtype=torch.int8)
    return Int8WeightOnly(q, torch.rand(shape[0], generator=g).to(torch.bfloat16))


def _int4w(shape, seed, group) -> Int4WeightOnly:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, shape, generator=g).to(torch.uint8)
    sz = torch.randn(shape[1] // group, shape[0], 2, generator=g).to(torch.bfloat16)
    return Int4WeightOnly(codes, sz, group)


KIND_CASES = [
    ("dense", "float32 matrix", lambda: _random((16, 8), 0), "dense"),
    ("dense", "pruned matrix", lambda: _random((16, 8), 1, keep=0.1), "sparse"),
    ("dense", "float64 vector", lambda: _random((5,), 2, keep=0.1, dtype=torch.float64), "dense"),
    ("dense", "float16 matrix", lambda: _random((4, 6), 3, dtype=torch.float16), "dense"),
    ("dense", "int64 counter", lambda: torch.tensor(7), "dense"),
    ("dense", "bool mask", lambda: _random((3, 4), 4, keep=0.5) != 0, "dense"),
    ("int8", "per channel, pruned", lambda: _int8((8, 32), 5, 0.1, [0.5, 0.25, 0.125], 0), "sparse"),
    ("int8", "per tensor, float64 scale", lambda: _int8((8, 32), 6, 1.0, [0.0123456789], None), "dense"),
    ("codebook", "pruned", lambda: _codebook((16, 16), 7, 16, 0.9), "sparse"),
    ("codebook", "unpruned", lambda: _codebook((16, 16), 8, 8, 0.0), "dense"),
    ("codebook", "lightly pruned", lambda: _codebook((16, 16), 9, 32, 0.05), "dense"),
    ("int8w", "weight-only int8", lambda: _int8w((16, 24), 10), "dense"),
    ("int4w", "weight-only int4, odd count", lambda: _int4w((3, 64), 11, 32), "dense"),
    ("int4w", "weight-only int4, group 128", lambda: _int4w((16, 256), 12, 128), "dense"),
]


def same(a, b) -> bool:
    """Equal records: tensors equal in dtype, shape and values; dataclasses field by field."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and (a.dtype, a.shape) == (b.dtype, b.shape) and torch.equal(a, b)
    if dataclasses.is_dataclass(a):
        fields = dataclasses.fields(a)
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name)) for f in fields)
    return a == b


def packed_of(record: Record) -> PackedModel:
    return PackedModel("mlp", MLP_OPTIONS, SPEC, {"w": record}, {"w": [1]})


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("kind,case,make,layout", KIND_CASES, ids=[f"{k}: {c}" for k, c, _, _ in KIND_CASES])
def test_every_record_kind_round_trips(kind, case, make, layout, code):
    record = make()
    data = encode(packed_of(record), code)
    (entry,) = read_header(Path("w.bhm"), data)[0]["tensors"]
    assert entry["kind"] == kind
    if code == "none":  # entropy coding can make the dense layout of a sparse weight the smaller one
        assert entry["layout"] == layout
    assert same(decode(data).tensors["w"], record)


def test_registry_has_a_kind_for_every_record_the_writer_takes():
    assert {kind for kind, _, _, _ in KIND_CASES} == set(KINDS)  # every registered kind has round-trip cases
    assert {kind.record_type for kind in KINDS.values()} == set(typing.get_args(Record))
    for name, kind in KINDS.items():
        assert kind.name == name
    for _, _, make, _ in KIND_CASES:  # the kind name written into the header is the one it is found under
        record = make()
        assert KINDS[kind_of(record).fields(record)["kind"]] is kind_of(record)
    with pytest.raises(TypeError, match="cannot store a ndarray"):
        kind_of(np.zeros(3))


def test_an_unknown_record_kind_is_refused_by_name():
    data = encode(packed_of(torch.zeros(3)), "none")
    header, payload = read_header(Path("w.bhm"), data)
    header["tensors"][0]["kind"] = "float8"  # a kind from a newer writer
    header_bytes = zlib.compress(json.dumps(header).encode())
    forged = PREFIX.pack(b"BHM1", len(header_bytes), zlib.crc32(header_bytes)) + header_bytes + bytes(payload)
    with pytest.raises(PackedFileError, match="w.bhm: tensor w has kind 'float8'"):
        decode(forged, "w.bhm")
