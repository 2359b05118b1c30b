"""The documentation site cannot drift from the code.

Every fenced block in docs/ is one of: ```python (run), ```bash (each `behemoth ...` line run through the
CLI), ```toml (loaded as a run config) or ```text (output, shown as is). A block that cannot run here is
marked with `<!-- not-run: REASON -->` on the line right before it; its `behemoth` commands and flags are
still checked against the CLI, and its `python bench/...` scripts must exist. The generated reference pages
are checked to cover every config key and every command, and `mkdocs build --strict` (broken links and
anchors, missing API objects) must pass.
"""

import importlib
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from behemoth.config import RunConfig, config_from_dict
from tests.conftest import REPO, subprocess_env

DOCS = REPO / "docs"
GEN = DOCS / "gen"
KINDS = ("python", "bash", "toml", "text")
NOT_RUN = re.compile(r"^<!-- not-run: (?P<reason>\S.*?) -->$")


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    not_run: str | None  # the reason, when marked

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line} ({self.lang})"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of one Markdown page, with the not-run mark of the line before each."""
    found, lines, i = [], page.read_text().splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("```"):
            lang, start = lines[i][3:].strip(), i
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            mark = NOT_RUN.match(lines[start - 1]) if start else None
            code = "\n".join(lines[start + 1 : end]) + "\n"
            found.append(Block(page, start + 1, lang, code, mark["reason"] if mark else None))
            i = end
        i += 1
    return found


PAGES = sorted(p for p in DOCS.rglob("*.md"))
BLOCKS = [b for page in PAGES for b in blocks(page)]


def _gen(name: str):
    if str(GEN) not in sys.path:
        sys.path.insert(0, str(GEN))
    return importlib.import_module(name)


def commands(block: Block) -> list[list[str]]:
    """The shell commands of a bash block, as argument lists (comments dropped, `\\` continuations joined)."""
    text = block.code.replace("\\\n", " ")
    return [
        shlex.split(line, comments=True) for line in text.splitlines() if shlex.split(line, comments=True)
    ]


def test_every_block_is_a_known_kind_and_marks_give_reasons():
    assert PAGES and BLOCKS
    for block in BLOCKS:
        assert block.lang in KINDS, f"{block}: use one of {KINDS}, or write the block as text"
        if block.lang == "bash" and block.not_run is None:
            for argv in commands(block):
                assert argv[0] == "behemoth", f"{block}: {argv[0]!r} cannot run here; mark the block not-run"


def check_command(argv: list[str], where: Block) -> str:
    """Walk `behemoth ...` as click would: options (and their values) of the command reached so far, then
    a subcommand name while there is a group. Returns the command path; fails on an unknown name or flag."""
    import click

    command = _gen("cli_reference").root_command()
    ctx, path, words = click.Context(command, info_name="behemoth"), [], list(argv[1:])
    while words:
        word = words.pop(0)
        if word.startswith("-") and not re.fullmatch(r"-\d.*", word):
            flag = word.split("=", 1)[0]
            option = next(
                (
                    p
                    for p in command.get_params(ctx)
                    if flag in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]
                ),
                None,
            )
            assert option is not None, f"{where}: `behemoth {' '.join(path)}` has no option {flag}"
            if not option.is_flag and "=" not in word:
                words.pop(0)  # its value
        elif isinstance(command, click.Group):
            sub = command.get_command(ctx, word)
            assert sub is not None, f"{where}: `behemoth {' '.join(path)}` has no command {word!r}"
            command, ctx = sub, click.Context(sub, info_name=word, parent=ctx)
            path.append(word)
    assert path and not isinstance(command, click.Group), f"{where}: {' '.join(argv)!r} names no command"
    return " ".join(path)


def test_commands_and_flags_in_the_docs_exist():
    """Even blocks that do not run name real commands, real flags and real benchmark scripts."""
    used = set()
    for block in (b for b in BLOCKS if b.lang == "bash"):
        for argv in commands(block):
            if argv[0] == "python" and argv[1].endswith(".py"):
                assert (REPO / argv[1]).is_file(), f"{block}: no script {argv[1]}"
            if argv[0] == "behemoth":
                used.add(check_command(argv, block))
    assert len(used) >= 15, sorted(used)


def test_toml_blocks_load_as_run_configs():
    tomls = [b for b in BLOCKS if b.lang == "toml" and b.not_run is None]
    assert len(tomls) >= 5
    for block in tomls:
        cfg = config_from_dict(tomllib.loads(block.code), source=str(block))
        assert isinstance(cfg, RunConfig)


