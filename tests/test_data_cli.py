"""`behemoth data preview | pack | inspect` and training from a shard directory, through the CLI."""

import json
import subprocess

import pytest
from PIL import Image
from typer.testing import CliRunner

from behemoth.cli import app
from tests.conftest import behemoth_cmd, subprocess_env

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        behemoth_cmd(*args), capture_output=True, text=True, timeout=300, env=subprocess_env()
    )


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "digits"
    output = invoke(
        "data",
        "pack",
        "digits",
        str(out),
        "data.val_fraction=0.1",
        "--codec",
        "lz4",
        "--level",
        "7",
        "--shard-size",
        "8KiB",
        "--no-progress",
    ).output
    return out, output


def test_help_explains_the_data_commands():
    top = invoke("data", "--help").output
    for command in ("preview", "pack", "inspect"):
        assert command in top
        assert "Usage" in invoke("data", command, "--help").output
    assert "lossless" in invoke("data", "pack", "--help").output.lower()


def test_pack_then_inspect_prints_counts_sizes_and_ratio(packed):
    out, pack_output = packed
    index = json.loads((out / "index.json").read_text())
    assert index["codec"] == "lz4" and index["level"] == 7
    assert [s["count"] for s in index["splits"]["train"]["shards"]][:1] == [8192 // 65]
    shards = sum(len(split["shards"]) for split in index["splits"].values())
    shown = invoke("data", "inspect", str(out), "--verify").output
    for fragment in ("lz4 level 7", "1,294", "144", "359", "uint8*", f"verified {shards} shards"):
        assert fragment in shown, fragment
    ratio = float(shown.split("raw (")[1].split("x)")[0])
    stored = sum(s["bytes"] for split in index["splits"].values() for s in split["shards"])
    raw = sum(s["raw_bytes"] for split in index["splits"].values() for s in split["shards"])
    assert ratio == pytest.approx(raw / stored, abs=0.01) and ratio > 1.1 and "raw (" in pack_output


def test_inspect_names_a_corrupted_shard_in_one_line(packed, tmp_path):
    import shutil

    out, _ = packed
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    shard = broken / "val-00000.b2f"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    result = run_cli("data", "inspect", str(broken), "--verify")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "val-00000.b2f is corrupted" in lines[0], result.stderr


def test_lossy_codec_is_refused_in_one_line(tmp_path):
    result = run_cli("data", "pack", "digits", str(tmp_path / "x"), "--codec", "zfp_acc")
    assert result.returncode == 1 and not (tmp_path / "x").exists()
    assert result.stderr.strip() == (
        "behemoth: error: --codec zfp_acc: codec 'zfp_acc' is lossy; shards are lossless: "
        "use one of zstd, lz4, lz4hc, blosclz, zlib"
    )


def test_preview_writes_a_picture(tmp_path):
    out = tmp_path / "preview.png"
    shown = invoke(
        "data",
        "preview",
        "digits",
        "data.augment.rotate.p=1",
        "data.augment.mixup.p=0.5",
        "--out",
        str(out),
        "--samples",
        "6",
        "--rounds",
        "2",
    ).output
    assert "written" in shown
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.size[0] > 600 and picture.size[1] > 300
    result = runner.invoke(app, ["data", "preview", "digits", "--out", str(tmp_path / "none.png")])
    assert result.exit_code == 1 and "data.augment has no ops" in str(result.exception)


def test_train_from_a_shard_directory(packed, tmp_path):
    out, _ = packed
    shown = invoke(
        "train",
        "digits",
        "data.name=shards",
        f"data.path={str(out)!r}",
        f"runs_dir={str(tmp_path)!r}",
        "name=s",
        "train.epochs=5",
        "data.augment.translate.p=0.5",
        "--no-progress",
    ).output
    assert "test accuracy" in shown
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["train_samples"] == 1294 and summary["test"]["acc"] > 0.85
