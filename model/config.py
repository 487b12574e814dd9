"""The configuration of one training run: what a search trial samples and `train` fits.

It is frozen and flat apart from the augmentation group, so that a search space can
name every field (``"lr"``, ``"augment.flip_p"``) and a result table can show them.
Importing this module imports neither TensorFlow nor Ray.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pneumotune.errors import ConfigError
from pneumotune.model.augment import AugmentConfig

SCHEDULES = ("constant", "cosine", "cosine_restarts", "step", "one_cycle")
METRICS = ("val_iou", "val_dice", "val_kaggle_dice", "val_positive_iou", "val_loss")
# The validation metrics of an epoch, in print order.
VAL_KEYS = ("val_loss", "val_iou", "val_dice", "val_kaggle_dice", "val_positive_iou")
# The settings that change a trial most, in the order they are shown: a trial's line when
# it starts and its name in the Ray dashboard (pneumotune.search.watch), those it has.
KEY_PARAMS = ("img_size", "base_filters", "depth", "lr", "schedule", "batch_size")


def format_epoch(epoch: int, epochs: int, metrics: dict[str, Any]) -> str:
    """One line of an epoch's metrics, for a terminal or a trial's log: ``epoch   3/24
    loss 0.8123  val_loss ...  val_iou 0.4123 ... lr 1.00e-03  4.1 s (512 img/s)``.
    Keys that ``metrics`` lacks are left out."""

    def has(key: str) -> bool:
        return isinstance(metrics.get(key), int | float)

    parts = [f"epoch {epoch:>3}/{epochs}"]
    parts += [f"{k} {metrics[k]:.4f}" for k in ("loss", *VAL_KEYS) if has(k)]
    if has("lr"):
        parts.append(f"lr {metrics['lr']:.2e}")
    if has("epoch_seconds"):
        speed = f" ({metrics['images_per_s']:.0f} img/s)" if has("images_per_s") else ""
        parts.append(f"{metrics['epoch_seconds']:.1f} s{speed}")
    return "  ".join(parts)


JIT_CHOICES = ("auto", "on", "off")


@dataclass(frozen=True)
class TrainConfig:
    # model
    img_size: int = 128
    base_filters: int = 16
    depth: int = 4
    dropout: float = 0.0
    # optimisation
    epochs: int = 10
    batch_size: int = 16
    # Images per epoch (None: the training set once). On SIIM at 1024 px one pass is long
    # for a search's first rung; an epoch of N images draws N of the set, a fresh draw
    # each epoch (model.sampling.epoch_indices).
    epoch_images: int | None = None
    lr: float = 1e-3
    schedule: str = "cosine"  # one of SCHEDULES
    warmup_epochs: float = 0.0
    cosine_alpha: float = 0.0  # final LR of cosine / restarts, as a fraction of lr
    restart_cycles: int = 3  # cosine_restarts: snapshot cycles over the run
    step_gamma: float = 0.3  # step: LR factor at each drop
    step_every: float = 0.33  # step: drop every this fraction of the run
    weight_decay: float = 0.0  # AdamW when > 0
    # loss weights (the 1st SIIM place used BCE:Dice:Focal = 3:1:4)
    loss_bce: float = 1.0
    loss_dice: float = 1.0
    loss_focal: float = 0.0
    # sampling: share of positive images per epoch, linear from start to end (None: natural)
    pos_share_start: float | None = None
    pos_share_end: float | None = None
    # augmentation
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # evaluation and reproducibility
    threshold: float = 0.5
    val_fold: int = 0
    seed: int = 0
    mixed_precision: bool = False
    # XLA compilation of the train step: "auto" (Keras' choice), "on" or "off"
    jit_compile: str = "auto"

    def __post_init__(self) -> None:
        problems = []
        if self.img_size < 16 or self.img_size % (2**self.depth):
            problems.append(
                f"img_size must be a multiple of 2**depth = {2**self.depth} and >= 16, "
                f"got {self.img_size}"
            )
        if not 1 <= self.depth <= 6:
            problems.append(f"depth must be in 1..6, got {self.depth}")
        if self.base_filters < 1:
            problems.append(f"base_filters must be >= 1, got {self.base_filters}")
        if self.epochs < 1 or self.batch_size < 1:
            problems.append(
                f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}"
            )
        if self.epoch_images is not None and self.epoch_images < 1:
            problems.append(f"epoch_images must be >= 1 or null, got {self.epoch_images}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if min(self.loss_bce, self.loss_dice, self.loss_focal) < 0 or not (
            self.loss_bce + self.loss_dice + self.loss_focal > 0
        ):
            problems.append("loss weights must be >= 0 and not all 0")
        for name in ("pos_share_start", "pos_share_end"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                problems.append(f"{name} must be in (0, 1) or null, got {value}")
        if (self.pos_share_start is None) != (self.pos_share_end is None):
            problems.append("pos_share_start and pos_share_end must both be set or both be null")
        if not 0.0 < self.threshold < 1.0:
            problems.append(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.jit_compile not in JIT_CHOICES:
            problems.append(f"jit_compile must be one of {JIT_CHOICES}, got {self.jit_compile!r}")
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))

    # -------------------------------------------------------------- flat form
    def to_flat(self) -> dict[str, Any]:
        """``{"lr": ..., "augment.flip_p": ...}``: the names a search space uses."""
        flat = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "augment"
        }
        flat.update({f"augment.{k}": v for k, v in dataclasses.asdict(self.augment).items()})
        return flat

    @classmethod
    def from_flat(cls, values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
        """Overlay flat ``values`` on ``base`` (default: the defaults); unknown names fail."""
        base = base or cls()
        known = set(base.to_flat())
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown training parameter(s) {unknown}; known: {sorted(known)}")
        top = {k: v for k, v in values.items() if not k.startswith("augment.")}
        aug = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("augment.")}
        augment = dataclasses.replace(base.augment, **aug) if aug else base.augment
        return dataclasses.replace(base, augment=augment, **top)

    @classmethod
    def tutorial(cls, **overrides: Any) -> TrainConfig:
        """The tutorial's settings: 256 px, 16 filters, Adam 1e-3 with single-cycle cosine,
        BCE + soft Dice, batch 16, its augmentations. ``overrides`` adapt it to a dataset
        (e.g. the stored sizes) or a budget (epochs)."""
        base = cls(
            img_size=256,
            base_filters=16,
            depth=4,
            batch_size=16,
            lr=1e-3,
            schedule="cosine",
            loss_bce=1.0,
            loss_dice=1.0,
            loss_focal=0.0,
            augment=AugmentConfig.tutorial(),
        )
        return cls.from_flat(overrides, base) if overrides else base
