"""The config reference page, generated from the pydantic schema: `python docs/gen/config_reference.py`.

Walks `behemoth.config.RunConfig` section by section and writes every field with its dotted path, type,
default, allowed values (Literal choices, the registries a validator checks against, numeric bounds) and the
comment that explains it. The comments are the `# ...` comments beside each field in behemoth/config/*.py
(and the zoo models' option classes), read from the source with `tokenize`, so the page says what the code
says. The mkdocs hook (docs/gen/hooks.py) renders it on every build; run this file to print it.
"""

import ast
import inspect
import re
import sys
import tokenize
import types
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mdtext import code, md_text  # noqa: E402  (this folder)

SECTION_TITLES = {
    "data": "Data, sampling, augmentation and shards",
    "model": "Model",
    "train": "Training",
    "tune": "Hyperparameter search",
    "explain": "Explanations",
    "compress": "Compression and distillation",
    "federate": "Federated learning",
}


@dataclass
class Comments:
    """The comments of one class body: per field, and the group headings that stand above fields."""

    field: dict[str, str]
    heading: dict[str, str]  # field name -> heading comment that opens a group of fields at that field


@cache
def _module_comments(path: str) -> dict[int, str]:
    """Line number -> the text of the comment on that line."""
    with open(path, "rb") as source:
        return {
            tok.start[0]: tok.string.lstrip("#").strip()
            for tok in tokenize.tokenize(source.readline)
            if tok.type == tokenize.COMMENT
        }


def class_comments(cls: type) -> Comments:
    """Comments of `cls`'s fields: those on the field's own lines (also inside a wrapped `Field(...)` and just
    after its closing parenthesis), and comment lines right above it. A comment block above a field that
    follows a blank line (or opens the class) heads a group of fields; one right under another field is that
    field's own."""
    path = inspect.getsourcefile(cls)
    lines, first = inspect.getsourcelines(cls)
    comments = _module_comments(path)
    tree = ast.parse("".join(lines))
    body = tree.body[0].body
    result = Comments({}, {})
    previous_end = first  # the `class` line
    for node in body:
        start, end = node.lineno + first - 1, node.end_lineno + first - 1
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
            above = []
            line = start - 1
            while line in comments and line > previous_end:
                above.insert(0, comments[line])
                line -= 1
            own = [comments[n] for n in range(start, end + 1) if n in comments]
            # a heading: after a blank line or the class line, or above a field with its own comment
            opens_group = above and (line > previous_end or previous_end == first or own)
            if opens_group:
                result.heading[name] = " ".join(above)
            elif above:
                own = above + own
            if own:
                result.field[name] = " ".join(own)
        previous_end = end
    return result


def inherited_comments(cls: type[BaseModel]) -> Comments:
    """Comments of every field of `cls`, from the class that defines it or, when that one has none (an
    override of a default), from its bases."""
    merged = Comments({}, {})
    ours = [k for k in cls.__mro__ if issubclass(k, BaseModel) and not k.__module__.startswith("pydantic")]
    for klass in reversed(ours):
        found = class_comments(klass)
        merged.field.update(found.field)
        merged.heading.update(found.heading)
    return merged


def sentence(text: str) -> str:
    """A comment as a sentence: capital first letter, full stop."""
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", ")")) else text + "."


def _constants(cls: type) -> dict[str, Any]:
    module = sys.modules[cls.__module__]
    return {k: v for k, v in vars(module).items() if k.isupper()}


def explain_names(text: str, cls: type) -> str:
    """`one of STRATEGIES` -> `one of fedavg | fedprox | ...`: constants a comment names, spelled out."""
    constants = _constants(cls)

    def spell(match: re.Match) -> str:
        value = constants.get(match[0])
        if isinstance(value, str):
            return value
        if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
            return " | ".join(value)
        return match[0]

    return re.sub(r"\b[A-Z][A-Z_]{2,}\b", spell, text)


