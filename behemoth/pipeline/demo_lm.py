"""`behemoth.demo_lm()` (`behemoth demo --lm`): a language model's life on this machine, in minutes.

Train behemoth's GPT on the KJV (bytes), export it as a Hugging Face GPT-2 directory (read back by
transformers alone), fine-tune that directory with LoRA on Python's own documentation (the `python-docs`
corpus: the standard library's pydoc_data, offline everywhere), pack the fine-tuned model to int4 weights,
sample from every stage with one prompt and seed, attribute one greedy continuation to its prompt tokens,
and write the report. Each stage runs through the same function as its own command.

Everything lives in <runs_dir>/demo-lm: gpt/ (the KJV run), hf/ (its export), python-docs/ (the LoRA run,
with compressed/model.bhm, explain/generation/, generations.json and report/).
"""

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from behemoth.config import config_from_dict
from behemoth.files import atomic_write_text
from behemoth.pipeline.compress import compress
from behemoth.pipeline.config import load_run_config, precision_for_this_cpu
from behemoth.pipeline.explain import explain
from behemoth.pipeline.hf_export import export_hf
from behemoth.pipeline.lm import generate
from behemoth.pipeline.train import run_training
from behemoth.reporting import build_report
from behemoth.runs import RunDir, open_run

PROMPT = "The function "
SAMPLING = {"temperature": 0.8, "top_k": 40, "seed": 0}
FULL = {"gpt_steps": 400, "lora_steps": 200, "new_tokens": 160, "explain_tokens": 6}
# quick: every stage, a few steps each (a smoke test of the chain: the text is noise)
QUICK = {"gpt_steps": 20, "lora_steps": 10, "new_tokens": 24, "explain_tokens": 2}  # no timing either
INT4_RECIPE = "quant=int4w,group=32"


def gpt_overrides(root: Path, steps: int, quick: bool) -> list[str]:
    """gpt-text, shortened to `steps` (its cosine schedule and evaluation scaled to match)."""
    return [
        f"runs_dir={str(root)!r}",
        "name=gpt",
        f"train.max_steps={steps}",
        f"train.warmup={max(1, steps // 10)}",
        f"train.eval_every_steps={steps}",
        f"train.log_every={max(1, steps // 8)}",
        *precision_for_this_cpu(),
        *(["data.test_limit=64", "data.eval_batch_size=64"] if quick else []),
    ]


def lora_config(root: Path, hf_dir: Path, steps: int, quick: bool) -> dict[str, Any]:
    """LoRA (rank 8 on every attention and MLP matrix) on the exported GPT-2, python-docs at block 128."""
    return {
        "name": "python-docs",
        "runs_dir": str(root),
        "data": {
            "name": "python-docs",
            "block_size": 128,
            "batch_size": 16,
            "val_fraction": 0.05,
            **({"test_limit": 32} if quick else {}),
        },
        "model": {"name": "hf", "path": str(hf_dir)},
        "train": {
            "max_steps": steps,
            "optimizer": "adamw",
            "lr": 3e-3,
            "schedule": "cosine",
            "warmup": max(1, steps // 10),
            "eval_every_steps": steps,
            "log_every": max(1, steps // 8),
            "lora": {"r": 8, "alpha": 16.0, "target_modules": ["c_attn", "c_proj", "c_fc"]},
        },
        "compress": {"latency_repeats": 3 if quick else 10},
    }


def demo_lm(
    runs_dir: str = "runs",
    prompt: str = PROMPT,
    quick: bool = False,
    overwrite: bool = False,
    on_stage: Callable[[int, int, str], None] = lambda n, total, title: None,
    on_result: Callable[[str, Any], None] = lambda kind, result: None,
) -> dict[str, Any]:
    """Run the chain; returns each stage's sample, the int4 table, the report's path and the seconds."""
    started = time.perf_counter()
    sizes = QUICK if quick else FULL
    root = Path(runs_dir) / "demo-lm"
    samples: list[dict[str, Any]] = []

    def sample(stage: str, run: Path, source: str, packed: Path | None = None) -> None:
        text = generate(run, prompt, sizes["new_tokens"], packed=packed, **SAMPLING)
        record = {"stage": stage, "source": source, "prompt": prompt, "text": text}
        samples.append({**record, **SAMPLING, "max_new_tokens": sizes["new_tokens"]})
        on_result("sample", record)

    total = 6
    on_stage(1, total, f"train behemoth's GPT on the KJV (bytes, {sizes['gpt_steps']} steps)")
    gpt_cfg = load_run_config("gpt-text", gpt_overrides(root, sizes["gpt_steps"], quick))
    on_result("train", run_training(gpt_cfg, overwrite=overwrite))
    gpt_run = RunDir(root / "gpt").path
    sample("1. GPT trained on the KJV", gpt_run, str(gpt_run))

    on_stage(2, total, "export it as a Hugging Face GPT-2 directory; transformers reads it back")
    exported = export_hf(*open_run(gpt_run), root / "hf")
    from behemoth.lm.exported import transformers_greedy  # transformers loads only now

    theirs = transformers_greedy(exported.path, prompt, 32)
    ours = generate(gpt_run, prompt, 32, temperature=0.0)
    on_result("export", {"export": exported, "greedy_equal": theirs == ours, "greedy": theirs})

    on_stage(3, total, f"LoRA fine-tune the export on Python's documentation ({sizes['lora_steps']} steps)")
    lora_cfg = config_from_dict(
        lora_config(root, exported.path, sizes["lora_steps"], quick), source="behemoth demo --lm"
    )
    on_result("train", run_training(lora_cfg, overwrite=overwrite))
    lora_run = RunDir(root / "python-docs").path
    sample("2. LoRA on python-docs (transformers GPT-2 + peft)", lora_run, str(lora_run))

    on_stage(4, total, f"pack it to int4 weights ({INT4_RECIPE}): perplexity, file bytes, decode speed")
    packed = compress(lora_run, INT4_RECIPE, progress=not quick, latency=not quick)
    on_result("compress", packed)
    sample("3. int4 weights of the fine-tuned model", lora_run, str(packed.artifact), packed.artifact)

    on_stage(5, total, f"attribute a greedy continuation ({sizes['explain_tokens']} tokens) to the prompt")
    on_result("explain", explain(lora_run, prompt=prompt, max_new_tokens=sizes["explain_tokens"]))

    on_stage(6, total, "write the report")
    atomic_write_text(RunDir(lora_run).generations, json.dumps(samples, indent=2, ensure_ascii=False) + "\n")
    html_path, _ = build_report(lora_run)
    return {
        "samples": samples,
        "compression": packed.rows,
        "report": html_path,
        "seconds": time.perf_counter() - started,
        "run": lora_run,
    }
