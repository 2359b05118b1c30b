"""`behemoth compress` (prune, quantize, share weights, code: a trained run -> a .bhm and a before/after
table) and `behemoth distill` (train a student run from a teacher run)."""

from pathlib import Path

import typer
from rich.console import Console

from behemoth import pipeline
from behemoth.cli.app import app, split_config_args
from behemoth.cli.printing import print_layers, print_table

console = Console(highlight=False, soft_wrap=True)

RECIPE_HELP = (
    "Comma-separated compress.* settings, e.g. prune=0.92,quant=kmeans6,code=huffman "
    "(keys: prune, scope, schedule, structured, retrain_epochs, quant = none|int8|dynamic|qat|kmeans<bits>, "
    "conv_bits, finetune_epochs, code = none|huffman|zstd, ...). Language models: quant=int8w (weight-only "
    "int8 per channel) or quant=int4w,group=128 (int4 in groups of 32, 64 or 128; head=true also quantizes "
    "the output head)."
)


@app.command()
def compress(
    run: Path = typer.Argument(..., help="A trained run directory, e.g. runs/mnist-mlp."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. compress.retrain_epochs=3."),
    recipe: str = typer.Option(None, "--recipe", "-r", help=RECIPE_HELP),
    config: Path = typer.Option(None, "--config", help="A TOML file whose compress section is the recipe."),
    out: Path = typer.Option(
        None, "--out", help="Where to write the .bhm (default <run>/compressed/model.bhm)."
    ),
    onnx: bool = typer.Option(False, "--onnx", help="Also export model.onnx and check it with onnxruntime."),
    latency: bool = typer.Option(
        True, "--latency/--no-latency", help="Measure CPU latency at batch 1 and 256."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars while retraining."),
) -> None:
    """Compress a trained run: pruning (magnitude, gradual, structured), int8 or k-means quantization,
    entropy coding. Writes a .bhm that `behemoth.load_packed` turns back into a model, and prints per step
    (baseline -> pruned -> quantized -> coded) parameters, nonzeros, file bytes on disk, compression,
    test accuracy and error, and latency at batch 1 and 256 on this CPU.
    """
    extra = ([f"compress.output={str(out)!r}"] if out else []) + (["compress.onnx=true"] if onnx else [])
    result = pipeline.compress(
        run,
        recipe,
        list(overrides or []) + extra,
        config=config,
        progress=progress,
        say=lambda text: console.print(text) if progress else None,
        latency=latency,
    )
    print_table(result.rows, Path(run).name)
    print_layers(result.layers)
    if result.onnx:
        o = result.onnx
        console.print(
            f"onnx: {o['file']} ({o['bytes']:,} bytes); onnxruntime vs torch: max |diff| "
            f"{o['max_abs_diff']:.2e}, argmax agreement {o['argmax_agreement']:.2%}"
        )
    console.print(
        f"written {result.artifact} ({result.rows[-1]['bytes']:,} bytes) and {result.out_dir}/compress.json"
    )


@app.command(no_args_is_help=False)
def distill(
    args: list[str] = typer.Argument(
        None,
        help="The student's CONFIG (a .toml file or a recipe name) followed "
        "by overrides like model.preset='2x800'",
    ),
    teacher: Path = typer.Option(
        None, "--teacher", help="The teacher's run directory (or compress.teacher)."
    ),
    temperature: float = typer.Option(
        None, "--temperature", "-T", help="Softmax temperature T (compress.temperature)."
    ),
    alpha: float = typer.Option(
        None, "--alpha", help="Weight of the soft-target term; 1 - alpha on the labels."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace runs/<name> if it exists."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Train a student model against a trained teacher (Hinton et al. 2015): the loss is
    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * cross-entropy.
    Writes runs/<name> like `behemoth train`, with the teacher's test figures beside the student's.
    """
    config_arg, overrides = split_config_args(args or [])
    flags = {"teacher": str(teacher) if teacher else None, "temperature": temperature, "alpha": alpha}
    extra = [
        f"compress.{k}={v!r}" if isinstance(v, str) else f"compress.{k}={v}"
        for k, v in flags.items()
        if v is not None
    ]
    cfg = pipeline.load_config(config_arg or "mnist-mlp", overrides + extra)
    summary = pipeline.distill(cfg, overwrite=overwrite, progress=progress)
    if "test" in summary:
        s, t = summary["test"], summary["teacher_test"]
        console.print(
            f"student {summary['run']}: test accuracy {s['acc']:.4f} ({s['errors']} errors); "
            f"teacher {summary['teacher']}: {t['acc']:.4f} ({t['errors']} errors)"
        )
