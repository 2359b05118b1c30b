"""`behemoth export RUN --hf DIR`: a trained run as a Hugging Face directory that transformers loads with
`AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)`.

behemoth's GPT becomes a GPT-2 (behemoth.models.hf_export maps the weights exactly); a model.name = "hf"
run writes its fine-tuned transformers model back as it is. The run's tokenizer goes with it (bytes become
a 256-token byte-level tokenizer.json with ids equal to the byte values). The directory is built beside its
destination and renamed into place, so a reader never sees half an export.
"""

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from behemoth.config import RunConfig
from behemoth.errors import BehemothError, RunDirError
from behemoth.files import atomic_write_text, fsync_dir
from behemoth.runs import RunDir, read_spec

TOKENIZER_CONFIG = "tokenizer_config.json"
EXPORTABLE = ("gpt", "hf")


@dataclass
class ExportedHF:
    path: Path
    architecture: str  # e.g. GPT2LMHeadModel
    parameters: int
    tokenizer: str | None  # byte, bpe, hf; None for an image classifier


def export_hf(
    run_dir: Path, cfg: RunConfig, out: Path, step: int | None = None, merge: bool = False
) -> ExportedHF:
    """Write run `run_dir`'s model (its final weights, or checkpoint `step`) as a transformers directory;
    `merge` folds a LoRA run's adapters into the weights first (a LoRA run needs it)."""
    check_destination(Path(out))
    if cfg.model.name not in EXPORTABLE:
        raise BehemothError(
            f"export --hf: model.name = {cfg.model.name!r} has no transformers counterpart "
            f"(exportable: {', '.join(EXPORTABLE)})"
        )
    if merge and cfg.train.lora is None:
        raise BehemothError(f"--merge: {run_dir} has no LoRA adapters to fold in (no [train.lora])")
    if cfg.train.lora is not None and not merge:
        raise BehemothError(
            f"{run_dir} trained LoRA adapters: pass --merge to fold them into the exported weights "
            f"(peft loads the adapters alone from {RunDir(run_dir).adapter_dir})"
        )
    spec, _, _ = read_spec(run_dir)
    model = trained_model(run_dir, cfg, step)
    if merge:
        from behemoth.training.lora import merge_lora

        model = merge_lora(model)
    hf = transformers_model(model, cfg.model.name)
    tokenizer = None
    with _built_beside(Path(out)) as tmp:
        hf.save_pretrained(tmp)
        if spec.task == "language_model":
            tokenizer = write_tokenizer(run_dir, cfg, tmp, spec.input_shape[0])
    architecture = type(hf).__name__
    return ExportedHF(Path(out), architecture, sum(p.numel() for p in hf.parameters()), tokenizer)


def trained_model(run_dir: Path, cfg: RunConfig, step: int | None) -> nn.Module:
    """The run's model with its final weights, or with checkpoint `step`'s."""
    from behemoth.models import build_model
    from behemoth.training.assembly import load_trained_model, with_run_lora
    from behemoth.training.checkpoint import checkpoint_at_step, checkpoint_weights, load_model_weights

    if step is None:
        return load_trained_model(run_dir, cfg)
    checkpoint = checkpoint_at_step(run_dir, step)
    if checkpoint is None:
        raise RunDirError(f"{run_dir} has no checkpoint at step {step}")
    model = with_run_lora(build_model(cfg.model.name, cfg.model.options, read_spec(run_dir)[0]), cfg)
    load_model_weights(model, checkpoint_weights(checkpoint))
    return model.eval()


def transformers_model(model: nn.Module, name: str) -> nn.Module:
    """The transformers model to save: behemoth's GPT mapped to GPT-2, or an hf run's own model."""
    if name == "gpt":
        from behemoth.models.hf_export import gpt_to_transformers

        return gpt_to_transformers(model.float())
    return model.hf


def write_tokenizer(run_dir: Path, cfg: RunConfig, folder: Path, context: int) -> str:
    """tokenizer.json and tokenizer_config.json for AutoTokenizer. An hf run's tokenizer_config.json is its
    model directory's (special tokens, chat template); otherwise a plain fast tokenizer that adds nothing
    and cleans up nothing, so its ids and text are exactly behemoth's."""
    from behemoth.data.tokenizers import TOKENIZER_FILE, load_run_tokenizer

    tokenizer = load_run_tokenizer(run_dir)
    atomic_write_text(folder / TOKENIZER_FILE, tokenizer.to_json())
    source = Path(str(cfg.model.options.get("path", ""))) / TOKENIZER_CONFIG
    if cfg.model.name == "hf" and source.is_file() and not source.is_symlink():
        shutil.copyfile(source, folder / TOKENIZER_CONFIG)
    else:
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": context,
            "clean_up_tokenization_spaces": False,
        }
        atomic_write_text(folder / TOKENIZER_CONFIG, json.dumps(config, indent=2) + "\n")
    return tokenizer.name


def check_destination(target: Path) -> None:
    """An existing export may be replaced; any other file or non-empty folder is never deleted."""
    if target.exists() and not (target / "config.json").is_file():
        if not target.is_dir() or any(target.iterdir()):
            raise RunDirError(f"{target} exists and is not a Hugging Face export: refusing to replace it")


@contextlib.contextmanager
def _built_beside(target: Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling of `target`, then swap it in: an existing export is replaced
    only once the new one is complete."""
    check_destination(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.replace(target, aside)
    os.replace(tmp, target)
    fsync_dir(target.parent)
    shutil.rmtree(aside, ignore_errors=True)
