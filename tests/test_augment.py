"""Batched augmentation: each op against a reference (torch's own functions, a per-sample loop), per-sample
parameters, probabilities, determinism, soft targets, config errors, and bit-exact resume of an augmented
run."""

import pytest
import torch
import torch.nn.functional as F

from behemoth.config import load_config
from behemoth.config.data import AugmentConfig
from behemoth.data import load_data
from behemoth.data.augment import (
    Augment,
    adjust_brightness_contrast,
    affine_matrices,
    build_augment,
    channel_range,
    cutmix,
    gaussian_blur,
    mixup,
    warp,
)
from behemoth.data.augment.geometry import affine_grid
from behemoth.data.augment.photometric import gaussian_kernels
from behemoth.errors import ConfigError
from behemoth.spec import DataSpec
from behemoth.training import BaseHook, train
from behemoth.training.assembly import build_feed

SPEC = DataSpec("classification", (1, 8, 8), 10)


@pytest.fixture(scope="module")
def digit_images():
    """sklearn digits as images (N, 1, 8, 8), normalised, as the loader gives them."""
    cfg = load_config(None, ["data.name=digits"])
    return load_data(cfg.data)


def augmenter(images, **ops) -> Augment:
    low, high = channel_range(images)
    return Augment(AugmentConfig.model_validate(ops), low, high, 10)


def matrices(
    batch, angle=0.0, scale=1.0, translate=(0.0, 0.0), shear=(0.0, 0.0), flip=(1.0, 1.0), size=(8, 8)
):
    full = lambda v: torch.tensor([v] * batch, dtype=torch.float64)  # noqa: E731
    return affine_matrices(full(flip), full(angle), full(scale), full(translate), full(shear), *size)


def test_sampling_grid_matches_torch_affine_grid():
    theta = torch.randn(6, 2, 3)
    for size in ((8, 8), (7, 12)):
        expected = F.affine_grid(theta, [6, 1, *size], align_corners=False)
        torch.testing.assert_close(affine_grid(theta, *size), expected, atol=1e-6, rtol=0)


def test_geometry_matches_exact_pixel_maps(digit_images):
    x = digit_images.train.x[:4]
    flips = warp(x, matrices(4, flip=(-1.0, 1.0)), "zeros")
    torch.testing.assert_close(flips, x.flip(-1), atol=1e-5, rtol=0)
    vflips = warp(x, matrices(4, flip=(1.0, -1.0)), "zeros")
    torch.testing.assert_close(vflips, x.flip(-2), atol=1e-5, rtol=0)
    # +90 degrees is counter-clockwise on screen: the same as rot90 from the row axis towards the column axis
    turned = warp(x, matrices(4, angle=90.0), "zeros")
    torch.testing.assert_close(turned, torch.rot90(x, 1, (-2, -1)), atol=1e-5, rtol=0)
    # a shift of 1/4 of the width moves every column 2 pixels right; the uncovered columns take the fill
    fill = x.amin()
    shifted = warp(x, matrices(4, translate=(0.25, 0.0)), "black", fill.view(1))
    torch.testing.assert_close(shifted[..., 2:], x[..., :-2], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        shifted[..., :2], torch.full_like(shifted[..., :2], float(fill)), atol=1e-5, rtol=0
    )


