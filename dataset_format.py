"""The dataset directory's identity: its format version and the fingerprint of the arrays that define it.

Both ``convert.py`` (which writes a dataset) and ``dataloading.py`` (which reads one) import this, so neither needs
the other: reading a dataset never imports pandas.

    fingerprint = dataset_fingerprint(train, test, test_negatives)   # [N, 2], [U, 2], [U, K] integer arrays
"""

import hashlib

import numpy as np

FORMAT_VERSION = 1


def dataset_fingerprint(train, test, test_negatives):
    """SHA-256 over the arrays that define a dataset; checkpoints record it to refuse a mismatched dataset.

    Computed from the arrays themselves (as int32, whatever their stored type), never read from metadata, so an
    edited array is a different dataset.
    """
    digest = hashlib.sha256()
    for array in (train, test, test_negatives):
        array = np.ascontiguousarray(array, dtype=np.int32)
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
