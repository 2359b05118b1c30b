"""FSDP2 over a Hugging Face causal LM (a tiny local Llama): `model_blocks` finds its decoder layers (peft
wrapped or not), FSDP shards and activation checkpointing go per layer, 2 processes (torchrun, gloo) train
as one process does on the same global batch (full fine-tuning and LoRA), and the DCP checkpoints reshard:
written by 2 processes and resumed by 1, and the other way round, on the one-process loss curve."""

import json

import pytest
import torch
from safetensors.torch import load_file

import behemoth
from behemoth.distributed.blocks import model_blocks
from behemoth.distributed.dcp import read_sharded_weights
from behemoth.runs import RunDir, open_run
from tests.conftest import behemoth_cmd
from tests.hf_tiny import TINY, hf_text_args, lora_corpus
from tests.test_distributed import assert_same_weights, run

VOCAB = 300
LORA = ["train.lora.r=4", 'train.lora.target_modules=["q_proj", "v_proj"]', "train.lora.dropout=0"]
# fp32, a constant lr (so a run may be cut and extended), a loss per step, a checkpoint at step 4 of 8
STEPS = [
    "train.precision=fp32",
    "train.schedule=constant",
    "train.warmup=0",
    "train.max_steps=8",
    "train.log_every=1",
    "train.eval_every_steps=100",
    "train.checkpoint.every_steps=4",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_fsdp")
    return (root, *lora_corpus(root, VOCAB))


def args(corpus, name: str, *extra: str) -> list[str]:
    root, text, llama = corpus
    plain = [a for a in hf_text_args(root, text, llama, name) if not a.startswith("train.lora.")]
    return [*plain, *STEPS, *extra]


def losses(run_dir) -> list[float]:
    records = map(json.loads, RunDir(run_dir).metrics.read_text().splitlines())
    return [r["train.loss"] for r in records if r["kind"] == "train"]


def assert_same_curve(run_dir, reference) -> float:
    ours, theirs = losses(run_dir), losses(reference)
    assert len(ours) == len(theirs) == 8
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)
    return max(abs(a - b) for a, b in zip(ours, theirs))


def torchrun(corpus, name: str, *extra: str) -> None:
    """`behemoth train` with 2 processes, from a config file written by an in-process run (the CLI's
    default recipe is not an hf model)."""
    root = corpus[0]
    config = root / "runs" / "one" / "config.toml"
    run(behemoth_cmd("train", str(config), *args(corpus, name), *extra, "--nproc", "2", "--no-progress"))


