"""BCE + soft Dice (+ focal) combo losses, as one serialisable Keras loss.

``loss = bce * BCE + dice * (1 - softDice) + focal * Focal``, each term computed per
image (``y_true``, ``y_pred`` of shape ``(B, H, W, 1)`` or ``(B, H, W)``, probabilities
from a sigmoid head), then averaged over the batch by Keras' reduction.

Soft Dice is computed **per image**, then averaged, rather than pooled over the
batch: pooled, a batch's one large pneumothorax dominates the sum and a small one
next to it barely moves the loss, while the leaderboard (Kaggle per-image Dice)
weighs every image equally. Per image, an empty truth gives
``1 - smooth / (sum(p) + smooth)``, which pushes every predicted pixel of a negative
image to zero, again as the metric does (a single false pixel scores 0). ``smooth``
keeps that ratio defined when truth and prediction are both empty (loss 0).
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["ComboLoss", "make_loss"]

# Probabilities are clipped to [EPSILON, 1 - EPSILON] before any log: a saturated
# sigmoid returns exactly 0 or 1 in float32, and log(0) would give inf / NaN gradients.
EPSILON = 1e-7


@keras.saving.register_keras_serializable(package="pneumotune")
class ComboLoss(keras.losses.Loss):
    """Weighted sum of binary cross-entropy, soft Dice loss and binary focal loss.

    Args:
        bce: weight of the pixel-mean binary cross-entropy.
        dice: weight of ``1 - soft Dice`` (per image, see the module docstring).
        focal: weight of the pixel-mean focal loss ``-(1 - p_t)**gamma * log(p_t)``
            (no alpha balancing; with ``focal_gamma=0`` it equals BCE).
        focal_gamma: focusing exponent, >= 0.
        smooth: added to the Dice numerator and denominator, > 0.

    ``call`` returns one loss per image, shape ``(B,)``.
    """

    def __init__(
        self,
        bce: float = 1.0,
        dice: float = 1.0,
        focal: float = 0.0,
        focal_gamma: float = 2.0,
        smooth: float = 1.0,
        name: str = "combo_loss",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ) -> None:
        weights = {"bce": bce, "dice": dice, "focal": focal}
        negative = {k: v for k, v in weights.items() if v < 0}
        if negative:
            raise ValueError(f"loss weights must be >= 0; got {negative}")
        if not any(v > 0 for v in weights.values()):
            raise ValueError(f"at least one loss weight must be > 0; got {weights}")
        if focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0; got {focal_gamma!r}")
        if smooth <= 0:
            raise ValueError(
                f"smooth must be > 0 (it defines Dice for empty masks); got {smooth!r}"
            )
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.bce = float(bce)
        self.dice = float(dice)
        self.focal = float(focal)
        self.focal_gamma = float(focal_gamma)
        self.smooth = float(smooth)
        self._variables: tuple[keras.Variable, ...] | None = None

    def weights_in_variables(self) -> ComboLoss:
        """Read the three weights from variables from now on, and compute every term
        whatever its weight: a train step traced with this loss then serves any weights
        :meth:`set_weights` gives it (:mod:`model.warm`). Same values as before: a zero
        weight adds exactly 0."""
        if self._variables is None:
            self._variables = tuple(
                keras.Variable(w, trainable=False, dtype="float32", name=f"loss_{k}")
                for k, w in (("bce", self.bce), ("dice", self.dice), ("focal", self.focal))
            )
        return self

    def set_weights(self, bce: float, dice: float, focal: float) -> None:
        """New weights for a loss whose weights are in variables."""
        if self._variables is None:
            raise RuntimeError("set_weights needs weights_in_variables() first")
        checked = ComboLoss(bce, dice, focal, self.focal_gamma, self.smooth)  # validates
        self.bce, self.dice, self.focal = checked.bce, checked.dice, checked.focal
        for var, w in zip(self._variables, (self.bce, self.dice, self.focal), strict=True):
            var.assign(w)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        batch = ops.shape(y_pred)[0]
        t = ops.reshape(y_true, (batch, -1))
        p = ops.clip(ops.reshape(y_pred, (batch, -1)), EPSILON, 1.0 - EPSILON)

        total = ops.zeros_like(p[:, 0])
        every = self._variables is not None
        bce, dice, focal = self._variables or (self.bce, self.dice, self.focal)
        if every or self.bce or self.focal:
            # log of the probability given to the true class, per pixel
            p_t = t * p + (1.0 - t) * (1.0 - p)
            log_p_t = ops.log(p_t)
            if every or self.bce:
                total += bce * -ops.mean(log_p_t, axis=1)
            if every or self.focal:
                modulator = ops.power(1.0 - p_t, self.focal_gamma)
                total += focal * -ops.mean(modulator * log_p_t, axis=1)
        if every or self.dice:
            inter = ops.sum(t * p, axis=1)
            denom = ops.sum(t, axis=1) + ops.sum(p, axis=1)
            soft_dice = (2.0 * inter + self.smooth) / (denom + self.smooth)
            total += dice * (1.0 - soft_dice)
        return total

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "bce": self.bce,
            "dice": self.dice,
            "focal": self.focal,
            "focal_gamma": self.focal_gamma,
            "smooth": self.smooth,
        }


def make_loss(
    bce: float = 1.0,
    dice: float = 1.0,
    focal: float = 0.0,
    focal_gamma: float = 2.0,
    smooth: float = 1.0,
) -> ComboLoss:
    """The training loss for a config: ``make_loss(1, 1)`` is the tutorial's BCE + Dice;
    the 1st SIIM solution used weights like ``make_loss(bce=3, dice=1, focal=4)``."""
    return ComboLoss(bce=bce, dice=dice, focal=focal, focal_gamma=focal_gamma, smooth=smooth)
