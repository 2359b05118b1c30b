"""Text data for language models: the byte and BPE tokenizers, contiguous splits, packing, config checks."""

import json

import numpy as np
import pytest
import torch

from behemoth.config import DataConfig, load_config
from behemoth.data import load_data, sources
from behemoth.data.text import split_text
from behemoth.data.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    load_bpe,
    load_run_tokenizer,
    save_run_tokenizer,
    train_bpe,
)
from behemoth.errors import ConfigError, RunDirError
from behemoth.runs import write_spec

UNICODE = "In the beginning — naïve café ∑ 日本\n\tand   spaces  \n"


@pytest.fixture(scope="module")
def kjv_slice() -> str:
    """The first ~120 kB of the KJV: enough text for BPE merges that matter, fast to train on."""
    lines = sources.kjv_jsonl().read_text(encoding="utf-8").splitlines()[:1000]
    return "\n".join(json.loads(line)["text"] for line in lines if line.strip())


@pytest.fixture(scope="module")
def bpe(kjv_slice) -> BPETokenizer:
    return train_bpe(kjv_slice, 512)


def test_bpe_round_trips_any_text_and_compresses(bpe, kjv_slice):
    assert bpe.vocab_size == 512
    for text in (UNICODE, kjv_slice[:5000], "zzqx \x00\x7f"):  # unseen characters still encode (byte-level)
        ids = bpe.encode(text)
        assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 512
        assert bpe.decode(ids) == text and bpe.decode(torch.from_numpy(ids)) == text
    held_out = kjv_slice[-20000:]
    assert len(bpe.encode(held_out)) < 0.45 * len(
        held_out.encode()
    )  # merges learned from English text pay off
    assert ByteTokenizer().decode(ByteTokenizer().encode(UNICODE)) == UNICODE


def test_bpe_training_is_deterministic_and_saves_losslessly(bpe, kjv_slice, tmp_path):
    again = train_bpe(kjv_slice, 512)
    assert again.to_json() == bpe.to_json()  # the same text and size give the same merges
    other = train_bpe(kjv_slice, 300)
    assert other.vocab_size == 300 and other.to_json() != bpe.to_json()
    bpe.save(tmp_path / "tokenizer.json")
    loaded = load_bpe(tmp_path / "tokenizer.json")
    assert np.array_equal(loaded.encode(kjv_slice[:3000]), bpe.encode(kjv_slice[:3000]))


def test_split_text_is_contiguous_and_cuts_between_characters():
    text = "é" * 1001  # two bytes per character: a byte fraction lands mid-character half the time
    for val_fraction in (0.0, 0.1, 0.33):
        parts = split_text(text, val_fraction)
        assert "".join(parts.values()) == text
        assert ("val" in parts) == (val_fraction > 0)
        test_bytes = len(parts["test"].encode())
        assert abs(test_bytes - 0.1 * len(text.encode())) <= 2


def test_bpe_text_data_packs_contiguous_splits(tmp_path, kjv_slice):
    path = tmp_path / "kjv.txt"
    path.write_text(kjv_slice, encoding="utf-8")
    data = load_data(
        DataConfig(
            name="text", path=str(path), tokenizer="bpe", vocab_size=400, block_size=32, val_fraction=0.1
        )
    )
    meta, tok = data.meta, data.tokenizer
    assert data.spec.task == "language_model" and data.spec.num_classes == tok.vocab_size == 400
    assert meta["tokenizer"] == "bpe" and meta["tokenizer_file"] == "tokenizer.json"
    parts = split_text(kjv_slice, 0.1)
    for name, split in data.splits().items():
        assert split.x.shape[1] == 32 and torch.equal(split.x[:, 1:], split.y[:, :-1])
        stream = torch.cat([split.x, split.y[:, -1:]], dim=1).flatten()  # the packed rows, back to back
        assert meta[f"{name}_tokens"] == len(tok.encode(parts[name]))
        assert parts[name].startswith(tok.decode(stream))  # each split decodes to the start of its stretch
    # the tokenizer learned only from the training text: train_bpe on it gives the same merges
    assert train_bpe(parts["train"], 400).to_json() == tok.to_json()


def test_run_tokenizer_is_saved_and_reloaded(tmp_path, kjv_slice):
    path = tmp_path / "kjv.txt"
    path.write_text(kjv_slice, encoding="utf-8")
    data = load_data(DataConfig(name="text", path=str(path), tokenizer="bpe", vocab_size=300, block_size=16))
    run = tmp_path / "run"
    run.mkdir()
    write_spec(run, data.spec, data.class_names, data.meta)
    save_run_tokenizer(run / "tokenizer.json", data.tokenizer)
    spec_meta = json.loads((run / "spec.json").read_text())["meta"]
    assert spec_meta["tokenizer"] == "bpe" and spec_meta["tokenizer_file"] == "tokenizer.json"
    assert "tokenizer_object" not in spec_meta and "tokenizer_object" not in data.meta  # a typed field
    loaded = load_run_tokenizer(run)
    assert loaded.decode(data.train.x[0]) == data.tokenizer.decode(data.train.x[0])
    (run / "tokenizer.json").unlink()
    with pytest.raises(RunDirError, match="tokenizer.json is missing"):
        load_run_tokenizer(run)


def test_tokenizer_config_is_checked_at_load():
    assert load_config(None, ["data.tokenizer=bpe", "data.vocab_size=1024"]).data.vocab_size == 1024
    with pytest.raises(ConfigError, match=r"data\.vocab_size = 1024: .*needs data.tokenizer = 'bpe'"):
        load_config(None, ["data.vocab_size=1024"])
    with pytest.raises(ConfigError, match=r"data\.vocab_size = 100: .*greater than or equal to 257"):
        load_config(None, ["data.tokenizer=bpe", "data.vocab_size=100"])
    with pytest.raises(ConfigError, match=r"data\.tokenizer = 'words'"):
        load_config(None, ["data.tokenizer=words"])