RUNNABLE_PAGES = sorted({b.page for b in BLOCKS if b.not_run is None and b.lang in ("python", "bash")})


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=[str(p.relative_to(DOCS)) for p in RUNNABLE_PAGES])
def test_runnable_blocks_run(page, tmp_path):
    """The page's python and bash blocks, in order, in one fresh directory (later blocks see earlier runs)."""
    for block in (b for b in blocks(page) if b.not_run is None and b.lang in ("python", "bash")):
        argvs = (
            [[sys.executable, "-c", block.code]]
            if block.lang == "python"
            else [[sys.executable, "-m", "behemoth", *argv[1:]] for argv in commands(block)]
        )
        for argv in argvs:
            result = subprocess.run(
                argv, cwd=tmp_path, capture_output=True, text=True, env=subprocess_env(), timeout=300
            )
            shown = block.code if block.lang == "python" else " ".join(argv[2:])
            assert result.returncode == 0, f"{block}: {shown}\n{result.stderr[-3000:]}"


def test_pictures_exist_and_come_from_the_script():
    """mkdocs does not check images: every picture a page shows must exist, and docs/images holds exactly
    what docs/gen/pictures.py writes (so rerunning it refreshes every picture, and none is pasted by hand)."""
    shown = set()
    for page in PAGES:
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text()):
            image = (page.parent / target).resolve()
            assert image.is_file(), f"{page.relative_to(REPO)}: no picture {target}"
            shown.add(image.name)
    pictures = _gen("pictures")
    written = {*pictures.REPORT_PLOTS.values(), pictures.GRID_NAME}
    assert {p.name for p in (DOCS / "images").iterdir()} == written
    assert shown == written


def test_config_reference_names_every_key():
    page = _gen("config_reference").render()
    paths = []

    def walk(model, prefix):
        for name, field in model.model_fields.items():
            subs = _gen("config_reference")._sections(field.annotation)
            if not subs or field.default is None:
                paths.append(prefix + name)
            for sub in subs:
                walk(sub, f"{prefix}{name}.")

    walk(RunConfig, "")
    assert len(paths) > 150
    missing = [p for p in paths if f"| `{p}` |" not in page]
    assert not missing, f"config reference lacks {missing[:5]}"
    assert "| `model.n_layer` |" in page  # the zoo models' own options too


def test_comments_are_read_wherever_the_formatter_puts_them(tmp_path, monkeypatch):
    source = """
from pydantic import BaseModel, Field


class Base(BaseModel):
    p: float = 1.0  # from the base class


class Example(Base):
    p: float = 0.5
    plain: int = 1  # on the line
    wrapped: str = (
        "x"  # inside the parentheses
    )
    after: float = Field(
        0.75, gt=0.0
    )  # after the closing parenthesis
    # above, right under another field
    above: int = 2

    # a heading for a group
    grouped: int = 3  # its own
    no_comment: int = 4
"""
    (tmp_path / "docs_example_config.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("docs_example_config")
    ref = _gen("config_reference")
    comments = ref.inherited_comments(module.Example)
    assert comments.field == {
        "p": "from the base class",
        "plain": "on the line",
        "wrapped": "inside the parentheses",
        "after": "after the closing parenthesis",
        "above": "above, right under another field",
        "grouped": "its own",
    }
    assert comments.heading == {"grouped": "a heading for a group"}


def test_cli_reference_lists_every_command_and_option():
    cli = _gen("cli_reference")
    page = cli.render()
    group = cli.root_command()
    import click

    ctx = click.Context(group, info_name="behemoth")
    listed = cli.commands(group, ctx)
    assert len(listed) >= 18
    for command, sub in listed:
        assert f"## `{sub.command_path}`" in page
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert f"`{param.opts[0]}`" in page, f"{sub.command_path} {param.opts[0]}"
    assert "followed by overrides like train.lr=0.05" in page  # an argument's help, which click 8.5 drops


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed: pip install -e '.[docs]'")
    env = subprocess_env() | {"NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    site = tmp_path / "site"
    assert "train.lr" in (site / "reference/config/index.html").read_text()
    assert "--rdzv-endpoint" in (site / "reference/cli/index.html").read_text()
    api = (site / "reference/api/index.html").read_text()
    for name in ("train", "evaluate", "compress", "explain", "federate", "tune", "report"):
        assert f'id="behemoth.pipeline.{name}' in api, name
