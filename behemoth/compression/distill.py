"""Knowledge distillation (Hinton, Vinyals, Dean 2015): a student learns from a teacher's softened outputs.

loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels)

The T^2 keeps the soft term's gradients the same size whatever the temperature (they scale as 1/T^2).
For a language model every position is a sample (token-level KD): its data are already shifted (y[t] is
x[t + 1]), so teacher and student logits at position t both predict y[t]; a Hugging Face teacher or student
gives logits over the data's vocabulary only (models/hf.py drops an embedding's padding).
`DistillationLoss` plugs into the engine as its `loss_fn`: the teacher sees the same (augmented) inputs.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from behemoth.runs import open_run
from behemoth.training.assembly import load_trained_model
from behemoth.training.precision import autocast


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """The Hinton et al. loss for (B, K) logits and (B,) labels, or (B, T, V) next-token logits and (B, T)
    targets (every position is a sample); a scalar."""
    if student_logits.ndim == 3:  # (B, T, V) -> (B*T, V)
        student_logits, teacher_logits = student_logits.flatten(0, 1), teacher_logits.flatten(0, 1)
        targets = targets.flatten()
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )  # KL(teacher || student), mean over the batch
    hard = F.cross_entropy(student_logits, targets) if alpha < 1.0 else student_logits.new_zeros(())
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


class DistillationLoss:
    """The engine's `loss_fn(logits, targets, inputs)`: asks the frozen teacher about `inputs`."""

    def __init__(self, teacher: nn.Module, temperature: float, alpha: float, precision: str = "fp32") -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha, self.precision = temperature, alpha, precision

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        if next(self.teacher.parameters()).device != inputs.device:
            self.teacher.to(inputs.device)
        with torch.no_grad(), autocast(self.precision, inputs.device):
            teacher_logits = self.teacher(inputs)
        return distillation_loss(logits, teacher_logits, targets, self.temperature, self.alpha)


def load_teacher(run_dir: str | Path) -> nn.Module:
    """A trained run's model, frozen, in eval mode (dropout off)."""
    path, cfg = open_run(run_dir)
    return load_trained_model(path, cfg).eval().requires_grad_(False)
