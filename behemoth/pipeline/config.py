"""Run configs as a user names them: a TOML file or a shipped recipe, dotted overrides, and the model's own
options checked before any work starts (behemoth.config alone cannot: the model classes live with torch)."""

from importlib import resources
from pathlib import Path

from behemoth.config import RunConfig, apply_overrides, config_from_dict, load_config
from behemoth.config.loader import read_toml
from behemoth.cpu import lacks_native_bf16
from behemoth.errors import ConfigError
from behemoth.models import check_model_config


def recipe_names() -> list[str]:
    """The configs shipped with behemoth (behemoth/configs/*.toml), by name."""
    return sorted(
        p.name[:-5] for p in resources.files("behemoth.configs").iterdir() if p.name.endswith(".toml")
    )


def resolve_config(arg: str | Path) -> Path:
    """A config file path, or the name of a shipped recipe (e.g. `mnist-cnn`)."""
    path = Path(arg)
    if path.is_file():
        return path
    recipe = resources.files("behemoth.configs") / f"{arg}.toml"
    if recipe.is_file():
        return Path(str(recipe))
    raise ConfigError(f"config file not found: {arg} (shipped recipes: {', '.join(recipe_names())})")


def checked(cfg: RunConfig) -> RunConfig:
    check_model_config(cfg.model)
    return cfg


def load_run_config(config: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """A file or recipe name (None: the defaults) with dotted overrides, validated including [model]."""
    return checked(load_config(resolve_config(config) if config is not None else None, overrides))


def config_with_section(base: Path, section: str, source: Path | None, overrides: list[str]) -> RunConfig:
    """`base` (a run's config.toml) with [section] taken from the TOML file `source`, then the overrides."""
    raw = read_toml(base)
    if source is not None:
        extra = read_toml(source).get(section)
        if not isinstance(extra, dict):
            raise ConfigError(f"{source}: no [{section}] section")
        raw[section] = {**raw.get(section, {}), **extra}
    return checked(config_from_dict(apply_overrides(raw, overrides), source=str(source or base)))


def precision_for_this_cpu() -> list[str]:
    """The override the demos add on a CPU without bf16 instructions: the shipped recipes train in bf16,
    which is fast only with them (on an AVX2 EPYC the demo tests' runs took 207 s and 260 s in bf16, 56 s
    and 45 s in fp32)."""
    return ["train.precision=fp32"] if lacks_native_bf16() else []
