"""Paths read from shared files stay inside their directory, and private keys are private from the start.

Each attack is crafted here as an attacker would: a real shard directory (behemoth's own `pack_bundle`)
whose index.json is edited, a real DCP checkpoint (behemoth's own `save_sharded`) whose `.metadata` is
rewritten with torch's own classes. The file the attack points at holds the very bytes the index expects,
so following the name would pass every size and sha256 check: only the path check stands in the way, and
it must fire before that file is opened. The shard index has no checksum over itself to recompute.
"""

import builtins
import dataclasses
import io
import json
import os
import pickle
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from behemoth.config import load_config
from behemoth.data import load_data
from behemoth.data.shards import ShardSplit, pack_bundle, read_index
from behemoth.data.shards.format import ShardInfo
from behemoth.distributed.dcp import load_sharded, read_sharded_weights, save_sharded
from behemoth.errors import DataError, RunDirError
from behemoth.federated.certs import make_node_keys, make_tls
from behemoth.pipeline.data import verify
from tests.conftest import behemoth_cmd, mlp, subprocess_env

# --- what was opened -------------------------------------------------------------------------------------


@pytest.fixture()
def opened(monkeypatch) -> list[Path]:
    """Every path opened from now on (builtins.open, io.open as pathlib uses it, os.open), resolved."""
    seen: list[Path] = []

    def spy(original):
        def call(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)):
                seen.append(Path(file).resolve())
            return original(file, *args, **kwargs)

        return call

    monkeypatch.setattr(builtins, "open", spy(builtins.open))
    monkeypatch.setattr(io, "open", spy(io.open))
    monkeypatch.setattr(os, "open", spy(os.open))
    return seen


# --- shard directories -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def packed(digits_bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "digits"
    pack_bundle(digits_bundle, out, shard_size=8192)
    return out


@pytest.fixture()
def shared(packed, tmp_path) -> tuple[Path, Path]:
    """(a copy of the packed directory, secret.bin next to it holding train shard 0's exact bytes)."""
    root = tmp_path / "shared" / "digits"
    shutil.copytree(packed, root)
    secret = tmp_path / "shared" / "secret.bin"
    secret.write_bytes((root / "train-00000.b2f").read_bytes())
    return root, secret


def edit_index(root: Path, edit) -> None:
    index = json.loads((root / "index.json").read_text())
    edit(index)
    (root / "index.json").write_text(json.dumps(index))


def name_shard(name: object) -> Callable[[dict], None]:
    def edit(index: dict) -> None:
        index["splits"]["train"]["shards"][0]["file"] = name

    return edit


def escaping_names(secret: Path) -> dict[str, str]:
    return {"parent": "../secret.bin", "absolute": str(secret), "system": "/etc/passwd"}


@pytest.mark.parametrize("attack", ["parent", "absolute", "system"])
def test_an_index_naming_a_file_outside_fails_before_it_is_opened(shared, opened, attack):
    root, secret = shared
    name = escaping_names(secret)[attack]
    edit_index(root, name_shard(name))
    cfg = load_config(None, ["data.name=shards", f"data.path={str(root)!r}", "data.shards.stream=false"])
    for read in (lambda: read_index(root), lambda: load_data(cfg.data), lambda: verify(root)):
        with pytest.raises(DataError) as error:
            read()
        message = str(error.value)
        assert "\n" not in message
        assert f"split 'train' shard 0 file {name!r} is a path, not a file name" in message
        assert str(root) in message
    assert secret.resolve() not in opened and Path("/etc/passwd") not in opened


def test_a_link_to_a_file_outside_fails_before_it_is_opened(shared, opened):
    root, secret = shared
    (root / "train-00000.b2f").unlink()
    (root / "train-00000.b2f").symlink_to(secret)  # same name, same bytes: only the link gives it away
    leads = re.escape(f"shard 0 file 'train-00000.b2f' leads to {secret.resolve()}, outside")
    with pytest.raises(DataError, match=leads):
        read_index(root)
    unchecked = ShardSplit(root, "train", json_split(root))  # a reader built without read_index
    with pytest.raises(DataError, match=leads):
        unchecked.read(0)
    assert secret.resolve() not in opened


def json_split(root: Path):
    """The train split's SplitInfo straight from the JSON, unchecked (as a caller bypassing read_index)."""
    from behemoth.data.shards.format import SplitInfo

    raw = json.loads((root / "index.json").read_text())["splits"]["train"]
    shards = [ShardInfo(**s) for s in raw.pop("shards")]
    raw.pop("labels", None)
    raw.pop("decode", None)
    return SplitInfo(**raw, decode=None, shards=shards)


