"""KV-cache generation for the GPT: the same tokens as the cache-free loop (greedy, fp32, past block_size
too), batched prompts of different lengths as if alone, seeded sampling reproducible, streamed text that
joins to the whole text, and `behemoth generate --stream` on a real (briefly trained) run."""

import pytest
import torch
from typer.testing import CliRunner

from behemoth.cli.app import app
from behemoth.data.tokenizers import ByteTokenizer
from behemoth.lm import generate_text, generate_texts, sample, sample_cached, stream_text
from behemoth.models.gpt import GPT, GPTOptions

pytestmark = pytest.mark.usefixtures("single_thread")
runner = CliRunner()


def tiny_gpt(block_size: int = 16, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(256, GPTOptions(n_layer=2, n_head=2, n_embd=32, block_size=block_size)).eval()


@pytest.mark.parametrize("prompt_len, context", [(5, 16), (3, 10), (25, 16), (1, 16)])
def test_greedy_with_cache_gives_the_cache_free_tokens(prompt_len, context):
    """5 + 40 tokens and a 25-token prompt both run past the window: the cached loop re-prefills it."""
    model = tiny_gpt()
    idx = torch.randint(0, 256, (2, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    free = sample(model, idx, 40, temperature=0, context=context)
    cached = sample_cached(model, idx, 40, temperature=0, context=context)
    assert torch.equal(free, cached)
    if context == 16:  # GPT.generate reads block_size tokens, through the cache by default
        assert torch.equal(model.generate(idx, 40, temperature=0), free)
    assert torch.equal(model.generate(idx, 12, top_k=1), model.generate(idx, 12, top_k=1, use_cache=False))


def test_the_cache_reads_the_prompt_once_then_one_token_per_step():
    model = tiny_gpt(block_size=16)
    seen = []
    decode = model.decode
    model.decode = lambda ids, cache: seen.append(ids.size(1)) or decode(ids, cache)  # type: ignore[method-assign]
    sample_cached(model, torch.randint(0, 256, (1, 6)), 14, temperature=0)
    assert seen == [6] + [1] * 10 + [16] * 3  # after 16 tokens the window slides: re-prefilled each step


def test_batched_prompts_of_different_lengths_continue_as_each_alone():
    model = tiny_gpt(block_size=16)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 256, (n,), generator=g) for n in (2, 9, 14)]
    longest = max(len(p) for p in prompts)
    pad = torch.tensor([longest - len(p) for p in prompts])
    ids = torch.stack([torch.cat([torch.full((longest - len(p),), 7), p]) for p in prompts])  # left padding
    out = sample_cached(model, ids, 12, temperature=0, context=16, pad=pad)  # rows cross the window at 16
    for i, p in enumerate(prompts):
        alone = sample(model, p.unsqueeze(0), 12, temperature=0, context=16)
        assert torch.equal(out[i, longest:], alone[0, len(p) :]), i
    texts = generate_texts(model, ByteTokenizer(), ["In", "And God said"], 10, temperature=0)
    assert texts == [
        generate_text(model, ByteTokenizer(), p, 10, temperature=0) for p in ["In", "And God said"]
    ]


def test_seeded_sampling_with_the_cache_is_reproducible():
    model = tiny_gpt()
    idx = torch.randint(0, 256, (1, 4))

    def draw(seed: int) -> torch.Tensor:
        return sample_cached(model, idx, 30, 1.0, 20, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))
    bf16 = tiny_gpt().to(torch.bfloat16)  # the cache takes the dtype the layers compute in
    assert sample_cached(bf16, idx, 5, temperature=0).shape == (1, 9)


class Scripted(torch.nn.Module):
    """A cached 'model' that writes a fixed byte sequence, to test streaming over multi-byte characters."""

    block_size = 64

    def __init__(self, script: bytes) -> None:
        super().__init__()
        self.script, self.step, self.weight = list(script), 0, torch.nn.Parameter(torch.zeros(1))

    def new_cache(self, capacity, pad):
        from behemoth.models.kv_cache import KVCache

        return KVCache.empty(1, capacity, pad)

    def decode(self, ids, cache):
        cache.length += ids.size(1)
        logits = torch.zeros(ids.size(0), 256)
        logits[:, self.script[self.step]] = 1.0
        self.step += 1
        return logits


def test_stream_yields_whole_characters_and_joins_to_the_text():
    script = "a é ß 😀!".encode()
    pieces = list(stream_text(Scripted(script), ByteTokenizer(), "> ", len(script), temperature=0))
    assert "".join(pieces) == "> " + script.decode() and pieces[0] == "> "
    assert all("\ufffd" not in p for p in pieces) and "😀" in pieces  # 4 bytes held back, then one piece
    model = tiny_gpt()
    joined = "".join(stream_text(model, ByteTokenizer(), "And", 20, 0.9, 10, seed=5))
    assert joined == generate_text(model, ByteTokenizer(), "And", 20, 0.9, 10, seed=5)


def test_generate_cli_streams_what_it_prints_whole(tiny_lm_run):
    run, _ = tiny_lm_run
    args = ["generate", str(run), "--prompt", "And God", "--max-new-tokens", "40"]
    whole = runner.invoke(app, [*args, "--temperature", "0"])
    streamed = runner.invoke(app, [*args, "--temperature", "0", "--stream"])
    assert whole.exit_code == 0 and streamed.exit_code == 0, streamed.output
    assert streamed.output == whole.output and whole.output.startswith("And God")
    seeded = [runner.invoke(app, [*args, "--seed", "1", "--stream"]).output for _ in range(2)]
    assert seeded[0] == seeded[1]
