"""The `[data]` options of the data pipeline: sampling, augmentation and compressed shards.

Torch-free, like every section: DataConfig (at the end) composes them.

    [data.sampling]
    kind = "stratified"      # shuffle | random | systematic | stratified | balanced
    fraction = 0.1           # or size = 5000

    [data.augment]           # one sub-table per op; p = probability per sample; ranges are [low, high]
    hflip = { p = 0.5 }
    rotate = { p = 0.8, degrees = 15 }
    blur = { p = 0.3, sigma = [0.1, 1.5] }
    mixup = { p = 0.5, alpha = 0.2 }

    [data.shards]            # data.name = "shards" reads them; `behemoth data pack` writes them
    stream = true
    codec = "zstd"

Augmentation ops are keyed sub-tables rather than a TOML array: every op then has a dotted path
(`data.augment.rotate.p=0.3` works as an override, a typo fails with its path) and the order is fixed
and documented: geometry (flips, rotate, scale, translate, shear fused into one warp), blur, brightness,
contrast, erase, then mixup and cutmix.
"""

from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from behemoth.config.section import Section
from behemoth.config.sizes import parse_size

# ---------------------------------------------------------------------------------------------- sampling


class SamplingConfig(Section):
    """Which training rows an epoch visits. Every kind is a pure function of (seed, epoch): resume is
    exact."""

    kind: Literal["shuffle", "random", "systematic", "stratified", "balanced"] = "shuffle"
    size: int | None = Field(None, ge=1)  # rows per epoch
    fraction: float | None = Field(None, gt=0.0)  # or a fraction of the training rows
    replacement: bool = False  # random: draw with replacement (a bootstrap); balanced always does
    resample: bool = False  # False: the subset is drawn once (by seed); True: a fresh draw every epoch
    shuffle: bool = True  # visit the chosen rows in a fresh random order each epoch (False: ascending rows)
    seed: int | None = None  # None: train.seed; set it to keep one subset across training seeds

    @model_validator(mode="after")
    def _consistent(self) -> "SamplingConfig":
        if self.size is not None and self.fraction is not None:
            raise ValueError("give size or fraction, not both")
        if self.kind == "shuffle" and (self.size is not None or self.fraction is not None):
            raise ValueError("kind = 'shuffle' visits every row; for a subset use kind = 'random'")
        if self.replacement and self.kind != "random":
            raise ValueError(f"replacement applies to kind = 'random' only (kind = {self.kind!r})")
        oversampling = self.replacement or self.kind == "balanced"
        if self.fraction is not None and self.fraction > 1.0 and not oversampling:
            raise ValueError(f"fraction = {self.fraction}: above 1 needs sampling with replacement")
        return self


# ------------------------------------------------------------------------------------------ augmentation


