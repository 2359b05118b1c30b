"""Pipeline parallelism of a GPT's blocks with torch.distributed.pipelining: one stage per process.

Each rank keeps only its stage (embeddings + the first blocks, ..., the last blocks + final norm + head),
so a model that does not fit one device's memory trains across several. How it fits the one training
loop, which calls `logits = model(x)` and then `loss.backward()` on every rank:

- forward: each rank passes its shard of the global micro-batch, as with DDP. The shards are gathered on
  the first stage, pushed through the stages in `pipeline_microbatches` chunks (forward only, no
  autograd, plain send/recv between neighbours), and the last stage's logits are scattered back: each
  rank computes the loss on its rows.
- backward: the logits' gradients are gathered on the last stage and the schedule (1F1B or GPipe) runs
  forward and backward with the surrogate loss sum(logits * grad), whose gradient is exactly those
  gradients. The first forward keeps no activations, so the price is one more forward per step (as with
  activation checkpointing at the stage boundary); the loop stays the same for every strategy.

The schedule runs with `scale_grads=False`: the surrogate already carries the loop's weighting (each
rank's mean loss times its micro-batch share, averaged over ranks as DDP does), so gradients must not be
divided again by the number of chunks. GPT ties its head to the token embedding: the first and the last
stage each hold a copy under the name `tok_emb.weight` and sum their gradients once per optimizer step.
With train.clip_norm, the gradients are clipped by their norm over all stages at that point too.
"""

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from behemoth.distributed.collectives import gather_rows, scatter_rows
from behemoth.distributed.env import DistEnv
from behemoth.errors import ConfigError


