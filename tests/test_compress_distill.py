"""Distillation: the loss against a hand-written formula and its known gradient, and a student trained
through the engine from the teacher alone (alpha = 1: no labels) learning the task."""

import math

import pytest
import torch

from behemoth.compression.distill import DistillationLoss, distillation_loss
from behemoth.compression.measure import accuracy
from behemoth.training import train
from tests.conftest import mlp, quick_train_config


def hand_written(student, teacher, labels, temperature, alpha):
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE, with explicit loops."""
    total_kl, total_ce = 0.0, 0.0
    for s_row, t_row, label in zip(student.tolist(), teacher.tolist(), labels.tolist()):
        zs = sum(math.exp(v / temperature) for v in s_row)
        zt = sum(math.exp(v / temperature) for v in t_row)
        p_s = [math.exp(v / temperature) / zs for v in s_row]
        p_t = [math.exp(v / temperature) / zt for v in t_row]
        total_kl += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
        z = sum(math.exp(v) for v in s_row)
        total_ce += -math.log(math.exp(s_row[label]) / z)
    n = len(labels)
    return alpha * temperature**2 * total_kl / n + (1 - alpha) * total_ce / n


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (4.0, 0.9), (20.0, 1.0), (2.0, 0.0)])
def test_loss_matches_the_formula(temperature, alpha):
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 5) * 3, torch.randn(6, 5) * 3
    labels = torch.randint(0, 5, (6,))
    got = distillation_loss(student, teacher, labels, temperature, alpha)
    assert got.item() == pytest.approx(hand_written(student, teacher, labels, temperature, alpha), rel=1e-5)


def test_soft_term_gradient_is_t_times_the_probability_gap():
    """d/ds [T^2 KL] = T (softmax(s/T) - softmax(t/T)) / B: the T^2 keeps gradients T-independent in scale."""
    torch.manual_seed(0)
    student = torch.randn(4, 7, requires_grad=True)
    teacher = torch.randn(4, 7)
    temperature = 5.0
    distillation_loss(student, teacher, torch.zeros(4, dtype=torch.long), temperature, 1.0).backward()
    expected = (
        temperature
        * (torch.softmax(student.detach() / temperature, -1) - torch.softmax(teacher / temperature, -1))
        / 4
    )
    assert torch.allclose(student.grad, expected, atol=1e-6)


def test_identical_logits_cost_nothing_but_the_label_term():
    logits = torch.randn(3, 4)
    labels = torch.tensor([0, 1, 2])
    assert distillation_loss(logits, logits, labels, 3.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert distillation_loss(logits, logits, labels, 3.0, 0.25).item() == pytest.approx(
        0.75 * ce.item(), rel=1e-5
    )


def test_student_learns_from_the_teacher_alone_through_the_engine(digits_bundle):
    teacher = mlp(hidden=64, seed=1)
    train(teacher, digits_bundle, quick_train_config(epochs=6), batch_size=32)
    teacher_acc = accuracy(teacher.eval(), digits_bundle.test, digits_bundle.spec)["acc"]
    seen = []

    class Recording(DistillationLoss):
        def __call__(self, logits, targets, inputs):
            seen.append(inputs.shape)
            return super().__call__(logits, targets, inputs)

    student = mlp(hidden=16, seed=2)
    loss_fn = Recording(teacher, temperature=4.0, alpha=1.0)  # alpha 1: the labels are never used
    train(student, digits_bundle, quick_train_config(epochs=6, lr=0.02), batch_size=32, loss_fn=loss_fn)
    student_acc = accuracy(student.eval(), digits_bundle.test, digits_bundle.spec)["acc"]
    assert seen and seen[0] == (32, 64)
    assert teacher_acc > 0.9 and student_acc > teacher_acc - 0.08
    agreement = (
        (student(digits_bundle.test.x).argmax(-1) == teacher(digits_bundle.test.x).argmax(-1)).float().mean()
    )
    assert agreement > 0.9


def test_language_model_logits_count_every_position_as_a_sample():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    targets = torch.randint(0, 7, (2, 3))
    flat = distillation_loss(student.flatten(0, 1), teacher.flatten(0, 1), targets.flatten(), 2.0, 0.5)
    assert distillation_loss(student, teacher, targets, 2.0, 0.5).item() == pytest.approx(flat.item())
