"""Config loading: recipes, dotted overrides, and one clear line for every kind of bad value."""

import subprocess
import sys
import tomllib

import pytest

import behemoth
from behemoth.config import dump_config, load_config
from behemoth.config.loader import parse_override
from behemoth.errors import ConfigError
from tests.conftest import REPO

RECIPES = sorted((REPO / "configs").glob("*.toml"))


def test_ships_the_required_recipes():
    names = {p.stem for p in RECIPES}
    assert {"mnist-cnn", "mnist-mlp", "lenet5", "fashion", "digits", "rnn", "gpt-text"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_loads_and_round_trips(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    text = dump_config(cfg)
    assert load_config_from_text(text, path.parent) == cfg  # the resolved config reloads to the same thing


def load_config_from_text(text: str, tmp_dir):
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as handle:
        handle.write(text)
    return load_config(handle.name)


def test_defaults_without_a_file():
    cfg = load_config(None)
    assert cfg.data.name == "mnist" and cfg.model.name == "cnn" and cfg.train.optimizer == "sgd"


def test_dotted_overrides_apply_with_types():
    cfg = load_config(
        REPO / "configs/mnist-cnn.toml",
        [
            "train.lr=0.05",
            "data.batch_size=256",
            "train.optimizer=adam",
            "model.channels=[8, 16]",
            "train.early_stop.patience=3",
            "name=quick",
            "train.nesterov=false",
            "train.betas=[0.8, 0.9]",
        ],
    )
    assert cfg.train.lr == 0.05 and cfg.data.batch_size == 256 and cfg.train.optimizer == "adam"
    assert cfg.model.options["channels"] == [8, 16] and cfg.train.early_stop.patience == 3
    assert cfg.name == "quick" and cfg.train.nesterov is False and cfg.train.betas == (0.8, 0.9)


def test_override_parsing():
    assert parse_override("train.lr=1e-3") == (["train", "lr"], 0.001)
    assert parse_override("data.path=runs/x y") == (["data", "path"], "runs/x y")
    assert parse_override('data.path="a=b"') == (["data", "path"], "a=b")


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["train.lrr=0.1"], "train.lrr = 0.1: unknown key"),
        (["trian.lr=0.1"], "trian = {'lr': 0.1}: unknown key"),
        (["train.lr=-1"], "train.lr = -1: Input should be greater than 0"),
        (["data.batch_size=abc"], "data.batch_size = 'abc'"),
        (["data.batch_size=0"], "data.batch_size = 0: Input should be greater than or equal to 1"),
        (["train.optimizer=adamm"], "train.optimizer = 'adamm'"),
        (["train.precision=fp8"], "train.precision = 'fp8'"),
        (["data.val_fraction=1.5"], "data.val_fraction = 1.5"),
        (["train.early_stop.mode=up"], "train.early_stop.mode = 'up'"),
        (["name=bad/name"], "name = 'bad/name'"),
        (["train.lr"], "expected section.key=value"),
        (["train..lr=1"], "expected section.key=value"),
        (["train=1"], "train = 1"),
    ],
)
def test_bad_values_fail_with_the_field_path(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs/mnist-cnn.toml", overrides)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["model.name=resnet"], "model.name = 'resnet': unknown model"),
        (["model.chanels=[1,2]"], "model.chanels = [1, 2]: unknown key"),
        (["model.hidden=-5"], "model.hidden = -5"),
        (
            ["model.name=nosuchpkg.mod:build"],
            "model.name = 'nosuchpkg.mod:build': cannot import nosuchpkg.mod",
        ),
        (["model.name=tests.conftest:nothing_here"], "has no callable 'nothing_here'"),
    ],
)
def test_bad_model_options_fail_before_any_work(overrides, fragment):
    # behemoth.config is a leaf (no torch): the model's own options are checked by the API's loader
    with pytest.raises(ConfigError) as info:
        behemoth.load_config(REPO / "configs/mnist-cnn.toml", overrides)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_config_is_a_leaf_that_loads_no_torch():
    code = (
        "import sys, behemoth.config, behemoth; behemoth.config.load_config(None); "
        "print(sorted(m for m in sys.modules if m.startswith(('torch', 'behemoth.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "torch" not in out and "behemoth.models" not in out and "behemoth.training" not in out


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.toml"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = 1")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)


def test_model_options_are_checked_per_model(tmp_path):
    cfg = tmp_path / "gpt.toml"
    cfg.write_text('[data]\nname = "kjv"\n[model]\nname = "gpt"\nn_layer = 2\nn_embd = 64\n')
    assert load_config(cfg).model.options == {"n_layer": 2, "n_embd": 64}
    with pytest.raises(ConfigError, match="model.n_layr"):
        behemoth.load_config(cfg, ["model.n_layr=3"])


def test_dumped_config_is_valid_toml_with_nested_tables():
    text = dump_config(load_config(REPO / "configs/fashion.toml"))
    data = tomllib.loads(text)
    assert data["train"]["early_stop"]["monitor"] == "val.acc"
    assert data["model"]["name"] == "cnn" and data["model"]["dropout"] == 0.25
