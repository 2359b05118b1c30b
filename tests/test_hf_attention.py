"""model.attention: an HF causal LM trains with transformers' "eager" attention on a CPU for short sequences,
where torch's flash kernel (sdpa) has the slower backward (models/hf_attention.py), and with "sdpa" for long
ones or when the config says so. The kernel changes, the model's function does not."""

import pytest
import torch

from behemoth.config import load_config
from behemoth.models.hf_attention import EAGER_MAX_TOKENS, training_attention
from behemoth.training import train
from behemoth.training.assembly import assemble
from tests.hf_tiny import hf_text_args, lora_corpus

VOCAB = 300


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("attention")
    return (root, *lora_corpus(root, VOCAB))


def test_auto_picks_eager_only_for_short_sequences_on_a_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert training_attention("auto", cpu, 128) == "eager"
    assert training_attention("auto", cpu, EAGER_MAX_TOKENS) == "eager"
    assert training_attention("auto", cpu, EAGER_MAX_TOKENS + 1) == "sdpa"
    assert training_attention("auto", cuda, 128) == "sdpa"
    assert training_attention("sdpa", cpu, 128) == "sdpa"
    assert training_attention("eager", cuda, 4096) == "eager"


@pytest.mark.parametrize(("choice", "trained_with"), [("auto", "eager"), ("sdpa", "sdpa")])
def test_training_runs_the_kernel_the_config_picks(corpus, choice, trained_with):
    root, text, llama = corpus
    overrides = [*hf_text_args(root, text, llama, f"attn-{choice}"), f"model.attention={choice}"]
    cfg = load_config(None, [*overrides, "train.max_steps=3", "train.lora.r=4"])
    parts = assemble(cfg)
    hf = parts.model.hf.get_base_model()  # the Llama under peft's wrapper
    assert hf.config._attn_implementation == "sdpa"  # as transformers loads it
    calls = []
    forward = type(hf.model.layers[0].self_attn).forward

    def spy(module, *args, **kwargs):
        calls.append(module.config._attn_implementation)
        return forward(module, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(hf.model.layers[0].self_attn), "forward", spy)
        result = train(parts.model, parts.data, cfg.train, cfg.data.batch_size, feed=parts.feed)
    assert result.steps == 3
    assert calls and set(calls) == {trained_with}  # every layer of every step, eval included


def test_eager_and_sdpa_compute_the_same_logits(corpus):
    root, text, llama = corpus
    cfg = load_config(None, hf_text_args(root, text, llama, "attn-same"))
    model = assemble(cfg).model.eval()
    hf = model.hf.get_base_model()
    ids = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sdpa = model(ids)
        hf.set_attn_implementation("eager")
        eager = model(ids)
    torch.testing.assert_close(eager, sdpa, rtol=0, atol=1e-5)