def _strip(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _sections(annotation: Any) -> list[type[BaseModel]]:
    """The config classes a field holds: `FooConfig`, or `FooOp | None`."""
    annotation = _strip(annotation)
    options = get_args(annotation) if _is_union(annotation) else (annotation,)
    return [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (typing.Union, types.UnionType)


def type_name(annotation: Any) -> str:
    annotation = _strip(annotation)
    if annotation is type(None):
        return "None"
    if get_origin(annotation) is Literal:
        return "str" if all(isinstance(a, str) for a in get_args(annotation)) else "literal"
    if _is_union(annotation):
        return " | ".join(dict.fromkeys(type_name(a) for a in get_args(annotation)))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    origin = get_origin(annotation)
    if origin is not None:
        args = ", ".join(type_name(a) for a in get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(annotation, "__name__", str(annotation))


def _literals(annotation: Any) -> list[Any]:
    annotation = _strip(annotation)
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    if _is_union(annotation):
        return [v for a in get_args(annotation) for v in _literals(a)]
    return []


def _bounds(metadata: list[Any]) -> list[str]:
    """Numeric bounds and patterns pydantic checks (`Field(ge=1)` -> "≥ 1")."""
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥", "pattern": "matches"}
    found = []
    for item in metadata:
        for key, sign in signs.items():
            value = getattr(item, key, None)
            if value is not None:
                found.append(f"{sign} {code(str(value)) if key == 'pattern' else value}")
    return list(dict.fromkeys(found))


def registry_choices() -> dict[str, str]:
    """Allowed values a validator checks against a registry (not a Literal), by dotted path."""
    from behemoth.config.compress import QUANT_CHOICES
    from behemoth.config.data import LOSSLESS_CODECS, LOSSLESS_FILTERS
    from behemoth.config.federate import STRATEGIES
    from behemoth.config.optimizers import OPTIMIZERS

    return {
        "train.optimizer": " \\| ".join(code(n) for n in OPTIMIZERS),
        "federate.strategy": " \\| ".join(code(n) for n in STRATEGIES),
        "compress.quant": md_text(QUANT_CHOICES),
        "data.shards.codec": " \\| ".join(code(n) for n in LOSSLESS_CODECS),
        "data.shards.filter": " \\| ".join(code(n) for n in LOSSLESS_FILTERS),
    }


def toml_value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return code(str(value).lower())
    if isinstance(value, str):
        return code(f'"{value}"')
    if isinstance(value, (tuple, list)):
        return code("[" + ", ".join(_inline(v) for v in value) + "]")
    if isinstance(value, dict):
        return code("{" + ", ".join(f"{k} = {_inline(v)}" for k, v in value.items()) + "}")
    return code(repr(value))


def _inline(value: Any) -> str:
    return (
        f'"{value}"'
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else repr(value)
    )


def default_text(field: FieldInfo) -> str:
    if field.default is PydanticUndefined:
        if field.default_factory is not None:
            return toml_value(field.default_factory())
        return "required"
    return toml_value(field.default)


def allowed_text(path: str, field: FieldInfo, choices: dict[str, str]) -> str:
    if path in choices:
        return choices[path]
    literals = _literals(field.annotation)
    parts = [" \\| ".join(code(str(v)) for v in literals)] if literals else []
    parts += _bounds(field.metadata)
    return ", ".join(parts)


def field_rows(cls: type[BaseModel], prefix: str, choices: dict[str, str]) -> list[tuple[str | None, str]]:
    """(heading or None, table row) for each field of `cls` that is a value, not a sub-section."""
    comments = inherited_comments(cls)
    rows = []
    for name, field in cls.model_fields.items():
        if _sections(field.annotation) and field.default is not None:
            continue  # an always-present sub-section: it gets its own heading
        path = f"{prefix}{name}"
        note = explain_names(comments.field.get(name, ""), cls)
        if _sections(field.annotation):
            note = (note + " " if note else "") + "A table; unset means off (see below)."
            kind = "table"
        else:
            kind = md_text(type_name(field.annotation))
        heading = comments.heading.get(name)
        cells = [code(path), kind, default_text(field), allowed_text(path, field, choices), md_text(note)]
        row = "| " + " | ".join(cells) + " |"
        rows.append((explain_names(heading, cls) if heading else None, row))
    return rows


HEADER = "| key | type | default | allowed | what it does |\n|---|---|---|---|---|"


def section_page(cls: type[BaseModel], prefix: str, level: int, choices: dict[str, str]) -> list[str]:
    """Markdown for `cls` (fields under `prefix`) and, below it, each of its sub-sections."""
    out = []
    doc = inspect.cleandoc(cls.__doc__) if cls.__doc__ and cls.__doc__ is not BaseModel.__doc__ else ""
    if doc:
        out += [md_text(" ".join(doc.split("\n\n")[0].split())), ""]
    rows = field_rows(cls, prefix, choices)
    if rows:
        table = [HEADER]
        for heading, row in rows:
            if heading and len(table) > 1:
                out += [*table, ""]
                table = [HEADER]
            if heading:
                out += [f"*{md_text(heading)}*", ""]
            table.append(row)
        out += [*table, ""]
    comments = inherited_comments(cls)
    for name, field in cls.model_fields.items():
        for sub in _sections(field.annotation):
            path = f"{prefix}{name}"
            out += [f"{'#' * level} `[{path}]`", ""]
            if field.default is not None and name in comments.field:  # a section's comment in its parent
                out += [sentence(md_text(explain_names(comments.field[name], cls))), ""]
            out += section_page(sub, f"{path}.", level + 1, choices)
    return out


def zoo_options() -> list[str]:
    """`[model]` options of each zoo model, from the model's own option class (imports torch)."""
    from behemoth.models.zoo import ZOO

    out = []
    for name, entry in sorted(ZOO.items()):
        out += [f'### `model.name = "{name}"`', "", md_text(entry.summary), ""]
        rows = field_rows(entry.options, "model.", {})
        out += [HEADER, *(row for _, row in rows), ""] if rows else ["No options.", ""]
    return out


INTRO = """\
# Config reference

Every key a run config may hold, generated from the pydantic schema (`behemoth.config.RunConfig`) each
time the site is built: dotted path, type, default, allowed values and the comment beside the field in
the source. Set a key in the TOML file (`[train]` then `lr = 0.05`) or on the command line as a dotted
override (`behemoth train digits train.lr=0.05`). Unknown keys, wrong types and values out of range fail
when the config loads, with one line naming the dotted path. A section read by one command only
(`[tune]`, `[explain]`, `[compress]`, `[federate]`) is ignored by the others.

Regenerate this page by hand with `python docs/gen/config_reference.py`.
"""


def render() -> str:
    from behemoth.config import RunConfig

    choices = registry_choices()
    out = [INTRO, "## Top level", ""]
    out += field_rows_table(RunConfig, choices)
    for name, field in RunConfig.model_fields.items():
        for sub in _sections(field.annotation):
            title = SECTION_TITLES.get(name, name)
            out += [f"## `[{name}]`: {title}", ""]
            note = inherited_comments(RunConfig).field.get(name)
            if note:
                out += [sentence(md_text(note)), ""]
            out += section_page(sub, f"{name}.", 3, choices)
            if name == "model":
                out += [
                    "The other `[model]` keys are the chosen model's own options, checked against that "
                    'model when the config loads. A model of your own (`name = "pkg.module:factory"`) '
                    "gets them as keyword arguments.",
                    "",
                    *zoo_options(),
                ]
    return "\n".join(out).rstrip() + "\n"


def field_rows_table(cls: type[BaseModel], choices: dict[str, str]) -> list[str]:
    rows = field_rows(cls, "", choices)
    return [HEADER, *(row for _, row in rows), ""]


if __name__ == "__main__":
    sys.stdout.write(render())
