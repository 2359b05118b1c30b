"""Row 2 of bench/lm_throughput.py: behemoth `[train.lora]` against transformers' Trainer + peft on a small
Llama (same directory, data, batch, optimizer and precision).

behemoth trains an HF model at T = 128 on a CPU with transformers' "eager" attention (model.attention =
"auto", models/hf_attention.py), Trainer with what from_pretrained loads ("sdpa"). The eager row also times
Trainer given attn_implementation = "eager", so the table can show how much of the ratio is that choice."""

from pathlib import Path

import torch

from bench.results import spread
from bench.throughput_parts import SEQ, StepTimer, steady, summarize, timed_behemoth_run

LLAMA = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "intermediate_size": 688,
    "vocab_size": 256,
}
LORA_BATCH = 16


def small_llama(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**LLAMA, max_position_embeddings=SEQ)).save_pretrained(folder)
    return folder


def lora_config(steps: int, llama: Path, run_root: Path, compiled: bool = False):
    from behemoth.pipeline import load_config

    return load_config(
        None,
        [
            f"runs_dir={str(run_root)!r}",
            "name=lora-throughput",
            "model.name=hf",
            f"model.path={str(llama)!r}",
            "data.name=kjv",
            "data.tokenizer=byte",
            f"data.block_size={SEQ}",
            f"data.batch_size={LORA_BATCH}",
            "data.val_fraction=0.05",
            "train.optimizer=adamw",
            "train.lr=1e-3",
            "train.precision=bf16",
            f"train.max_steps={steps}",
            "train.epochs=1",
            f"train.eval_every_steps={10**6}",
            f"train.log_every={10**6}",
            "train.lora.r=8",
            "train.lora.target_modules=['q_proj','v_proj']",
            f"train.compile={str(compiled).lower()}",
        ],
    )


def behemoth_lora(steps: int, llama: Path, run_root: Path, compiled: bool) -> tuple[list[float], object]:
    seconds, parts = timed_behemoth_run(lora_config(steps, llama, run_root, compiled))
    return seconds, parts.data


def trainer_lora(
    steps: int, llama: Path, data, out: Path, compiled: bool, attention: str | None = None
) -> list[float]:
    """transformers' Trainer on the same windows: input_ids = x, labels = x (the model shifts them);
    `compiled`: its own torch_compile option, as behemoth's side sets train.compile; `attention`: an
    attn_implementation for from_pretrained (None: its default)."""
    import peft
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    chosen = {"attn_implementation": attention} if attention else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(str(llama), local_files_only=True, **chosen)
    model = peft.get_peft_model(
        model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    )
    train_set = [{"input_ids": x, "labels": x} for x in data.train.x[: steps * LORA_BATCH]]
    timer = StepTimer()
    callback = type(
        "Timer",
        (transformers.TrainerCallback,),
        {
            "on_train_begin": lambda self, *a, **k: timer.on_train_start(),
            "on_step_end": lambda self, *a, **k: timer.on_step_end(),
        },
    )
    args = transformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=LORA_BATCH,
        max_steps=steps,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,  # behemoth's side does not clip
        bf16=True,
        use_cpu=True,
        save_strategy="no",
        report_to=[],
        logging_strategy="no",
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
        torch_compile=compiled,
    )
    transformers.Trainer(model=model, args=args, train_dataset=train_set, callbacks=[callback()]).train()
    return timer.seconds


def lora_row(steps: int, rounds: int, root: Path, compiled: bool = False) -> dict:
    """Both sides eager, or (compiled) both through torch.compile: behemoth's train.compile, Trainer's
    torch_compile."""
    llama = small_llama(root / "llama")
    runs: list[dict] = []
    tag = "-compiled" if compiled else ""
    for r in range(rounds):
        b_times, data = behemoth_lora(steps, llama, root / f"lora-runs{tag}{r}", compiled)
        t_times = trainer_lora(steps, llama, data, root / f"trainer{tag}{r}", compiled)
        runs.append(
            {
                "behemoth_tokens_per_s": LORA_BATCH * SEQ / steady(b_times),
                "trainer_tokens_per_s": LORA_BATCH * SEQ / steady(t_times),
                "behemoth_step_seconds": b_times,
                "trainer_step_seconds": t_times,
            }
        )
        line = (
            f"round {r + 1} lora{tag}: behemoth {runs[-1]['behemoth_tokens_per_s']:.0f} tok/s, "
            f"Trainer {runs[-1]['trainer_tokens_per_s']:.0f} tok/s"
        )
        if not compiled:  # the same Trainer, told to use the attention behemoth picks
            e_times = trainer_lora(steps, llama, data, root / f"trainer-eager{r}", False, "eager")
            eager_rate = LORA_BATCH * SEQ / steady(e_times)
            runs[-1]["trainer_eager_attention_tokens_per_s"] = eager_rate
            line += f", Trainer with eager attention {eager_rate:.0f} tok/s"
        print(line, flush=True)
    row = summarize(runs, "trainer")
    if not compiled:
        eager = spread([r["trainer_eager_attention_tokens_per_s"] for r in runs])
        row["trainer_eager_attention_tokens_per_s"] = eager
        row["speedup_vs_trainer_eager_attention"] = row["behemoth_tokens_per_s"]["median"] / eager["median"]
    return row
