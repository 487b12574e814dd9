"""Folds: grouped by patient, stratified by class, seeded, independent of pseudonyms."""

from __future__ import annotations

import numpy as np
import pytest

from pneumotune.data.split import assign_folds


def _cohort(seed: int, n_patients: int = 120):
    rng = np.random.default_rng(seed)
    image_ids, patients, labels = [], [], []
    for p in range(n_patients):
        positive = rng.random() < 0.25
        for k in range(int(rng.integers(1, 5))):
            image_ids.append(f"img{p:04d}_{k}")
            patients.append(f"patient-{p}")
            labels.append(bool(positive and k == 0) if rng.random() > 0.05 else None)
    return image_ids, patients, labels


def test_no_patient_in_two_folds():
    ids, patients, labels = _cohort(0)
    folds = assign_folds(ids, patients, labels, n_folds=5, seed=3)
    by_patient: dict[str, set[int]] = {}
    for p, f in zip(patients, folds, strict=True):
        by_patient.setdefault(p, set()).add(int(f))
    assert all(len(fs) == 1 for fs in by_patient.values())
    assert set(folds.tolist()) == set(range(5))


def test_positives_are_balanced_across_folds():
    ids, patients, labels = _cohort(1, n_patients=400)
    folds = assign_folds(ids, patients, labels, n_folds=5, seed=0)
    pos = np.array([v is True for v in labels])
    per_fold = np.bincount(folds[pos], minlength=5)
    # Greedy by group size: the spread is at most one patient's images.
    assert per_fold.max() - per_fold.min() <= 4
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 4


def test_seeded_and_independent_of_pseudonym_strings():
    ids, patients, labels = _cohort(2)
    a = assign_folds(ids, patients, labels, seed=7)
    renamed = [f"hmac-{hash(p) % 10**9}" for p in patients]
    np.testing.assert_array_equal(a, assign_folds(ids, renamed, labels, seed=7))
    assert not np.array_equal(a, assign_folds(ids, patients, labels, seed=8))


def test_missing_patient_id_is_its_own_group():
    folds = assign_folds(
        ["a", "b", "c", "d"], [None, None, None, None], [True, False, True, False], 2
    )
    assert sorted(np.bincount(folds).tolist()) == [2, 2]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"n_folds": 1}, "n_folds must be >= 2"), ({"patient_ids": ["p"]}, "length mismatch")],
)
def test_invalid_arguments(kwargs, fragment):
    args = {"image_ids": ["a", "b"], "patient_ids": ["p", "q"], "has_pneumothorax": [True, None]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=fragment):
        assign_folds(**args)