def test_the_reader_checks_names_itself(shared, opened):
    root, secret = shared
    split = ShardSplit(root, "train", json_split(root))
    split.info.shards[0].file = "../secret.bin"
    with pytest.raises(DataError, match=r"shard 0 file '\.\./secret\.bin' is a path"):
        split.read(0)
    assert secret.resolve() not in opened


def test_labels_and_the_index_itself_must_be_inside_too(shared, opened):
    root, secret = shared
    labels = root / "train-labels.b2f"
    outside_labels = secret.with_name("labels.bin")
    shutil.copy(labels, outside_labels)
    edit_index(root, lambda index: index["splits"]["train"]["labels"].update(file="../labels.bin"))
    opened.clear()  # the test's own copying above
    with pytest.raises(DataError, match=r"split 'train' labels file '\.\./labels\.bin' is a path"):
        read_index(root)
    moved = secret.with_name("index.json")
    shutil.move(root / "index.json", moved)
    (root / "index.json").symlink_to(moved)
    with pytest.raises(DataError, match=r"the index file 'index\.json' leads to .*, outside the directory"):
        read_index(root)
    assert not {outside_labels.resolve(), moved.resolve()} & set(opened)


@pytest.mark.parametrize(
    "name, problem",
    [
        ("..\\secret.bin", "is a path"),  # a Windows separator
        ("sub/train-00000.b2f", "is a path"),  # inside, but not a plain name: never written by pack
        ("..", "is not a file name"),
        ("", "is not a file name"),
        ("a\0b", "is not a file name"),
        (7, "is not a file name"),
        (["train-00000.b2f"], "is not a file name"),
    ],
)
def test_odd_names_are_refused(shared, name, problem):
    root, _ = shared
    edit_index(root, name_shard(name))
    with pytest.raises(DataError, match=problem):
        read_index(root)


def test_a_pipe_a_folder_or_a_link_loop_is_refused_without_being_opened(shared):
    root, _ = shared
    os.mkfifo(root / "pipe.b2f")  # reading it would block forever
    (root / "loop.b2f").symlink_to(root / "loop.b2f")
    (root / "folder.b2f").mkdir()
    for name, problem in [
        ("pipe.b2f", "is not a regular file"),
        ("folder.b2f", "is not a regular file"),
        ("loop.b2f", "cannot be resolved"),
    ]:
        edit_index(root, name_shard(name))
        with pytest.raises(DataError, match=problem):
            read_index(root)


def test_a_damaged_index_structure_is_one_error(shared):
    root, _ = shared
    edit_index(root, lambda index: index["splits"].update(train=["not", "a", "split"]))
    with pytest.raises(DataError, match="damaged index"):
        read_index(root)


def test_a_file_much_larger_than_the_index_says_is_refused_by_its_size(shared):
    root, _ = shared
    with open(root / "train-00000.b2f", "ab") as handle:
        handle.truncate(
            1 << 30
        )  # sparse: 1 GiB on paper, nothing on disk; its size is checked before reading
    with pytest.raises(DataError, match=r"train-00000\.b2f is truncated or changed: 1073741824 bytes"):
        ShardSplit(root, "train", read_index(root).splits["train"]).read(0)