def test_one_warp_combines_the_ops_in_order():
    """flip, then scale, shear, rotate and shift compose into the single matrix given to the warp."""
    theta = matrices(
        3, angle=30.0, scale=1.2, translate=(0.1, -0.05), shear=(10.0, 0.0), flip=(-1.0, 1.0), size=(16, 16)
    )
    # the forward map, written as 3x3 matrices on centred pixel coordinates
    rad = torch.deg2rad(torch.tensor(30.0, dtype=torch.float64))
    sx = torch.tan(torch.deg2rad(torch.tensor(10.0, dtype=torch.float64)))
    rotate = torch.tensor(
        [[rad.cos(), rad.sin(), 0], [-rad.sin(), rad.cos(), 0], [0, 0, 1]], dtype=torch.float64
    )
    shear = torch.tensor([[1, sx, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    scale_flip = torch.diag(torch.tensor([-1.2, 1.2, 1.0], dtype=torch.float64))
    shift = torch.tensor([[1, 0, 1.6], [0, 1, -0.8], [0, 0, 1]], dtype=torch.float64)
    forward = shift @ rotate @ shear @ scale_flip
    to_normalised = torch.diag(torch.tensor([2 / 16, 2 / 16, 1.0], dtype=torch.float64))
    expected = (to_normalised @ torch.linalg.inv(forward) @ torch.linalg.inv(to_normalised))[:2].float()
    torch.testing.assert_close(theta, expected.expand(3, 2, 3), atol=1e-6, rtol=0)


def test_blur_matches_a_per_sample_convolution():
    x = torch.randn(5, 3, 9, 13)
    sigma = torch.tensor([0.3, 0.7, 1.0, 1.5, 2.5])
    got = gaussian_blur(x, sigma, 7)
    for i in range(5):
        kernel = gaussian_kernels(sigma[i : i + 1], 7)[0]
        kernel2d = torch.outer(kernel, kernel).expand(3, 1, 7, 7)
        expected = F.conv2d(F.pad(x[i : i + 1], (3, 3, 3, 3), mode="reflect"), kernel2d, groups=3)
        torch.testing.assert_close(got[i : i + 1], expected, atol=1e-5, rtol=0)
    constant = torch.full((2, 1, 8, 8), 0.7)
    torch.testing.assert_close(gaussian_blur(constant, torch.tensor([0.5, 2.0]), 9), constant)


def test_brightness_contrast_and_clamp():
    x = torch.rand(4, 2, 6, 6)
    low, high = torch.zeros(2), torch.ones(2)
    brighter = adjust_brightness_contrast(x * 0.5, torch.full((4,), 0.25), None, low, high)
    torch.testing.assert_close(brighter, x * 0.5 + 0.25)
    flat = adjust_brightness_contrast(x, None, torch.zeros(4), low, high)  # factor 0: each channel's mean
    torch.testing.assert_close(flat, x.mean((2, 3), keepdim=True).expand_as(x))
    clamped = adjust_brightness_contrast(x, torch.ones(4), torch.full((4,), 3.0), low, high)
    assert clamped.min() >= 0 and clamped.max() <= 1


def test_mixup_and_cutmix_soft_targets():
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 10, 10).contiguous()
    y = F.one_hot(torch.arange(4), 4).float()
    partner, lam = torch.tensor([1, 0, 3, 2]), torch.tensor([0.7, 1.0, 0.25, 0.5])
    mixed_x, mixed_y = mixup(x, y, partner, lam)
    torch.testing.assert_close(mixed_x[:, 0, 0, 0], lam * torch.arange(4.0) + (1 - lam) * partner.float())
    torch.testing.assert_close(mixed_y.sum(1), torch.ones(4))
    assert mixed_y[0, 0] == pytest.approx(0.7) and mixed_y[0, 1] == pytest.approx(0.3)
    boxes = torch.tensor([[0, 0, 5, 10], [2, 2, 0, 0], [1, 1, 3, 3], [0, 0, 10, 10]])  # top, left, h, w
    cut_x, cut_y = cutmix(x, y, partner, *boxes.unbind(1))
    for i in range(4):
        pasted = float((cut_x[i] == partner[i].float()).float().mean())  # share of the partner's pixels
        assert pasted == pytest.approx(float(boxes[i, 2] * boxes[i, 3]) / 100)
        assert float(cut_y[i, partner[i]]) == pytest.approx(pasted)  # the target mixes by that share
    torch.testing.assert_close(cut_y.sum(1), torch.ones(4))


def test_parameters_are_per_sample_and_probabilities_hold(digit_images):
    x = digit_images.train.x[:1].expand(400, 1, 8, 8).contiguous()  # one image, 400 times
    y = digit_images.train.y[:1].expand(400)
    augment = augmenter(x, rotate={"p": 1.0, "degrees": 30}, blur={"p": 1.0})
    out, _ = augment(x, y, torch.Generator().manual_seed(0))
    assert len({tuple(o.flatten().tolist()) for o in out[:20]}) == 20  # every sample its own angle and sigma
    gated = augmenter(x, rotate={"p": 0.3, "degrees": 30})
    out, _ = gated(x, y, torch.Generator().manual_seed(1))
    untouched = (out == x).flatten(1).all(1).float().mean()
    assert 0.6 < float(untouched) < 0.8  # p = 0.3: about 70% of samples left exactly as they were


def test_deterministic_for_a_generator_and_the_input_is_not_modified(digit_images):
    x, y = digit_images.train.x[:64], digit_images.train.y[:64]
    before = x.clone()
    augment = augmenter(
        x,
        hflip={},
        rotate={},
        scale={},
        translate={},
        shear={},
        blur={},
        brightness={},
        contrast={},
        erase={"value": "random"},
        mixup={},
        cutmix={},
    )
    first = augment(x, y, torch.Generator().manual_seed(3))
    again = augment(x, y, torch.Generator().manual_seed(3))
    other = augment(x, y, torch.Generator().manual_seed(4))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert torch.equal(x, before)
    assert first[1].shape == (64, 10) and torch.allclose(first[1].sum(1), torch.ones(64))
    assert torch.isfinite(first[0]).all()


def test_batched_equals_a_per_sample_loop(digit_images):
    """The batch path computes what one sample at a time would, with the same parameters."""
    x, y = digit_images.train.x[:32], digit_images.train.y[:32]
    augment = augmenter(
        x,
        hflip={},
        rotate={},
        scale={},
        translate={},
        shear={},
        blur={},
        brightness={},
        contrast={},
        erase={},
    )
    params = augment.draw(32, (1, 8, 8), torch.Generator().manual_seed(0))
    batched, _ = augment.apply(x, y, params)
    looped = torch.cat(
        [augment.apply(x[i : i + 1], y[i : i + 1], params.select(torch.tensor([i])))[0] for i in range(32)]
    )
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=0)


def test_config_errors_name_the_op():
    with pytest.raises(
        ConfigError, match=r"data.augment.rotate.degrees = \[10, -10\]: Value error, low is above high"
    ):
        load_config(None, ["data.augment.rotate.degrees=[10, -10]"])
    with pytest.raises(ConfigError, match="data.augment.rotat"):
        load_config(None, ["data.augment.rotat.p=1"])
    with pytest.raises(ConfigError, match="data.augment.blur.kernel"):
        load_config(None, ["data.augment.blur.kernel=4"])
    cfg = AugmentConfig.model_validate({"rotate": {}})
    with pytest.raises(ConfigError, match=r"data.augment.rotate: needs images"):
        build_augment(cfg, DataSpec("classification", (64,), 10), None, None)
    with pytest.raises(ConfigError, match="classification"):
        build_augment(
            AugmentConfig.model_validate({"mixup": {}}), DataSpec("language_model", (32,), 256), None, None
        )
    assert load_config(None, ["data.augment.rotate.degrees=15"]).data.augment.rotate.degrees == (-15.0, 15.0)


class Stopper(BaseHook):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, ctx, metrics):
        if ctx.step == self.at:
            raise KeyboardInterrupt


