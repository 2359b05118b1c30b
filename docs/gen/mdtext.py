"""Small helpers shared by the generated reference pages: text from code, made safe for Markdown tables."""

import re

_CODE = re.compile(r"(`[^`]*`)")


def md_text(text: str) -> str:
    """Plain text (a help string, a source comment) as Markdown: `code` spans kept, the rest escaped where
    Markdown would read it as markup (`<run>` as an HTML tag, `*` as emphasis, `|` as a table cell)."""
    parts = _CODE.split(text)
    for i in range(0, len(parts), 2):  # even parts are outside backticks
        parts[i] = (
            parts[i]
            .replace("&", "&amp;")
            .replace("<", "&lt;")
            .replace(">", "&gt;")
            .replace("*", r"\*")
            .replace("_", r"\_")
            .replace("[", r"\[")
        )
    return "".join(parts).replace("|", r"\|")


def escape_html(text: str) -> str:
    """Angle brackets and ampersands outside `code` spans as entities, the rest of the Markdown kept."""
    parts = _CODE.split(text)
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "".join(parts)


def code(text: str) -> str:
    """Inline code that survives a table cell (a `|` inside code still splits the cell otherwise)."""
    return "`" + text.replace("|", r"\|") + "`"
