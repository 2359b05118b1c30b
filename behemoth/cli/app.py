"""The `behemoth` Typer app and its error policy: user errors are one line on stderr, no traceback."""

import sys

import typer

from behemoth.errors import BehemothError, ConfigError

app = typer.Typer(
    help="behemoth: train, compress, explain and federate big models on small machines.\n\n"
    "Every command reads a TOML run config; override any field with dotted key=value pairs, "
    "e.g. `behemoth train configs/mnist-cnn.toml train.lr=0.05 data.batch_size=256`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_debug = {"on": False}


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _debug["on"] = debug


def split_config_args(args: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG] [key=value ...]`: the first argument without '=' is the config file or recipe."""
    config = next((a for a in args if "=" not in a), None)
    extra = [a for a in args if "=" not in a and a is not config]
    if extra:
        raise ConfigError(f"unexpected argument {extra[0]!r}: overrides look like section.key=value")
    return config, [a for a in args if "=" in a]


def main() -> None:
    try:
        app()
    except BehemothError as exc:
        if _debug["on"]:
            raise
        print(f"behemoth: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("behemoth: interrupted", file=sys.stderr)
        sys.exit(130)
