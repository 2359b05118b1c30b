"""RunDir: the one place that knows a run directory's file names, and spec.json read as typed values."""

import json
import re
from pathlib import Path

import pytest
import torch

import behemoth
from behemoth.data.preprocessing import black, normalise, to_scaled_units
from behemoth.errors import RunDirError
from behemoth.runs import RunDir
from behemoth.spec import Preprocessing, TokenizerRef
from behemoth.training.assembly import assemble
from tests.conftest import REPO

RUN_FILES = (
    r'"(config\.toml|spec\.json|summary\.json|eval\.json|metrics\.jsonl'
    r'|data_preview\.png|model\.bhm|compress\.json)"'
)
NOT_A_RUN = {"behemoth/federated/deploy.py"}  # writes Flower's own $FLWR_HOME/config.toml


def test_only_rundir_names_the_files_of_a_run():
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in (REPO / "behemoth").rglob("*.py")
        if path.name != "runs.py" and str(path.relative_to(REPO)) not in NOT_A_RUN
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(RUN_FILES, line)
    ]
    assert offenders == []


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cfg = behemoth.load_config("digits", [f"runs_dir={str(runs)!r}", "train.max_steps=2", "train.epochs=1"])
    return RunDir(Path(behemoth.train(cfg, progress=False)["run"])), cfg


def test_spec_reads_back_as_typed_preprocessing(digits_run):
    run, cfg = digits_run
    spec = run.spec()
    data = assemble(cfg).data
    assert spec.preprocessing == data.preprocessing and spec.tokenizer is None
    assert spec.preprocessing.layout == "image" and spec.preprocessing.scale == 1.0  # digits: 0..16, unscaled
    x = data.test.x[:16]
    raw = to_scaled_units(x, spec.preprocessing) * spec.preprocessing.scale  # back to the source's units
    assert torch.allclose(normalise(raw, spec.preprocessing), x, atol=1e-5)
    assert torch.allclose(
        to_scaled_units(black(x, spec.preprocessing), spec.preprocessing), torch.zeros_like(x), atol=1e-6
    )
    for path in (run.config_file, run.spec_file, run.summary, run.weights, run.metrics, run.preview):
        assert path.is_file(), path


def test_a_tokenizer_reference_stays_inside_the_run(tmp_path):
    assert TokenizerRef.from_meta({"tokenizer": "bpe"}) == TokenizerRef("bpe", "tokenizer.json")
    assert TokenizerRef.from_meta({"tokenizer": "byte"}) == TokenizerRef("byte", None)
    run = RunDir(tmp_path)
    for escape in ("../outside.json", "/etc/passwd", "sub/tokenizer.json", ".."):
        spec = {
            "spec": {"task": "language_model", "input_shape": [8], "num_classes": 300},
            "class_names": [],
            "meta": {"tokenizer": "bpe", "tokenizer_file": escape},
        }
        run.spec_file.write_text(json.dumps(spec))
        with pytest.raises(RunDirError, match=f"spec.json: tokenizer_file = {re.escape(repr(escape))}"):
            run.spec()


def test_preprocessing_has_one_decoder_with_one_set_of_defaults():
    assert Preprocessing.from_meta({}) is None  # token ids: nothing to normalise
    prep = Preprocessing.from_meta({"mean": [0.5], "layout": "table"})
    assert prep == Preprocessing((0.5,), (1.0,), 1.0, "table")
