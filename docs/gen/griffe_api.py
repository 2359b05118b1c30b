"""griffe extensions for the API reference (mkdocs.yml names them).

- PipelineTrain: `behemoth.pipeline.train` is the function the package's __init__ defines (what
  `behemoth.train` returns), not the submodule `behemoth/pipeline/train.py`. Python resolves the attribute to
  the function (the import in __init__ shadows the submodule); griffe's static reading keeps the submodule,
  which would leave the reference without `train`. This re-reads __init__ on its own, where no submodule
  competes, and puts its `train` in the submodule's place.
- PlainDocstrings: the docstrings are plain text (`<run>/eval.json`, `runs/<name>`), but mkdocstrings reads
  them as Markdown, where `<name>` is an HTML tag and vanishes. Angle brackets outside `code` are escaped.
"""

import sys
from pathlib import Path

import griffe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mdtext import escape_html  # noqa: E402  (this folder)


class PipelineTrain(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        pipeline = pkg.get_member("pipeline") if pkg.path == "behemoth" else None
        if pipeline is None or pipeline.filepath is None:
            return
        alone = griffe.visit("behemoth.pipeline", pipeline.filepath, pipeline.filepath.read_text())
        function = alone.members["train"]
        function.parent = pipeline
        pipeline.members["train"] = function
        if function.docstring is not None:
            function.docstring.value = escape_html(function.docstring.value)


class PlainDocstrings(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = escape_html(obj.docstring.value)
