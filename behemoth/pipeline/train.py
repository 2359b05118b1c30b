"""`behemoth.train(cfg)`: config -> data -> model -> training -> test evaluation, into a run directory."""

from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from behemoth.config import RunConfig
from behemoth.data.augment.preview import write_preview
from behemoth.data.describe import describe
from behemoth.data.tokenizers import save_run_tokenizer
from behemoth.distributed import DistEnv, barrier, holds_shard
from behemoth.errors import RunDirError
from behemoth.models import count_parameters
from behemoth.runs import RunDir, create_run_dir, run_path, write_json
from behemoth.training import JsonlHook, ProgressHook, TensorBoardHook, evaluate, latest_checkpoint, train
from behemoth.training.assembly import assemble
from behemoth.training.checkpoint import save_final_weights
from behemoth.training.loop import result_summary
from behemoth.training.lora import save_adapter
from behemoth.training.mfu import mfu_hooks


def run_training(
    cfg: RunConfig,
    overwrite: bool = False,
    resume: Path | None = None,
    hooks: list | None = None,
    progress: bool = True,
    env: DistEnv | None = None,
) -> dict[str, Any]:
    """Train per `cfg` into runs/<name> (or continue `resume`); return the summary written to summary.json.

    Under torchrun (`env` with world size > 1) every rank trains; rank 0 alone writes files and logs.
    """
    main = env is None or env.is_main
    if resume is not None:
        cfg = with_saved_tokenizer(cfg, resume)
    parts = assemble(cfg, env)  # data, model and feed: a bad config fails here, before anything is written
    data, model = parts.data, parts.model
    if resume is None:
        run_dir = run_path(cfg)
        run = RunDir(run_dir)
        if main:
            create_run_dir(run_dir, overwrite)
            run.write_config(cfg)
            run.write_spec(data.spec, data.class_names, data.meta)
            # a trained (BPE) tokenizer, so generate and explain decode the same way
            save_run_tokenizer(run.tokenizer_file, data.tokenizer)
            write_preview(cfg, data, run.preview)  # images: what the model sees (the report shows it)
        barrier(env)
        checkpoint = None
    else:
        run_dir = resume
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise RunDirError(f"{run_dir} has no checkpoint to resume from")
    world = env.world_size if env is not None else 1
    logging_hooks = (
        mfu_hooks(model, data.spec, world)
        + ([ProgressHook()] if progress else [])
        + [JsonlHook(RunDir(run_dir).metrics), TensorBoardHook(RunDir(run_dir).tensorboard)]
    )
    all_hooks = (logging_hooks if main else []) + list(hooks or [])
    parameters = count_parameters(model)  # before training: a pipeline stage keeps only its part
    trainable = count_parameters(model, trainable_only=True)
    result = train(
        model,
        data,
        cfg.train,
        cfg.data.batch_size,
        cfg.data.eval_batch_size,
        run_dir,
        all_hooks,
        resume_from=checkpoint,
        env=env,
        feed=parts.feed,
    )
    # rank 0; fsdp/pipeline: the last checkpoint's shards, consolidated
    save_final_weights(model, run_dir, env)
    if cfg.train.lora is not None and main:
        # peft's format, for peft and transformers users; a sharded model's from the consolidated weights
        weights = load_file(str(RunDir(run_dir).weights)) if holds_shard(model) else None
        save_adapter(model, RunDir(run_dir).adapter_dir, weights)
    summary: dict[str, Any] = {
        "run": str(run_dir),
        "model": cfg.model.name,
        "parameters": parameters,
        **({"trainable_parameters": trainable} if cfg.train.lora is not None else {}),
        "dataset": data.name,
        "train_samples": len(data.train),
        **result_summary(result),
        "world_size": world,
        "data": describe(data),
    }
    if data.test is not None and not result.diverged:
        summary["test"] = evaluate(
            model,
            data.test,
            data.spec,
            cfg.data.eval_batch_size,
            cfg.train.precision,
            parts.device,
            cfg.train.channels_last,
            env=env,
        )
    if main:
        write_json(RunDir(run_dir).summary, summary)
    barrier(env)
    return summary


def with_saved_tokenizer(cfg: RunConfig, run_dir: Path) -> RunConfig:
    """A resumed BPE run tokenizes with the tokenizer.json it saved, not with one trained again."""
    saved = RunDir(run_dir).tokenizer_file
    if cfg.data.tokenizer != "bpe" or cfg.data.tokenizer_file is not None or not saved.is_file():
        return cfg
    data = cfg.data.model_copy(update={"tokenizer_file": str(saved)})
    return cfg.model_copy(update={"data": data})
