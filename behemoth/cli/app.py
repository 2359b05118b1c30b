"""The `behemoth` Typer app and its error policy: user errors are one line on stderr, no traceback."""

import os
import sys
from collections.abc import MutableMapping

import typer

from behemoth.errors import BehemothError, ConfigError
from behemoth.models.trust import ENV_VAR, parse_trust_list, trust_code

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
def _options(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    trusted: list[str] | None = typer.Option(
        None,
        "--trust-code",
        metavar="MODULE",
        help="Let model names ('pkg.module:factory') import code from MODULE or its submodules; repeatable. "
        f"Also read from ${ENV_VAR} (comma-separated). Run directories and .bhm files from elsewhere "
        "import nothing you did not allow.",
    ),
) -> None:
    _debug["on"] = debug
    allow_user_code(trusted or [], os.environ)


def allow_user_code(flags: list[str], environ: MutableMapping[str, str]) -> None:
    """Trust the modules the user named on this command line and in BEHEMOTH_TRUST_CODE.

    The environment is read here, in the CLI's entry point, and nowhere deeper in the library. The union
    is exported back into it because the processes behemoth starts itself inherit this environment but
    not this process's memory: a torchrun worker runs `python -m behemoth ...` and reads it here again;
    Flower's SuperNodes and Ray actors inherit it too, for their ClientApp (not this CLI) to read at its
    own start. Only what the user said travels: nothing a file or a peer names is ever added to it."""
    modules = [*flags, *parse_trust_list(environ.get(ENV_VAR, ""))]
    if not modules:
        return
    trust_code(*modules)
    environ[ENV_VAR] = ",".join(dict.fromkeys(modules))


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
