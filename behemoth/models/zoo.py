"""Importing this module registers every built-in model (each module calls `register` once)."""

from behemoth.models import cnn, gpt, lenet5, lenet_caffe, mlp, rnn, vit  # noqa: F401
