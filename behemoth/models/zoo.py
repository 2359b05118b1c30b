"""The built-in models, by name. Adding a model: a module defining ENTRY, and one name here."""

from behemoth.models import cnn, gpt, lenet5, lenet_caffe, mlp, rnn, vit
from behemoth.models.entry import ModelEntry

ZOO: dict[str, ModelEntry] = {m.ENTRY.name: m.ENTRY for m in (cnn, gpt, lenet5, lenet_caffe, mlp, rnn, vit)}
