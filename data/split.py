"""Patient-grouped, class-stratified folds.

One patient can have several radiographs; if they land in different folds the
validation score leaks. Patients are therefore the unit of assignment, and the
patients' class (any positive image / labelled negatives only / unlabelled only)
is the stratum, so every fold gets its share of positives.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def assign_folds(
    image_ids: Sequence[str],
    patient_ids: Sequence[str | None],
    has_pneumothorax: Sequence[bool | None],
    n_folds: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Fold number (0..n_folds-1) for each image, as an ``int16`` array.

    ``patient_ids[i]`` is None when the file had no patient id: that image is then
    its own group. ``has_pneumothorax[i]`` is None for unlabelled images.

    The result depends only on which images share a patient, their classes and
    ``seed`` — not on the patient id strings, so folds stay the same whatever
    pseudonymisation key produced them.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    n = len(image_ids)
    if not (len(patient_ids) == len(has_pneumothorax) == n):
        raise ValueError(
            f"length mismatch: {n} image ids, {len(patient_ids)} patient ids, "
            f"{len(has_pneumothorax)} labels"
        )
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (image_id, patient) in enumerate(zip(image_ids, patient_ids, strict=True)):
        groups[f"p:{patient}" if patient else f"i:{image_id}"].append(i)

    # Canonical group order (by smallest image id), then a seeded shuffle.
    members = sorted(groups.values(), key=lambda idx: min(image_ids[i] for i in idx))
    rng = np.random.default_rng(seed)
    members = [members[i] for i in rng.permutation(len(members))]

    def stratum(idx: list[int]) -> int:
        labels = [has_pneumothorax[i] for i in idx]
        if any(v is True for v in labels):
            return 0
        return 1 if any(v is False for v in labels) else 2

    folds = np.zeros(n, np.int16)
    total = np.zeros(n_folds, np.int64)
    for s in range(3):
        in_stratum = [idx for idx in members if stratum(idx) == s]
        # Largest groups first, so the greedy fill ends balanced (stable: keeps the shuffle).
        in_stratum.sort(key=len, reverse=True)
        count = np.zeros(n_folds, np.int64)
        for idx in in_stratum:
            # Fewest images of this stratum, then fewest overall, then lowest fold number.
            fold = min(range(n_folds), key=lambda f: (count[f], total[f], f))
            folds[idx] = fold
            count[fold] += len(idx)
            total[fold] += len(idx)
    return folds
