"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class BehemothError(Exception):
    """A problem with the user's input (file, dataset, value); shown without a traceback."""

    exit_code = 1


class ConfigError(BehemothError):
    """A config value is unknown, of the wrong type or out of range (exit code 2)."""

    exit_code = 2


class DataError(BehemothError):
    """A dataset is missing, unreadable or inconsistent."""


class ModelError(BehemothError):
    """A model name is unknown or a model does not fit the data."""


class RunDirError(BehemothError):
    """A run directory exists (and --overwrite was not given) or is not a run."""
