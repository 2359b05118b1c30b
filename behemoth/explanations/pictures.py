"""Pictures of attributions: PNG grids for images, coloured tokens (HTML) for text, bar charts for tables.

One signed colormap everywhere: red pushes the target's score up, blue pushes it down, white is
neutral; each sample is scaled to its own largest |attribution| (shown on its colorbar).
"""

import html
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

CMAP = "bwr"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def image_grid(images: torch.Tensor, attr: torch.Tensor, titles: list[str], heading: str, path: Path) -> None:
    """Rows of (original, signed heatmap with colorbar, heatmap over the image); images (B, C, H, W) in
    [0, 1]."""
    plt = _pyplot()
    rows = len(images)
    fig, axes = plt.subplots(rows, 3, figsize=(8.4, 2.5 * rows + 0.6), squeeze=False)
    heat = attr.sum(1).numpy()  # (B, H, W): channels add up, as the attributions do
    for i in range(rows):
        picture = images[i].permute(1, 2, 0).clamp(0, 1).numpy()  # (H, W, C)
        picture = picture[..., 0] if picture.shape[-1] == 1 else picture
        gray = dict(cmap="gray", vmin=0, vmax=1) if picture.ndim == 2 else {}
        scale = float(np.abs(heat[i]).max()) or 1.0
        axes[i, 0].imshow(picture, **gray)
        axes[i, 0].set_title(titles[i], fontsize=9)
        shown = axes[i, 1].imshow(heat[i], cmap=CMAP, vmin=-scale, vmax=scale)
        axes[i, 1].set_title("attribution", fontsize=9)
        fig.colorbar(shown, ax=axes[i, 1], fraction=0.046, pad=0.04)
        axes[i, 2].imshow(picture.mean(-1) if picture.ndim == 3 else picture, cmap="gray", vmin=0, vmax=1)
        axes[i, 2].imshow(heat[i], cmap=CMAP, vmin=-scale, vmax=scale, alpha=0.55)
        axes[i, 2].set_title("overlay", fontsize=9)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(textwrap.fill(heading, 80), fontsize=10)  # long fidelity headings wrap, never clip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def feature_bars(
    attr: torch.Tensor, names: list[str], titles: list[str], heading: str, path: Path, top: int = 12
) -> None:
    """One horizontal bar chart per sample: the `top` features by |attribution|, signed colours."""
    plt = _pyplot()
    rows = len(attr)
    top = min(top, attr.shape[1])
    fig, axes = plt.subplots(rows, 1, figsize=(7, (0.28 * top + 0.9) * rows + 0.6), squeeze=False)
    for i in range(rows):
        values = attr[i].numpy()
        order = np.argsort(-np.abs(values))[:top][::-1]  # biggest at the top
        ax = axes[i, 0]
        ax.barh(
            [names[k] for k in order],
            values[order],
            color=["#c0392b" if v > 0 else "#2e6fb7" for v in values[order]],
        )
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(titles[i], fontsize=9)
        ax.set_xlabel("attribution (red: raises the target score, blue: lowers it)", fontsize=8)
        ax.tick_params(labelsize=8)
    fig.suptitle(textwrap.fill(heading, 80), fontsize=10)  # long fidelity headings wrap, never clip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _token_text(token: int) -> str:
    """A byte token as one visible character (a UTF-8 continuation byte has no text of its own)."""
    text = bytes([token]).decode("latin-1")
    return {"\n": "↵", " ": "\u00a0", "\t": "⇥"}.get(text, text if text.isprintable() else f"\\x{token:02x}")


def visible(text: str) -> str:
    """A decoded (e.g. BPE) token with its white space made visible."""
    return text.replace("\n", "↵").replace("\t", "⇥").replace(" ", "\u00a0") or "∅"


def token_html(
    tokens: torch.Tensor,
    attr: torch.Tensor,
    titles: list[str],
    heading: str,
    path: Path,
    token_text: Callable[[int], str] = _token_text,
) -> None:
    """Byte tokens (B, T) on a background coloured by their attribution; hover shows the value."""
    rows = []
    for i in range(len(tokens)):
        scale = float(attr[i].abs().max()) or 1.0
        spans = []
        for token, value in zip(tokens[i].tolist(), attr[i].tolist()):
            alpha = min(1.0, abs(value) / scale)
            colour = f"rgba(192,57,43,{alpha:.2f})" if value > 0 else f"rgba(46,111,183,{alpha:.2f})"
            spans.append(
                f'<span style="background:{colour}" title="{value:+.4g}">'
                f"{html.escape(token_text(token))}</span>"
            )
        rows.append(
            f'<h3>{html.escape(titles[i])}</h3>\n<p class="tokens">{"".join(spans)}</p>'
            f'<p class="scale">max |attribution| = {scale:.4g}</p>'
        )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(heading)}</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; }}
.tokens {{ font-family: monospace; font-size: 15px; line-height: 1.9; word-break: break-all; }}
.tokens span {{ padding: 1px 0; }}
.scale {{ color: #666; font-size: 12px; }}
</style></head><body>
<h2>{html.escape(heading)}</h2>
<p>Each token is shaded by its attribution to the next-token logit at the last position:
<span style="background:rgba(192,57,43,0.8)">red raises it</span>,
<span style="background:rgba(46,111,183,0.8)">blue lowers it</span>; hover a token for its value.</p>
{chr(10).join(rows)}
</body></html>
"""
    path.write_text(page)


def _cell(value: float, scale: float) -> str:
    alpha = min(1.0, abs(value) / scale)
    colour = f"rgba(192,57,43,{alpha:.2f})" if value > 0 else f"rgba(46,111,183,{alpha:.2f})"
    return f'<td style="background:{colour}" title="{value:+.4g}">{value:+.2f}</td>'


def generation_matrix(
    prompt_tokens: list[str],
    rows: list[dict],
    methods: list[str],
    heading: str,
) -> str:
    """One table per method: a row per generated token, a column per prompt token, each cell shaded by that
    prompt token's attribution to the generated token (scaled per row); rows carry IG's completeness error.
    Self-contained HTML (inline style, no script); every token is escaped."""
    head = "".join(f"<th>{html.escape(t)}</th>" for t in prompt_tokens)
    tables = []
    for method in methods:
        lines = []
        for row in rows:
            values = row["scores"][method]
            scale = max(abs(v) for v in values) or 1.0
            error = row.get("ig_completeness_error") if method == "ig" else None
            tail = f"<td class='err'>{error:.2%}</td>" if error is not None else ""
            lines.append(
                f"<tr><th class='gen'>{html.escape(row['token'])}</th>"
                f"{''.join(_cell(v, scale) for v in values)}{tail}</tr>"
            )
        extra = "<th>completeness error</th>" if method == "ig" else ""
        tables.append(
            f"<h3>{html.escape(method)}</h3>\n<table><tr><th>generated \\ prompt</th>{head}{extra}</tr>\n"
            + "\n".join(lines)
            + "</table>"
        )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(heading)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-family: monospace; font-size: 12px; }}
th, td {{ border: 1px solid #ddd; padding: 2px 4px; text-align: center; white-space: pre; }}
th.gen {{ text-align: right; }}
td.err {{ color: #555; }}
</style></head><body>
<h2>{html.escape(heading)}</h2>
<p>Each row is a generated token; each cell, how much that prompt token raised
(<span style="background:rgba(192,57,43,0.8)">red</span>) or lowered
(<span style="background:rgba(46,111,183,0.8)">blue</span>) the generated token's log-probability, against
the baseline token in its place; rows are shaded to their own largest value, hover a cell for it.</p>
{chr(10).join(tables)}
</body></html>
"""
