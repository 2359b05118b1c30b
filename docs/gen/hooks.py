"""mkdocs hook: the config and CLI reference pages are generated from the code on every build.

Named in mkdocs.yml (`hooks:`). The pages never exist on disk, so they cannot go stale: a field added to
the config or a flag added to the CLI shows up on the next `mkdocs build`.
"""

import sys
from pathlib import Path

GEN = Path(__file__).resolve().parent
REPO = GEN.parents[1]
for path in (str(REPO), str(GEN)):  # this checkout's behemoth, not an installed copy
    if path not in sys.path:
        sys.path.insert(0, path)

import cli_reference  # noqa: E402
import config_reference  # noqa: E402
from mkdocs.structure.files import File  # noqa: E402

PAGES = {"reference/config.md": config_reference.render, "reference/cli.md": cli_reference.render}


def on_files(files, config):
    for uri, render in PAGES.items():
        files.append(File.generated(config, uri, content=render()))
    return files