def _symmetric(value: object) -> object:
    """`degrees = 15` means [-15, 15]."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (-abs(value), abs(value))
    return value


Range = tuple[float, float]
SymmetricRange = Annotated[Range, BeforeValidator(_symmetric)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Op(Section):
    p: Probability = 1.0  # probability that a sample gets this op

    @field_validator("*")
    @classmethod
    def _ranges_ordered(cls, value: object) -> object:
        if isinstance(value, tuple) and len(value) == 2 and value[0] > value[1]:
            raise ValueError("low is above high")
        return value


class FlipOp(_Op):
    p: Probability = 0.5


class RotateOp(_Op):
    degrees: SymmetricRange = (-15.0, 15.0)  # counter-clockwise


class ScaleOp(_Op):
    range: Range = (0.9, 1.1)  # zoom factor, both axes

    @field_validator("range")
    @classmethod
    def _positive(cls, value: Range) -> Range:
        if value[0] <= 0:
            raise ValueError("scale factors must be above 0")
        return value


class TranslateOp(_Op):
    fraction: SymmetricRange = (-0.1, 0.1)  # shift per axis, as a fraction of the image side


class ShearOp(_Op):
    degrees: SymmetricRange = (-10.0, 10.0)  # drawn separately for x and y

    @field_validator("degrees")
    @classmethod
    def _below_90(cls, value: Range) -> Range:
        if max(abs(value[0]), abs(value[1])) >= 90:
            raise ValueError("shear must stay within (-90, 90) degrees")
        return value


class BlurOp(_Op):
    p: Probability = 0.5
    sigma: Range = (0.1, 1.5)  # Gaussian sigma in pixels, drawn per sample
    kernel: int | None = Field(None, ge=3)  # odd side of the kernel; None: 2 * ceil(3 * max sigma) + 1

    @field_validator("sigma")
    @classmethod
    def _positive(cls, value: Range) -> Range:
        if value[0] <= 0:
            raise ValueError("sigma must be above 0")
        return value

    @field_validator("kernel")
    @classmethod
    def _odd(cls, value: int | None) -> int | None:
        if value is not None and value % 2 == 0:
            raise ValueError("must be odd")
        return value


class BrightnessOp(_Op):
    p: Probability = 0.5
    range: SymmetricRange = (-0.2, 0.2)  # added, as a fraction of the data's value range


class ContrastOp(_Op):
    p: Probability = 0.5
    range: Range = (0.8, 1.2)  # factor around each image's mean

    @field_validator("range")
    @classmethod
    def _not_negative(cls, value: Range) -> Range:
        if value[0] < 0:
            raise ValueError("contrast factors must be 0 or more")
        return value


class EraseOp(_Op):
    p: Probability = 0.5
    area: Range = (0.02, 0.25)  # erased fraction of the image
    ratio: Range = (0.3, 3.3)  # height / width of the box (drawn log-uniformly)
    value: Literal["black", "mean", "random"] = "black"  # random: standard normal noise

    @field_validator("area")
    @classmethod
    def _fraction(cls, value: Range) -> Range:
        if not (0 < value[0] and value[1] <= 1):
            raise ValueError("must lie in (0, 1]")
        return value

    @field_validator("ratio")
    @classmethod
    def _positive(cls, value: Range) -> Range:
        if value[0] <= 0:
            raise ValueError("ratio must be above 0")
        return value


class MixOp(_Op):
    p: Probability = 0.5
    alpha: float = Field(0.2, gt=0.0)  # lambda ~ Beta(alpha, alpha)


class CutMixOp(MixOp):
    alpha: float = Field(1.0, gt=0.0)


GEOMETRIC_OPS = ("hflip", "vflip", "rotate", "scale", "translate", "shear")


class AugmentConfig(Section):
    """Batched augmentation of training images with per-sample random parameters (None: op off)."""

    hflip: FlipOp | None = None
    vflip: FlipOp | None = None
    rotate: RotateOp | None = None
    scale: ScaleOp | None = None
    translate: TranslateOp | None = None
    shear: ShearOp | None = None
    blur: BlurOp | None = None
    brightness: BrightnessOp | None = None
    contrast: ContrastOp | None = None
    erase: EraseOp | None = None
    mixup: MixOp | None = None
    cutmix: CutMixOp | None = None
    # what shows where the warp uncovers the image: the darkest value of each channel, the data mean,
    # the nearest edge pixel or a mirror image
    fill: Literal["black", "mean", "border", "reflection"] = "black"

    def active(self) -> list[str]:
        """Names of the configured ops, in the order they are applied."""
        return [
            name for name in type(self).model_fields if name != "fill" and getattr(self, name) is not None
        ]

    @property
    def enabled(self) -> bool:
        return bool(self.active())


# ----------------------------------------------------------------------------------------------- shards

LOSSLESS_CODECS = ("zstd", "lz4", "lz4hc", "blosclz", "zlib")
LOSSLESS_FILTERS = ("shuffle", "bitshuffle", "nofilter", "delta", "bytedelta")
LOSSY = {
    "zfp_acc",
    "zfp_prec",
    "zfp_rate",
    "openhtj2k",
    "htj2k",
    "j2k",
    "grok",
    "trunc_prec",
    "int_trunc",
    "ndmean",
}


def check_lossless(value: str, kind: str) -> str:
    """`value` as a lowercase codec/filter name, or a one-line ValueError (lossy ones are named as such)."""
    name = value.lower()
    allowed = LOSSLESS_CODECS if kind == "codec" else LOSSLESS_FILTERS
    if name in LOSSY:
        raise ValueError(f"{kind} {value!r} is lossy; shards are lossless: use one of {', '.join(allowed)}")
    if name not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; lossless {kind}s: {', '.join(allowed)}")
    return name


class ShardsConfig(Section):
    """Reading (data.name = "shards") and packing (`behemoth data pack`) compressed, checksummed shards."""

    # reading
    stream: bool = True  # False: decompress the training split into memory (every sampler works then)
    shuffle_buffer: int = Field(16384, ge=1)  # samples permuted together while streaming
    prefetch: bool = True  # read, verify and decompress the next shard in a background thread
    # packing (the `behemoth data pack` flags override these)
    codec: str = "zstd"  # blosc2 codec (lossless)
    level: int = Field(5, ge=0, le=9)  # compression level
    filter: str = "shuffle"  # blosc2 filter applied before the codec
    shard_size: str = "64MiB"  # uncompressed bytes per shard

    @field_validator("codec")
    @classmethod
    def _codec(cls, value: str) -> str:
        return check_lossless(value, "codec")

    @field_validator("filter")
    @classmethod
    def _filter(cls, value: str) -> str:
        return check_lossless(value, "filter")

    @field_validator("shard_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if parse_size(value) < 1:
            raise ValueError("shard_size must be at least 1 byte")
        return value


class DataConfig(Section):
    # mnist | fashion_mnist | digits | kjv | python-docs | text | folder | table | arrays | shards
    name: str = "mnist"
    path: str | None = None  # file or folder for text/folder/table/arrays
    label_column: str | None = None  # table: the column holding the label
    image_size: tuple[int, int] | None = None  # folder: resize every image to (H, W)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # share of the training split held out for validation
    split_seed: int = 0  # seeds the validation split (and the test split of data without one: digits)
    batch_size: int = Field(128, ge=1)  # the global batch (split across processes)
    eval_batch_size: int = Field(1000, ge=1)  # batch size when evaluating (no gradients)
    train_limit: int | None = Field(None, ge=1)  # keep only the first N training samples
    test_limit: int | None = Field(None, ge=1)  # keep only the first N test samples
    block_size: int = Field(128, ge=2)  # text: tokens per training sequence
    # text: UTF-8 bytes (256 tokens), BPE trained on the train split, or a Hugging Face model's tokenizer
    # (with model.name = "hf" on text data it is that model's, unless data.tokenizer is set)
    tokenizer: Literal["byte", "bpe", "hf"] = "byte"
    tokenizer_path: str | None = None  # hf: the directory holding tokenizer.json (default: model.path)
    vocab_size: int | None = Field(None, ge=257, le=65536)  # bpe: vocabulary size (default 2048)
    # bpe: a saved tokenizer.json to use instead of training one (a resumed run reads its own)
    tokenizer_file: str | None = None
    sampling: SamplingConfig = SamplingConfig()  # which training rows an epoch visits
    augment: AugmentConfig = AugmentConfig()  # batched training augmentation (ops off by default)
    shards: ShardsConfig = ShardsConfig()  # data.name = "shards" reading; `behemoth data pack` options

    @field_validator("vocab_size")
    @classmethod
    def _vocab_size_needs_bpe(cls, vocab_size: int | None, info: ValidationInfo) -> int | None:
        kind = info.data.get("tokenizer")
        if vocab_size is not None and kind == "byte":
            raise ValueError("needs data.tokenizer = 'bpe' (the byte tokenizer always has 256 tokens)")
        if vocab_size is not None and kind == "hf":
            raise ValueError("needs data.tokenizer = 'bpe' (a Hugging Face tokenizer has its own vocabulary)")
        return vocab_size

    @field_validator("tokenizer_file")
    @classmethod
    def _tokenizer_file_needs_bpe(cls, path: str | None, info: ValidationInfo) -> str | None:
        if path is not None and info.data.get("tokenizer") != "bpe":
            raise ValueError("needs data.tokenizer = 'bpe' (the byte tokenizer has no file)")
        return path

    @model_validator(mode="after")
    def _tokenizer_path_needs_hf(self) -> "DataConfig":
        if self.tokenizer_path is not None and self.tokenizer != "hf":
            raise ValueError(
                f"data.tokenizer_path is read with data.tokenizer = 'hf' (not {self.tokenizer!r})"
            )
        return self
