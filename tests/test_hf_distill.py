"""`behemoth distill --teacher RUN` with a Hugging Face causal-LM teacher: token-level distillation into a
smaller Hugging Face model with the same tokenizer, or into behemoth's GPT reading the teacher's tokenizer;
the student learns (validation loss falls, its logits move toward the teacher's) and its run evaluates."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import behemoth
from behemoth.cli.app import app
from behemoth.config import dump_config, load_config
from behemoth.data.tokenizers import load_run_tokenizer
from behemoth.errors import ModelError
from behemoth.runs import RunDir
from behemoth.training.assembly import assemble, load_trained_model
from tests.hf_tiny import bpe_tokenizer, hf_run_args, kjv_text, tiny_llama, write_text

runner = CliRunner()
VOCAB = 300


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """(root, text, the teacher's model dir, its run, a smaller Llama dir with the same tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("hfd")
    text = write_text(root / "text", verses=1500)
    tokenizer = bpe_tokenizer(kjv_text(1500), VOCAB)
    llama = tiny_llama(root / "llama", VOCAB, tokenizer=tokenizer)
    behemoth.train(None, hf_run_args(root, text, llama, "teacher", "train.max_steps=60"), progress=False)
    torch.manual_seed(1)
    small = root / "small"
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=VOCAB,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(config).save_pretrained(small)
    tokenizer.save(str(small / "tokenizer.json"))
    return root, text, llama, root / "runs" / "teacher", small


GPT_STUDENT = [
    "model.name=gpt",
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
]


def student_args(teacher, name: str, kind: str, *extra: str) -> list[str]:
    root, text, llama, _, small = teacher
    args = hf_run_args(root, text, small, name, "train.max_steps=40", "train.eval_every_steps=10", *extra)
    if kind == "gpt":  # behemoth's GPT, reading the teacher's tokenizer: the same ids
        args = [a for a in args if not a.startswith("model.")] + GPT_STUDENT
        args += ["data.tokenizer=hf", f"data.tokenizer_path={str(llama)!r}"]
    return args


def mean_kl(teacher_model, student_model, x) -> float:
    """KL(teacher || student) per position, averaged: how far the student's next-token guesses are."""
    with torch.no_grad():
        t, s = teacher_model(x).log_softmax(-1), student_model(x).log_softmax(-1)  # (B, T, V)
    return float(F.kl_div(s.flatten(0, 1), t.flatten(0, 1), reduction="batchmean", log_target=True))


@pytest.mark.parametrize("kind", ["hf", "gpt"])
def test_a_smaller_student_learns_from_an_hf_teacher(teacher, kind):
    root, _, _, teacher_run, _ = teacher
    name = f"student-{kind}"
    cfg = load_config(None, [*student_args(teacher, name, kind), f"compress.teacher={str(teacher_run)!r}"])
    with torch.random.fork_rng():
        torch.manual_seed(cfg.train.seed)
        before = assemble(cfg).model.eval()  # the student as distillation starts from it
    summary = behemoth.distill(cfg, progress=False)
    run = root / "runs" / name
    assert summary["parameters"] < summary["teacher_parameters"]
    records = [json.loads(line) for line in RunDir(run).metrics.read_text().splitlines()]
    evals = [r["val.loss"] for r in records if r["kind"] == "eval"]
    # falling from the first evaluation (step 10), and far below a uniform guess's log(V) = 5.7
    assert len(evals) >= 3 and evals[-1] < evals[0] - 0.05 and evals[-1] < math.log(VOCAB) - 1

    teacher_model = load_trained_model(teacher_run, load_config(RunDir(teacher_run).config_file))
    student = load_trained_model(run, load_config(RunDir(run).config_file))
    tokens = load_run_tokenizer(teacher_run).encode(kjv_text(40)[-2000:])
    x = torch.as_tensor(tokens[: 4 * 32]).view(4, 32)  # (4, 32) ids
    assert mean_kl(teacher_model, student, x) < 0.7 * mean_kl(teacher_model, before, x)

    metrics = behemoth.evaluate(run)  # the run dir loads like any trained run
    assert metrics["by_split"]["test"]["perplexity"] == pytest.approx(summary["test"]["perplexity"], rel=1e-4)
    assert metrics["perplexity"] < VOCAB / 2


def test_a_student_that_numbers_tokens_otherwise_is_refused(teacher, tmp_path):
    _, _, _, teacher_run, _ = teacher
    args = student_args(teacher, "student-bpe", "gpt")
    # a BPE of the same size trained by the student's run: 300 tokens, numbered its own way
    args = [a for a in args if not a.startswith("data.tokenizer")] + [
        "data.tokenizer=bpe",
        "data.vocab_size=300",
    ]
    student = tmp_path / "student.toml"
    student.write_text(dump_config(load_config(None, args)))
    out = runner.invoke(app, ["distill", str(student), "--teacher", str(teacher_run), "--no-progress"])
    message = str(out.exception)
    assert out.exit_code != 0 and "numbers its tokens differently" in message and "\n" not in message
    with pytest.raises(ModelError, match="data.tokenizer_path"):
        behemoth.distill(load_config(None, [*args, f"compress.teacher={str(teacher_run)!r}"]), progress=False)