def test_decoder_layers_are_the_blocks_with_and_without_peft():
    import peft
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from behemoth.models.hf import HFCausalLM

    llama = HFCausalLM(LlamaForCausalLM(LlamaConfig(**TINY, vocab_size=64)), 64)
    assert model_blocks(llama) == list(llama.hf.model.layers)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=3, n_head=2, vocab_size=64, bos_token_id=0))
    assert model_blocks(HFCausalLM(gpt2, 64)) == list(gpt2.transformer.h)
    llama.hf = peft.get_peft_model(llama.hf, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    layers = model_blocks(llama)
    assert [type(layer).__name__ for layer in layers] == ["LlamaDecoderLayer"] * TINY["num_hidden_layers"]
    assert layers == list(llama.hf.base_model.model.model.layers)
    # a model that names no unsplittable classes: transformers' usual attribute paths
    gpt2._no_split_modules = None
    assert model_blocks(HFCausalLM(gpt2, 64)) == list(gpt2.transformer.h)


def test_fsdp_shards_each_decoder_layer_of_a_lora_model():
    """fully_shard per decoder layer (frozen base and trainable adapters in one unit), then the root; the
    adapters stay the only trainable parameters (a 1-process gloo group: the wrapping, not the maths)."""
    import peft
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from transformers import LlamaConfig, LlamaForCausalLM

    from behemoth.distributed import DistEnv
    from behemoth.distributed.fsdp import shard_model
    from behemoth.models.hf import HFCausalLM

    model = HFCausalLM(LlamaForCausalLM(LlamaConfig(**TINY, vocab_size=64)), 64)
    model.hf = peft.get_peft_model(model.hf, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        shard_model(model, DistEnv())
        assert isinstance(model, FSDPModule)
        assert all(isinstance(layer, FSDPModule) for layer in model_blocks(model))
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        assert len(trainable) == 2 * 2 * TINY["num_hidden_layers"] and all("lora_" in n for n in trainable)
        model(torch.randint(0, 64, (2, 8))).sum().backward()
        assert all((p.grad is not None) == p.requires_grad for p in model.parameters())
    finally:
        dist.destroy_process_group()


def test_a_4bit_base_that_cannot_be_split_fails_in_one_line():
    """The tiny Llama's NF4 weights have one scale factor each, which 2 ranks cannot split: a ConfigError,
    not torchao's assertion (torch's fake process group: a world of 2 in this one process)."""
    import peft
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from transformers import LlamaConfig, LlamaForCausalLM

    from behemoth.distributed import DistEnv
    from behemoth.distributed.fsdp import shard_model
    from behemoth.errors import ConfigError
    from behemoth.models.hf import HFCausalLM
    from behemoth.training.qlora import quantize_frozen_base

    model = HFCausalLM(LlamaForCausalLM(LlamaConfig(**TINY, vocab_size=64)), 64)
    model.hf = peft.get_peft_model(model.hf, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    quantize_frozen_base(model.hf, 4)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        with pytest.raises(ConfigError, match="LlamaDecoderLayer's parameters cannot be sharded over 2 proc"):
            shard_model(model, DistEnv(rank=0, world_size=2))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # the LoRA test below shards the same decoder layers on 2 ranks and reshards 1 -> 2
def test_full_fine_tuning_fsdp_matches_one_process_and_resumes_in_one(corpus):
    """FSDP (with activation checkpointing per decoder layer) on 2 ranks for 4 steps = one process; one
    process resumes its sharded checkpoint and ends on the one-process curve, with its weights."""
    root = corpus[0]
    behemoth.train(None, args(corpus, "one"), progress=False)
    torchrun(
        corpus, "fsdp", "train.strategy=fsdp", "train.activation_checkpointing=true", "train.max_steps=4"
    )
    run_dir = root / "runs" / "fsdp"
    dcp = RunDir(run_dir).checkpoints / "step-00000004" / "dcp"
    assert sorted(p.name for p in dcp.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    _, cfg = open_run(run_dir, ["train.max_steps=8"])  # world size 1: trains as `single`
    behemoth.train(cfg, resume=run_dir, progress=False)
    print("max |loss 2 procs - 1 proc|, full:", assert_same_curve(run_dir, root / "runs" / "one"))
    assert_same_weights(
        load_file(str(run_dir / "model.safetensors")), load_file(str(root / "runs/one/model.safetensors"))
    )


def test_lora_fsdp_resumes_one_process_and_matches_it(corpus):
    """LoRA: one process for 4 steps, FSDP on 2 ranks resumes it to step 8: the one-process curve and
    adapters (in the checkpoint, model.safetensors and peft's adapter folder); the shards hold only the
    adapters."""
    root = corpus[0]
    behemoth.train(None, args(corpus, "lora_one", *LORA), progress=False)
    behemoth.train(None, args(corpus, "lora_fsdp", *LORA, "train.max_steps=4"), progress=False)
    run_dir, reference = root / "runs" / "lora_fsdp", root / "runs" / "lora_one"
    run(
        behemoth_cmd(
            "train",
            "--resume",
            str(run_dir),
            "train.max_steps=8",
            "train.strategy=fsdp",
            "--nproc",
            "2",
            "--no-progress",
        )
    )
    print("max |loss 2 procs - 1 proc|, lora:", assert_same_curve(run_dir, reference))
    adapters = load_file(str(reference / "model.safetensors"))
    assert adapters and all("lora_" in name for name in adapters)
    shards = read_sharded_weights(RunDir(run_dir).checkpoints / "step-00000008" / "dcp")
    assert_same_weights(shards, adapters)
    assert_same_weights(load_file(str(run_dir / "model.safetensors")), adapters)
    peft_file = "adapter_model.safetensors"
    assert_same_weights(
        load_file(str(RunDir(run_dir).adapter_dir / peft_file)),
        load_file(str(RunDir(reference).adapter_dir / peft_file)),
    )