@pytest.mark.parametrize("attack", ["parent", "absolute", "link"])
def test_inspect_verify_exits_non_zero_naming_the_entry(shared, attack):
    root, secret = shared
    if attack == "link":
        (root / "train-00000.b2f").unlink()
        (root / "train-00000.b2f").symlink_to(secret)
        name = "train-00000.b2f"
    else:
        name = escaping_names(secret)[attack]
        edit_index(root, name_shard(name))
    result = subprocess.run(
        behemoth_cmd("data", "inspect", str(root), "--verify"),
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"shard 0 file {name!r}" in lines[0] and str(root) in lines[0], result.stderr


def test_a_legitimate_directory_still_reads_including_links_inside(shared, digits_bundle):
    root, _ = shared
    (root / "train-00000.b2f").rename(root / "real.bin")
    (root / "train-00000.b2f").symlink_to("real.bin")  # a link that stays inside is fine
    assert verify(root) == sum(len(s.shards) for s in read_index(root).splits.values())
    cfg = load_config(None, ["data.name=shards", f"data.path={str(root)!r}", "data.shards.stream=false"])
    bundle = load_data(cfg.data)
    assert torch.equal(bundle.train.y, digits_bundle.train.y)


# --- DCP sharded checkpoints -----------------------------------------------------------------------------


@pytest.fixture()
def checkpoint(tmp_path) -> tuple[Path, torch.nn.Module]:
    model = mlp(8, 4, 3)
    save_sharded(
        tmp_path / "run" / "dcp", model, torch.optim.SGD(model.parameters(), lr=0.1), distributed=False
    )
    return tmp_path / "run" / "dcp", model


def rewrite_paths(root: Path, name_for) -> str:
    """Rewrite `.metadata` (DCP's own Metadata / _StorageInfo) so one model entry names `name_for(old)`;
    returns that entry's fqn."""
    with open(root / ".metadata", "rb") as handle:
        metadata = pickle.load(handle)  # the test's own file, written a moment ago
    index = next(i for i in metadata.storage_data if i.fqn.startswith("model."))
    info = metadata.storage_data[index]
    metadata.storage_data[index] = dataclasses.replace(info, relative_path=name_for(info.relative_path))
    with open(root / ".metadata", "wb") as handle:
        pickle.dump(metadata, handle)
    return index.fqn


def outside_copy(root: Path, relative: str) -> str:
    """A copy of one data file next to the checkpoint directory: following the name would load it fine."""
    shutil.copy(root / relative, root.parent / "x")
    return relative


@pytest.mark.parametrize("attack", ["parent", "absolute", "system", "link"])
def test_dcp_metadata_naming_a_file_outside_fails_before_it_is_read(checkpoint, opened, attack):
    root, model = checkpoint
    outside = root.parent / "x"

    def name_for(relative: str) -> str:
        outside_copy(root, relative)
        if attack == "link":
            (root / "escape.distcp").symlink_to(outside)
            return "escape.distcp"
        return {"parent": "../x", "absolute": str(outside), "system": "/etc/passwd"}[attack]

    fqn = rewrite_paths(root, name_for)
    opened.clear()
    for read in (
        lambda: read_sharded_weights(root),
        lambda: load_sharded(root, model, torch.optim.SGD(model.parameters(), lr=0.1), [], False),
    ):
        with pytest.raises(RunDirError, match=rf"checkpoint {root}: entry {fqn} names file") as error:
            read()
        assert "\n" not in str(error.value) and "refusing to read it" in str(error.value)
    assert outside.resolve() not in opened and Path("/etc/passwd") not in opened
    assert all(path == (root / ".metadata").resolve() for path in opened)  # nothing but the metadata


def test_an_untouched_checkpoint_still_reads(checkpoint):
    root, model = checkpoint
    weights = read_sharded_weights(root)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


# --- private keys ----------------------------------------------------------------------------------------


def forbid(*_args, **_kwargs):
    raise AssertionError("a key's mode was changed after it was created")


def test_private_keys_are_created_0600_even_with_umask_0(tmp_path, monkeypatch):
    """With chmod and fchmod forbidden and umask 0, a key whose final mode is 0600 was created 0600; the
    fsync spy also sees each key's mode while its bytes are in the file."""
    for module, name in [(os, "chmod"), (os, "fchmod"), (Path, "chmod")]:
        monkeypatch.setattr(module, name, forbid)
    modes: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (modes.append(os.fstat(fd).st_mode), real_fsync(fd))[1])
    old = os.umask(0)
    try:
        tls = make_tls(tmp_path / "tls", "127.0.0.1")
        keys = make_node_keys(tmp_path / "nodes", 2)
    finally:
        os.umask(old)
    private = [tls.server_key, *(key for key, _ in keys)]
    assert [stat.S_IMODE(p.stat().st_mode) for p in private] == [0o600] * 3
    assert len(modes) == 3 and all(stat.S_IMODE(mode) == 0o600 for mode in modes)
    assert b"PRIVATE KEY" in tls.server_key.read_bytes()
    assert sorted(p.name for p in (tmp_path / "nodes").iterdir()) == [
        "node-0.key",
        "node-0.pub",
        "node-1.key",
        "node-1.pub",
    ]  # no temp file left behind


def test_keys_replace_what_was_there_rather_than_write_through_it(tmp_path):
    """A world-readable file or a planted link at a key's path is replaced, never written into."""
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    planted = tmp_path / "planted"
    planted.write_text("attacker's file")
    planted.chmod(0o644)
    (nodes / "node-0.key").symlink_to(planted)
    (nodes / "node-1.key").write_text("old")
    (nodes / "node-1.key").chmod(0o644)
    make_node_keys(nodes, 2)
    assert planted.read_text() == "attacker's file"
    for key in ("node-0.key", "node-1.key"):
        path = nodes / key
        assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o600