def test_augmented_sampled_run_resumes_bit_for_bit(digit_images, tmp_path):
    """The in-process resume pattern of test_train_loop, with sampling + every augmentation op on."""
    cfg = load_config(
        None,
        [
            "data.name=digits",
            "data.batch_size=32",
            "train.epochs=3",
            "train.lr=0.05",
            "train.momentum=0.9",
            "data.sampling.kind=stratified",
            "data.sampling.fraction=0.8",
            "train.checkpoint.every_steps=7",
            "data.augment.hflip.p=0.5",
            "data.augment.rotate.p=0.5",
            "data.augment.blur.p=0.3",
            "data.augment.brightness.p=0.3",
            "data.augment.erase.p=0.3",
            "data.augment.mixup.p=0.3",
            "data.augment.cutmix.p=0.3",
        ],
    )
    model = lambda: torch.nn.Sequential(  # noqa: E731 dropout makes the RNG state matter too
        torch.nn.Flatten(),
        torch.nn.Linear(64, 32),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(32, 10),
    )

    def run(m, d, **kw):
        return train(
            m, digit_images, cfg.train, 32, run_dir=tmp_path / d, feed=build_feed(cfg, digit_images), **kw
        )

    torch.manual_seed(0)
    straight = model()
    run(straight, "a")
    torch.manual_seed(0)
    interrupted = model()
    with pytest.raises(KeyboardInterrupt):
        run(interrupted, "b", hooks=[Stopper(45)])
    latest = tmp_path / "b" / "checkpoints" / (tmp_path / "b" / "checkpoints" / "latest").read_text()
    assert latest.name == "step-00000042"  # mid-epoch (32 steps per epoch)
    torch.manual_seed(123)
    resumed = model()
    run(resumed, "b", resume_from=latest)
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(digit_images):
    x, y = digit_images.train.x[:64], digit_images.train.y[:64]
    augment = augmenter(
        x,
        hflip={},
        rotate={},
        scale={},
        translate={},
        shear={},
        blur={},
        brightness={},
        contrast={},
        erase={"value": "random"},
        mixup={},
        cutmix={},
    )
    on_cpu = augment(x, y, torch.Generator().manual_seed(0))
    on_gpu = augment(x.cuda(), y.cuda(), torch.Generator().manual_seed(0))
    assert on_gpu[0].is_cuda
    torch.testing.assert_close(on_gpu[0].cpu(), on_cpu[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(on_gpu[1].cpu(), on_cpu[1])
