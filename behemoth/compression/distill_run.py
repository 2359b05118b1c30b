"""`distill_run`: train a student run (any config) against a teacher run, through the training engine
with the distillation loss as its `loss_fn`. Writes a normal run directory (config, spec, metrics,
model.safetensors, summary.json with the teacher's test figures beside the student's).

Data, model and feed come from the one assembly path (behemoth.training.assembly), as for `behemoth train`.
"""

from pathlib import Path
from typing import Any

from torch import nn

from behemoth.compression.distill import DistillationLoss, load_teacher
from behemoth.config import RunConfig
from behemoth.data import DataBundle
from behemoth.data.tokenizers import load_run_tokenizer
from behemoth.errors import ConfigError, ModelError
from behemoth.models import count_parameters
from behemoth.runs import RunDir, create_run_dir, read_spec, run_path, write_config, write_json, write_spec
from behemoth.training import JsonlHook, ProgressHook, TensorBoardHook, evaluate, resolve_device, train
from behemoth.training.assembly import assemble
from behemoth.training.checkpoint import save_weights
from behemoth.training.feed import Feed
from behemoth.training.loop import result_summary


def check_teacher_fits(teacher_dir: Path, data: DataBundle) -> None:
    spec, _, _ = read_spec(teacher_dir)
    if spec.task != data.spec.task:
        raise ModelError(
            f"teacher {teacher_dir} is a {spec.task} model; the student's data is {data.spec.task}"
        )
    if tuple(spec.input_shape) != tuple(data.spec.input_shape) or spec.num_classes != data.spec.num_classes:
        raise ModelError(
            f"teacher {teacher_dir} was trained on inputs {spec.input_shape} with {spec.num_classes} "
            f"classes; the student's data has {data.spec.input_shape} and {data.spec.num_classes}"
        )
    if spec.task == "language_model" and data.tokenizer is not None:
        check_same_vocabulary(teacher_dir, data.tokenizer)


def token_map(tokenizer: Any) -> dict[str, int] | None:
    """token -> id of a BPE / Hugging Face tokenizer (None for bytes: id = byte, the same everywhere)."""
    inner = getattr(tokenizer, "tokenizer", None)
    return None if inner is None else inner.get_vocab(with_added_tokens=True)


def check_same_vocabulary(teacher_dir: Path, tokenizer: Any) -> None:
    """Token-level distillation matches logits id by id: the teacher's id k must be the student's token k,
    not only the vocabularies' sizes (a student BPE trained on its own would number tokens otherwise)."""
    if token_map(load_run_tokenizer(teacher_dir)) != token_map(tokenizer):
        raise ModelError(
            f"teacher {teacher_dir} numbers its tokens differently from the student's data tokenizer: "
            "use the teacher's tokenizer (data.tokenizer = 'hf' with data.tokenizer_path = the teacher's "
            "model directory, or a student model directory with the same tokenizer.json)"
        )


def distill_run(
    cfg: RunConfig,
    overwrite: bool = False,
    progress: bool = True,
    feed: Feed | None = None,
    teacher: nn.Module | None = None,
) -> dict[str, Any]:
    """Train cfg's student from cfg.compress.teacher into runs/<name>; returns the summary it writes."""
    cc = cfg.compress
    if cc.teacher is None and teacher is None:
        raise ConfigError("compress.teacher is not set: pass --teacher RUN_DIR (the teacher's run directory)")
    parts = assemble(cfg)
    data, student = parts.data, parts.model
    if teacher is None:
        check_teacher_fits(Path(cc.teacher), data)
        teacher = load_teacher(cc.teacher)
    run_dir = run_path(cfg)
    create_run_dir(run_dir, overwrite)
    write_config(run_dir, cfg)
    write_spec(run_dir, data.spec, data.class_names, data.meta)
    device = resolve_device(cfg.train.device)
    loss_fn = DistillationLoss(teacher.to(device), cc.temperature, cc.alpha, cfg.train.precision)
    hooks = ([ProgressHook()] if progress else []) + [
        JsonlHook(RunDir(run_dir).metrics),
        TensorBoardHook(RunDir(run_dir).tensorboard),
    ]
    result = train(
        student,
        data,
        cfg.train,
        cfg.data.batch_size,
        cfg.data.eval_batch_size,
        run_dir,
        hooks,
        feed=feed or parts.feed,
        loss_fn=loss_fn,
    )
    save_weights(student, RunDir(run_dir).weights)
    summary: dict[str, Any] = {
        "run": str(run_dir),
        "model": cfg.model.name,
        "parameters": count_parameters(student),
        "teacher": cc.teacher,
        "teacher_parameters": count_parameters(teacher),
        "temperature": cc.temperature,
        "alpha": cc.alpha,
        "dataset": data.name,
        "train_samples": len(data.train),
        **result_summary(result),
    }
    if data.test is not None and not result.diverged:
        for who, model in (("test", student), ("teacher_test", teacher)):
            figures = evaluate(
                model, data.test, data.spec, cfg.data.eval_batch_size, cfg.train.precision, device
            )
            summary[who] = {**figures, "errors": round((1 - figures["acc"]) * len(data.test))}
    write_json(RunDir(run_dir).summary, summary)
    return summary