class GPTStage(nn.Module):
    """This rank's part of a GPT; it shares its modules with the (pruned) model, it owns nothing."""

    def __init__(self, gpt: nn.Module, blocks: list[nn.Module], first: bool, last: bool):
        super().__init__()
        self.first, self.last = first, last
        self.blocks = nn.ModuleList(blocks)
        self.drop = gpt.drop
        if first:
            self.tok_emb, self.pos_emb = gpt.tok_emb, gpt.pos_emb
        if last:
            self.ln_f, self.lm_head = gpt.ln_f, gpt.lm_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # first stage: (B, T) tokens; others: (B, T, C)
        if self.first:
            pos = torch.arange(x.shape[1], device=x.device)  # (T,)
            x = self.drop(self.tok_emb(x) + self.pos_emb(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        if self.last:
            x = self.lm_head(self.ln_f(x))  # (B, T, V)
        return x


def split_gpt(model: nn.Module, stage: int, num_stages: int) -> GPTStage:
    """Keep stage `stage` of `num_stages` in `model` (in place; parameter names unchanged) and return it.

    Blocks are divided as evenly as possible; the others become parameter-free placeholders, so the
    kept blocks keep their index in `blocks.N...` names and checkpoints stay world-size free.
    """
    n = len(model.blocks)
    if n < num_stages:
        raise ConfigError(
            f"train.strategy = 'pipeline': model.n_layer = {n} is less than the {num_stages} "
            "stages (one per process)"
        )
    bounds = [round(i * n / num_stages) for i in range(num_stages + 1)]
    mine = range(bounds[stage], bounds[stage + 1])
    first, last = stage == 0, stage == num_stages - 1
    tied = model.lm_head.weight is model.tok_emb.weight
    part = GPTStage(model, [model.blocks[i] for i in mine], first, last)
    for i in range(n):
        if i not in mine:
            model.blocks[i] = nn.Identity()
    if not first:
        model.pos_emb = None
        if not (last and tied):  # the last stage keeps the tied embedding: it is its head's weight
            model.tok_emb = None
    if not last:
        model.ln_f, model.lm_head = None, None
    return part


def _chunks(rows: int, most: int) -> int:
    """The largest number of equal chunks (at most `most`) that `rows` splits into."""
    return max(c for c in range(1, min(rows, most) + 1) if rows % c == 0)


def _surrogate_loss(logits: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return (logits.float() * grad).sum()  # d/d logits = grad


class PipelineRunner:
    """The stage, its training schedule (for one input shape: stage buffers are sized at first use) and the
    collectives that move rows between the loop's ranks and the pipeline."""

    def __init__(
        self,
        stage_module: GPTStage,
        env: DistEnv,
        microbatches: int,
        schedule: str,
        vocab_size: int,
        width: int,
        tied: list[nn.Parameter],
        clip_norm: float | None = None,
    ):
        self.stage_module, self.env, self.clip_norm = stage_module, env, clip_norm
        self.microbatches, self.schedule_name = microbatches, schedule
        self.vocab_size, self.width = vocab_size, width
        self.dtype = next(stage_module.parameters()).dtype  # of the residual stream between stages
        self.first, self.last = 0, env.world_size - 1
        self.tied = tied  # parameters whose copies on the first and last stage must stay equal
        ends = [self.first, self.last]
        # new_group is collective: every rank creates it, even those outside it
        self.tie_group = None if env.world_size == 2 else dist.new_group(ends)
        self.in_tie_group = env.rank in ends
        self.last_micro_batch = True  # False for the first micro-batches of an accumulated step
        self._schedules: dict[tuple, Any] = {}

    def schedule(self, shape: tuple[int, ...]):
        if shape not in self._schedules:
            from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

            if self._schedules:  # two PipelineStages over one module interfere (see forward_only)
                raise ConfigError(
                    f"train.strategy = 'pipeline': every training micro-batch must have one shape "
                    f"(got {shape} after {next(iter(self._schedules))})"
                )
            if shape[0] % self.microbatches:
                raise ConfigError(
                    f"data.batch_size = {shape[0]}: must split into train.pipeline_microbatches "
                    f"= {self.microbatches} equal chunks"
                )
            stage = PipelineStage(self.stage_module, self.env.rank, self.env.world_size, self.env.device)
            kind = Schedule1F1B if self.schedule_name == "1f1b" else ScheduleGPipe
            self._schedules[shape] = kind(
                stage, self.microbatches, loss_fn=_surrogate_loss, scale_grads=False
            )
        return self._schedules[shape]

    @torch.no_grad()
    def forward_only(self, inputs: torch.Tensor | None, rows: int, length: int) -> torch.Tensor | None:
        """The stages without autograd, chunk by chunk; the logits (rows, T, V) on the last stage.

        Plain send/recv: a second PipelineStage over the same module (a forward-only schedule) corrupts the
        training schedule's gradients on torch 2.13 (checked: the second accumulated step goes wrong).
        """
        rank, count = self.env.rank, _chunks(rows, self.microbatches)
        size = rows // count
        outputs = []
        for i in range(count):
            if rank == self.first:
                x = inputs[i * size : (i + 1) * size]  # (size, T) tokens
            else:
                x = torch.empty(
                    (size, length, self.width), dtype=self.dtype, device=self.env.device
                )  # (size, T, C)
                dist.recv(x, src=rank - 1)
            y = self.stage_module(x)
            if rank == self.last:
                outputs.append(y.float())  # (size, T, V)
            else:
                dist.send(y.to(self.dtype).contiguous(), dst=rank + 1)
        return torch.cat(outputs) if outputs else None

    def run(self, schedule_step, inputs: torch.Tensor | None, target: torch.Tensor | None = None):
        """Call a schedule the way each stage must: inputs on the first, targets on the last."""
        args = (inputs,) if self.env.rank == self.first else ()
        kwargs = {"target": target} if target is not None and self.env.rank == self.last else {}
        return schedule_step(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
        """This rank's logits for its rows x (B_r, T) -> (B_r, T, V), float32; also the gathered inputs."""
        inputs, counts = gather_rows(x, self.env, dst=self.first)
        logits = self.forward_only(inputs, sum(counts), x.shape[1])
        logits = scatter_rows(
            logits, counts, (*x.shape[1:], self.vocab_size), torch.float32, self.env, src=self.last
        )
        return logits, inputs, counts

    def backward(self, inputs: torch.Tensor | None, grad: torch.Tensor, counts: list[int]) -> None:
        """Recompute forward and run backward through the stages; gradients land in the stage's .grad."""
        grads, _ = gather_rows(grad.float().contiguous(), self.env, dst=self.last)
        if grads is not None:
            grads = grads / self.env.world_size  # the loop's ranks each hold a mean: DDP would average them
        shape = (sum(counts), *grad.shape[1:-1])
        self.run(self.schedule(shape).step, inputs, grads)
        if self.last_micro_batch:  # the step's gradients are complete
            self.sum_tied_gradients()
            if self.clip_norm:
                self.clip_global_norm()

    def sum_tied_gradients(self) -> None:
        if self.in_tie_group:
            for param in self.tied:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                dist.all_reduce(param.grad, group=self.tie_group)

    def clip_global_norm(self) -> None:
        """Clip by the norm over all stages, as one process would (each stage alone sees only its part).

        The loop's clip_grad_norm_ then finds this stage's norm below train.clip_norm and leaves it.
        """
        last_copy = {id(p) for p in self.tied} if self.env.rank == self.last else set()  # count tied once
        grads = [
            p.grad for p in self.stage_module.parameters() if p.grad is not None and id(p) not in last_copy
        ]
        squares = torch.zeros((), dtype=torch.float32, device=self.env.device)
        for grad in grads:
            squares += grad.float().pow(2).sum()
        dist.all_reduce(squares)
        coef = torch.clamp(
            self.clip_norm / (squares.sqrt() + 1e-6), max=1.0
        )  # as torch.nn.utils.clip_grad_norm_
        for param in self.stage_module.parameters():
            if param.grad is not None:
                param.grad.mul_(coef.to(param.grad.dtype))


class _PipelineFunction(torch.autograd.Function):
    """Autograd's view of the whole pipeline: tokens in, this rank's logits out."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, anchor: torch.Tensor, runner: PipelineRunner) -> torch.Tensor:
        ctx.runner, ctx.device_type = runner, x.device.type
        ctx.rng = torch.get_rng_state()  # the recomputation must draw the same dropout masks
        ctx.cuda_rng = torch.cuda.get_rng_state(x.device) if x.device.type == "cuda" else None
        ctx.autocast = torch.is_autocast_enabled(x.device.type), torch.get_autocast_dtype(x.device.type)
        logits, ctx.inputs, ctx.counts = runner.forward(x)
        return logits

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rng_now = torch.get_rng_state()
        cuda_now = torch.cuda.get_rng_state(grad.device) if ctx.cuda_rng is not None else None
        torch.set_rng_state(ctx.rng)
        if ctx.cuda_rng is not None:
            torch.cuda.set_rng_state(ctx.cuda_rng, grad.device)
        enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(ctx.device_type, dtype=dtype, enabled=enabled):
            ctx.runner.backward(ctx.inputs, grad, ctx.counts)
        torch.set_rng_state(rng_now)
        if cuda_now is not None:
            torch.cuda.set_rng_state(cuda_now, grad.device)
        return None, None, None


class Pipelined:
    """Put in front of the model's class (as FSDP2's fully_shard does): `model(x)` runs the pipeline."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B_r, T) -> (B_r, T, V)
        return _PipelineFunction.apply(x, self._pipeline_anchor, self._pipeline)


_classes: dict[type, type] = {}
GPT_PARTS = ("tok_emb", "pos_emb", "drop", "blocks", "ln_f", "lm_head")


def is_gpt_shaped(model: nn.Module) -> bool:
    """behemoth's GPT, recognised by its parts (distributed sits below models: it does not import them)."""
    return all(hasattr(model, part) for part in GPT_PARTS) and isinstance(model.blocks, nn.ModuleList)


def pipeline_model(
    model: nn.Module, env: DistEnv, microbatches: int, schedule: str, clip_norm: float | None = None
) -> nn.Module:
    """Turn `model` (a GPT) into this rank's pipeline stage, in place; `model(x)` then runs all stages."""
    if not is_gpt_shaped(model):
        raise ConfigError(
            f"train.strategy = 'pipeline': splits GPT blocks only, not {type(model).__name__} "
            "(use 'fsdp' to spread other models over processes)"
        )
    if schedule == "1f1b" and microbatches < env.world_size:
        raise ConfigError(
            f"train.pipeline_microbatches = {microbatches}: the 1f1b schedule needs at least one "
            f"chunk per stage ({env.world_size}); raise it or use train.pipeline_schedule = 'gpipe'"
        )
    vocab_size, width = model.tok_emb.num_embeddings, model.tok_emb.embedding_dim
    tied = model.lm_head.weight is model.tok_emb.weight
    stage = split_gpt(model, env.rank, env.world_size)
    ends = env.rank in (0, env.world_size - 1)
    tied_params = [model.tok_emb.weight] if tied and ends else []
    cls = model.__class__
    _classes.setdefault(cls, type(f"Pipelined{cls.__name__}", (Pipelined, cls), {}))
    model.__class__ = _classes[cls]
    model._pipeline = PipelineRunner(
        stage, env, microbatches, schedule, vocab_size, width, tied_params, clip_norm
    )
    model._pipeline_anchor = torch.zeros((), requires_grad=True)  # makes autograd call our backward
    return model
