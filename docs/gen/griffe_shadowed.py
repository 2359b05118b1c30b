"""griffe extension (mkdocs.yml names it): `behemoth.pipeline.train` is the function the package's
__init__ defines (what `behemoth.train` returns), not the submodule `behemoth/pipeline/train.py`.

Python resolves the attribute to the function (the import in __init__ shadows the submodule); griffe's static
reading keeps the submodule, which would leave the API reference without `train`. This re-reads __init__ on
its own, where no submodule competes, and puts its `train` in the submodule's place."""

import griffe


class PipelineTrain(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        pipeline = pkg.get_member("pipeline") if pkg.path == "behemoth" else None
        if pipeline is None or pipeline.filepath is None:
            return
        alone = griffe.visit("behemoth.pipeline", pipeline.filepath, pipeline.filepath.read_text())
        function = alone.members["train"]
        function.parent = pipeline
        pipeline.members["train"] = function
