"""Hugging Face causal LMs generate with transformers' `generate` and its KV cache: greedy tokens equal a
cache-free argmax loop, a seed reproduces a sampled text, the end-of-sequence token does not stop it, padded
vocabulary ids are never drawn, and the stream joins to the same text (API and CLI)."""

import pytest
import torch
from typer.testing import CliRunner

from behemoth.cli.app import app
from behemoth.data.tokenizers import ByteTokenizer
from behemoth.lm.generate import generate_text, stream_text
from behemoth.models.hf import HFCausalLM
from behemoth.models.hf_generate import hf_generate
from behemoth.models.sampling import sample
from tests.hf_tiny import tiny_llama

PROMPT = "In the beginning"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny random Llama over 300 ids, used with the 256-id byte tokenizer (its vocabulary is padded)."""
    from transformers import LlamaForCausalLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tiny_llama(tmp_path_factory.mktemp("llama") / "m", 300, context=64)
    yield folder, HFCausalLM(LlamaForCausalLM.from_pretrained(folder).eval(), 256)
    torch.set_num_threads(threads)


def spy_on_generate(model: HFCausalLM) -> list[int]:
    calls: list[int] = []
    original = model.hf.generate

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.hf.generate = counted
    return calls


def test_greedy_cached_tokens_equal_a_cache_free_argmax_loop(llama):
    _, model = llama
    ids = torch.tensor([list(PROMPT.encode())])  # (1, 16)
    cached = hf_generate(model, ids, 24, temperature=0.0)
    loop = sample(model, ids, 24, temperature=0.0)  # cache-free: the whole text re-read per token
    assert cached.shape == (1, 16 + 24) and torch.equal(cached, loop)
    assert torch.equal(hf_generate(model, ids, 24, temperature=0.7, top_k=1), loop)  # top_k 1 is greedy too
    calls = spy_on_generate(model)
    text = generate_text(model, ByteTokenizer(), PROMPT, 24, temperature=0.0, context=64)
    assert calls and text == ByteTokenizer().decode(loop[0])
    del model.hf.generate


def test_end_of_sequence_does_not_stop_generation(llama):
    _, model = llama
    ids = torch.tensor([list(PROMPT.encode())])
    first = int(sample(model, ids, 1, temperature=0.0)[0, -1])
    eos = model.hf.generation_config.eos_token_id
    model.hf.generation_config.eos_token_id = first  # the very first greedy token is "end of sequence"
    try:
        assert hf_generate(model, ids, 8, temperature=0.0).shape == (1, 16 + 8)
    finally:
        model.hf.generation_config.eos_token_id = eos


def test_seeded_sampling_reproduces_and_leaves_the_callers_rng(llama):
    _, model = llama
    ids = torch.tensor([list(PROMPT.encode())])
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = hf_generate(model, ids, 32, temperature=1.5, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # fork_rng: the caller's random state is untouched
    b = hf_generate(model, ids, 32, temperature=1.5, seed=7)
    c = hf_generate(model, ids, 32, temperature=1.5, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a[0, 16:].max()) < 256 and int(c[0, 16:].max()) < 256  # padded ids 256..299 never drawn
    top = hf_generate(model, ids, 32, temperature=1.5, top_k=3, seed=7)[0, 16:]
    logits = model(torch.cat([ids[0], top]).unsqueeze(0))[0, 15:-1]  # (32, V): each drawn token's logits
    ranks = (logits > logits.gather(1, top.unsqueeze(1))).sum(1)
    assert int(ranks.max()) < 3  # top_k 3: every token among the three likeliest


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_stream_joins_to_the_generated_text(llama, temperature):
    _, model = llama
    tok = ByteTokenizer()
    whole = generate_text(model, tok, PROMPT, 20, temperature=temperature, context=64, seed=3)
    pieces = list(stream_text(model, tok, PROMPT, 20, temperature=temperature, context=64, seed=3))
    assert len(pieces) > 2 and "".join(pieces) == whole


def test_cli_generate_streams_from_an_hf_run(llama, tmp_path):
    """`behemoth generate RUN --stream` on a 2-step hf run: the same text as without --stream."""
    from behemoth.config import load_config
    from behemoth.pipeline import run_training
    from tests.hf_tiny import write_text

    folder, _ = llama
    text = write_text(tmp_path / "text", verses=300)
    cfg = load_config(
        None,
        [
            f"runs_dir={str(tmp_path / 'runs')!r}",
            "name=llama",
            "model.name=hf",
            f"model.path={str(folder)!r}",
            "data.name=text",
            f"data.path={str(text)!r}",
            "data.tokenizer=byte",
            "data.block_size=32",
            "data.batch_size=8",
            "data.val_fraction=0.05",
            "data.test_limit=16",
            "train.max_steps=2",
            "train.optimizer=adamw",
            "train.threads=1",
        ],
    )
    run_training(cfg, progress=False)
    args = ["generate", str(tmp_path / "runs" / "llama"), "--prompt", "And God", "--max-new-tokens", "12"]
    args += ["--temperature", "0.9", "--seed", "5"]
    plain = CliRunner().invoke(app, args)
    streamed = CliRunner().invoke(app, [*args, "--stream"])
    assert plain.exit_code == 0 and streamed.exit_code == 0, plain.output + streamed.output
    assert plain.output.startswith("And God") and plain.output == streamed.output
