"""The dataset directory's identity: its format version and the fingerprint of the arrays that define it.

Both ``convert.py`` (which writes a dataset) and ``dataloading.py`` (which reads one) import this, so neither needs
the other: reading a dataset never imports pandas.

    fingerprint = split_fingerprint(train, test, test_negatives)   # [N, 2], [T, 2], [U, K] integer arrays
"""

import hashlib

import numpy as np

FORMAT_VERSION = 1


def dataset_fingerprint(*arrays):
    """SHA-256 over the arrays that define a dataset (train, test, test negatives, ...); checkpoints record it to
    refuse a mismatched dataset.

    Computed from the arrays themselves (as int32, whatever their stored type), never read from metadata, so an
    edited array is a different dataset.
    """
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array, dtype=np.int32)
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def split_fingerprint(train, test, test_negatives=None, validation=None, validation_negatives=None):
    """``dataset_fingerprint`` of a split: absent negatives count as an empty array, and a validation set, when
    there is one, is part of the identity (a leave-one-out split without one keeps the fingerprint it always had)."""
    empty = np.zeros((0, 0), dtype=np.int32)
    arrays = [train, test, empty if test_negatives is None else test_negatives]
    if validation is not None:
        arrays += [validation, empty if validation_negatives is None else validation_negatives]
    return dataset_fingerprint(*arrays)
