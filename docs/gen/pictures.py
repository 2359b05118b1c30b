"""Regenerate the documentation's pictures from a real run: `python docs/gen/pictures.py`.

A quick digits run (scikit-learn's 8x8 digits: offline, about a minute on 2 cores) goes through the public
API the guides describe — train, explain, compress, report — and the pictures a reader would rather look at
than read are copied into docs/images/: the report's plots (taken out of report.html, where they are
inlined), the explanation grid and the compression Pareto plot. Nothing is drawn here; every PNG is what
behemoth itself wrote, so the pictures change when the code does.
"""

import argparse
import base64
import shutil
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import behemoth
from behemoth.runs import RunDir

IMAGES = Path(__file__).resolve().parents[1] / "images"
# the report's <img alt="..."> -> the file name under docs/images/
REPORT_PLOTS = {
    "class balance": "report-class-balance.png",
    "training curves": "report-training-curves.png",
    "per-class scores": "report-per-class.png",
    "confusion matrix": "report-confusion.png",
    "compression trade-offs": "compress-pareto.png",
}
GRID_NAME = "explain-ig-grid.png"
# small settings: a tiny MLP on digits, a few epochs, a light compression recipe
OVERRIDES = [
    "train.epochs=8",
    "train.early_stop.patience=0",
    "train.log_every=5",
    "train.threads=2",
    "name=docs-digits",
]
RECIPE = "prune=0.8,retrain_epochs=2,quant=int8,code=zstd"


class _Images(HTMLParser):
    """Collects {alt: png bytes} from the report's inlined <img src="data:image/png;base64,...">."""

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, bytes] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        src, alt = values.get("src") or "", values.get("alt") or ""
        if tag == "img" and src.startswith("data:image/png;base64,"):
            self.found.setdefault(alt, base64.b64decode(src.split(",", 1)[1]))


def report_images(html: Path) -> dict[str, bytes]:
    """Every inlined PNG of a report page, by its alt text."""
    parser = _Images()
    parser.feed(html.read_text())
    return parser.found


def make_pictures(work: Path, out: Path) -> list[Path]:
    """Train, explain, compress and report a digits run under `work`; copy its pictures into `out`."""
    cfg = behemoth.load_config("digits", [*OVERRIDES, f"runs_dir='{work}'"])
    run = behemoth.train(cfg, overwrite=True, progress=False)["run"]
    behemoth.explain(run, method="ig", samples=4)
    behemoth.compress(run, RECIPE)
    html, _ = behemoth.report(run)
    found = report_images(html)
    missing = sorted(set(REPORT_PLOTS) - set(found))
    if missing:
        raise SystemExit(f"{html}: no plot with alt text {missing[0]!r} (found: {', '.join(sorted(found))})")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for alt, name in REPORT_PLOTS.items():
        (out / name).write_bytes(found[alt])
        written.append(out / name)
    grid = RunDir(Path(run)).explanations / "ig" / "grid.png"
    shutil.copyfile(grid, out / GRID_NAME)
    written.append(out / GRID_NAME)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=IMAGES, help="where the PNGs go (default: docs/images)")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="behemoth-docs-") as work:
        written = make_pictures(Path(work), args.out)
    for path in written:
        print(f"{path} ({path.stat().st_size:,} bytes)")
    print(f"done in {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
