"""The CLI reference page, generated from the Typer app: `python docs/gen/cli_reference.py`.

Typer builds a click command tree (`typer.main.get_command`); this walks it and writes each command's
usage, help, arguments and options from the same strings `behemoth COMMAND --help` prints, so the page
cannot list a flag the CLI lacks. The mkdocs hook (docs/gen/hooks.py) renders it on every build.
"""

import inspect
import sys
from pathlib import Path

import click
import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mdtext import code, md_text  # noqa: E402  (this folder)

INTRO = """\
# CLI reference

Every `behemoth` command with its arguments and options, generated from the Typer app
(`behemoth.cli.app:app`) each time the site is built; `behemoth COMMAND --help` prints the same. Commands
that take `[ARGS]...` read a config file or recipe name followed by dotted overrides
(`behemoth train digits train.lr=0.01`); every key is in the [config reference](config.md).

Regenerate this page by hand with `python docs/gen/cli_reference.py`.
"""


def root_command() -> click.Group:
    """The click group behind `behemoth`, with every command module registered."""
    from behemoth.cli import app

    return typer.main.get_command(app)


def commands(group: click.Group, ctx: click.Context) -> list[tuple[click.Command, click.Context]]:
    """Every command below `group`, depth first, in the order the CLI lists them."""
    found = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        sub = click.Context(command, info_name=name, parent=ctx)
        found.append((command, sub))
        if isinstance(command, click.Group):
            found += commands(command, sub)
    return found


def _default(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.is_flag and not param.secondary_opts:
        return ""
    if param.default is None or param.default == () or param.required:
        return ""
    if isinstance(param, click.Option) and param.secondary_opts:  # --x/--no-x
        return code(param.opts[0] if param.default else param.secondary_opts[0])
    return code(str(param.default))


def _type(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    text = param.type.name
    if isinstance(param.type, click.types._NumberRangeBase):  # "integer (x>=1)", as --help shows it
        text = f"{text} ({param.type._describe_range()})"
    return md_text(text + (" ..." if param.nargs == -1 or getattr(param, "multiple", False) else ""))


def _help(param: click.Parameter, command: click.Command) -> str:
    """The parameter's help. An argument's comes from its `typer.Argument(help=...)`: click 8.5 drops it
    from the click object (so `--help` does not show it either)."""
    text = getattr(param, "help", None)
    if text is None and command.callback is not None:
        declared = inspect.signature(command.callback).parameters.get(param.name)
        text = getattr(getattr(declared, "default", None), "help", None)
    return md_text(" ".join((text or "").split()))


def param_rows(command: click.Command, ctx: click.Context) -> list[str]:
    """One table row per argument and option (not --help, which every command has)."""
    rows = []
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False) or param.name == "help":
            continue
        if isinstance(param, click.Argument):
            name = code(param.human_readable_name)
            kind = "argument" + (", required" if param.required else "")
        else:
            name = " / ".join(code(o) for o in [*param.opts, *param.secondary_opts])
            kind = "option" + (", required" if param.required else "")
        rows.append(f"| {name} | {kind} | {_type(param)} | {_default(param)} | {_help(param, command)} |")
    return rows


def command_page(command: click.Command, ctx: click.Context) -> list[str]:
    path = ctx.command_path
    usage = " ".join([path, *command.collect_usage_pieces(ctx)])
    out = [f"## `{path}`", "", "```text", usage, "```", ""]
    doc = inspect.cleandoc(command.help or "")
    for paragraph in doc.split("\n\n"):
        out += [md_text(" ".join(paragraph.replace("\b", "").split())), ""]
    if isinstance(command, click.Group):
        names = command.list_commands(ctx)
        out += ["Subcommands: " + ", ".join(f"[`{n}`](#{_anchor(f'{path} {n}')})" for n in names) + ".", ""]
        return out
    rows = param_rows(command, ctx)
    if rows:
        out += ["| name | kind | type | default | what it does |", "|---|---|---|---|---|", *rows, ""]
    if command.epilog:
        out += [md_text(" ".join(command.epilog.split())), ""]
    return out


def _anchor(title: str) -> str:
    """The id mkdocs (toc extension) gives a heading such as `behemoth data pack`."""
    return "-".join(title.lower().replace("`", "").split())


def render() -> str:
    group = root_command()
    ctx = click.Context(group, info_name="behemoth")
    out = [INTRO, "## `behemoth`", ""]
    out += [md_text(" ".join(p.split())) + "\n" for p in inspect.cleandoc(group.help or "").split("\n\n")]
    out += ["| name | kind | type | default | what it does |", "|---|---|---|---|---|"]
    out += [*param_rows(group, ctx), ""]
    out += ["Global options go before the command: `behemoth --debug train digits`.", ""]
    for command, sub in commands(group, ctx):
        out += command_page(command, sub)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
