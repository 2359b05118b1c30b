"""The user's allow-list of code that a model name may import ("pkg.module:factory").

A model name can come from files someone else wrote: a .bhm header, a run directory's config.toml, a
server's config. Importing the module it names runs that module's code, and calling the factory can do
anything (`os:system` with `{"command": ...}`). So a name imports code only when the user allowed its
module, or a parent package, in this process: on their command line (`--trust-code`), in their
environment (BEHEMOTH_TRUST_CODE, read by the CLI's entry point only) or from Python (`trust_code`).
Zoo models need no permission: their code is behemoth's own.
"""

from behemoth.errors import ConfigError

ENV_VAR = "BEHEMOTH_TRUST_CODE"

_TRUSTED: set[str] = set()


class UntrustedCodeError(ConfigError):
    """A name asks to import code from a module the user did not allow."""


def trust_code(*modules: str) -> None:
    """Allow `module:factory` names from these modules and their submodules, for the rest of this process."""
    checked = [_module_name(module) for module in modules]  # all or none: a typo allows nothing
    _TRUSTED.update(checked)


def trusted_modules() -> list[str]:
    """The modules and packages allowed so far (sorted), e.g. to hand on to a child process."""
    return sorted(_TRUSTED)


def is_trusted(module: str) -> bool:
    """Whether `module` is allowed: named itself, or inside an allowed package."""
    return any(module == allowed or module.startswith(allowed + ".") for allowed in _TRUSTED)


def check_trusted(name: str) -> None:
    """Refuse a "module:factory" `name` whose module the user did not allow, before anything imports it."""
    module = name.partition(":")[0]
    if is_trusted(module):
        return
    raise UntrustedCodeError(
        f"model.name = {name!r}: behemoth imports no code a file names unless you allow it: "
        f"pass --trust-code {module} (or set {ENV_VAR}={module}, "
        f'or call behemoth.trust_code("{module}"))'
    )


def check_defined_in_trusted(name: str, factory: object) -> None:
    """Refuse a factory that a trusted module only imported from elsewhere (`from os import system`):
    allowing a module allows the code written there, not everything that code can reach."""
    origin = getattr(factory, "__module__", None)
    if isinstance(origin, str) and is_trusted(origin):
        return
    raise UntrustedCodeError(
        f"model.name = {name!r}: {name.partition(':')[2]} is defined in {origin}, which you have not "
        f"allowed: pass --trust-code {origin} (or set {ENV_VAR}={origin}, "
        f'or call behemoth.trust_code("{origin}"))'
    )


def parse_trust_list(value: str) -> list[str]:
    """The modules in a BEHEMOTH_TRUST_CODE value: comma-separated, blanks ignored."""
    return [part.strip() for part in value.split(",") if part.strip()]


def _module_name(module: str) -> str:
    """`module` if it is a dotted module name; a ConfigError otherwise (no wildcards, no "pkg:factory")."""
    if not module or not all(part.isidentifier() for part in module.split(".")):
        raise ConfigError(
            f"trust code {module!r}: expected a module or package name, e.g. 'mypackage.models'"
        )
    return module
