"""The training engine: one loop (loop.py) plus optimizers, schedules, checkpoints, metrics, hooks."""

from behemoth.training.checkpoint import latest_checkpoint, load_weights, save_weights
from behemoth.training.hooks import BaseHook, Hook
from behemoth.training.logging_hooks import JsonlHook, ProgressHook, TensorBoardHook
from behemoth.training.loop import TrainContext, TrainResult, resolve_device, train
from behemoth.training.metrics import evaluate, task_loss
from behemoth.training.optim import build_optimizer, optimizer_for, parameter_groups
from behemoth.training.schedules import build_scheduler

__all__ = [
    "BaseHook",
    "Hook",
    "JsonlHook",
    "ProgressHook",
    "TensorBoardHook",
    "TrainContext",
    "TrainResult",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "latest_checkpoint",
    "load_weights",
    "optimizer_for",
    "parameter_groups",
    "resolve_device",
    "save_weights",
    "task_loss",
    "train",
]
