"""The dataset directory, written and read in one place: its files, format version and fingerprint.

``convert.py`` writes a directory with ``write_dataset`` (atomically: built beside the target, then renamed);
``dataloading.py`` reads one with ``read_dataset`` into plain arrays (ours: metadata.json and .npy arrays, read
without pickle; NVIDIA's: feature_spec.yaml and .pt tensors, read with ``weights_only=True``) and turns them into
device tensors. Reading never imports pandas.

    metadata = write_dataset(split, "data/ml100k", source, seed=0, force=False, progress=print)
    arrays, metadata = read_dataset("data/ml100k")
    fingerprint = split_fingerprint(train, test, test_negatives)   # [N, 2], [T, 2], [U, K] integer arrays
"""

import csv
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ncflib import textdata
from ncflib.errors import ConversionError, DatasetError
from ncflib.files import process_alive, write_failure
from ncflib.textdata import Ragged, read_vocabulary

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


# ------------------------------------------------------------------------------------------------------ output


def _id_table(ids, titles=None):
    import pandas as pd  # writing only: reading a dataset never imports pandas

    table = pd.DataFrame({"index": np.arange(len(ids)), "original_id": ids})
    if titles:
        table["title"] = [titles.get(key, "") for key in ids.tolist()]
    return table


def _prepare_output(output, force, source=None):
    """Refuse an existing output without --force, one --force must not replace, and an unwritable place; clean the
    leftovers of killed conversions; returns (staging dir, parent)."""
    output = Path(output)
    _clean_leftovers(output.absolute())
    if output.exists() and not force:
        raise ConversionError(f"{output}: already exists; pass --force to replace it")
    if output.exists() and not output.is_dir():
        raise ConversionError(f"{output}: exists and is not a directory")
    if source is not None and Path(output).resolve() in (Path(source).resolve(), *Path(source).resolve().parents):
        raise ConversionError(f"{output}: holds the input --path {source}, which replacing it would delete; choose "
                              "another --output")
    if output.exists() and not (output / "metadata.json").is_file():
        raise ConversionError(f"{output}: is not a dataset written by convert.py (no metadata.json), and --force "
                              "only replaces those; choose another --output, or remove it yourself")
    parent = output.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-{os.getpid()}-", dir=parent)), parent
    except OSError as error:
        raise ConversionError(f"{output}: cannot write here ({error.strerror}); choose another --output") from None


def _clean_leftovers(output):
    """Remove what a killed conversion of ``output`` left beside it: its half-built ``.partial-PID`` folder, and
    its ``.old-PID`` backup of the dataset it was replacing, put back in place when the new one never arrived."""
    for leftover in output.parent.glob(f".{output.name}.*-*"):
        match = re.fullmatch(rf"\.{re.escape(output.name)}\.(partial|old)-(\d+)(-\w+)?", leftover.name)
        if not match or not leftover.is_dir() or process_alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not output.exists():
            leftover.rename(output)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


    return True


def check_output(output, force, source=None):
    """Fail fast, before a long conversion, when the output could not or must not be written."""
    staging, _ = _prepare_output(output, force, source)
    staging.rmdir()


def write_dataset(split, output, source, seed, force, progress):
    """Write the dataset directory atomically: build it beside the target, then rename it into place."""
    output = Path(output)
    staging, parent = _prepare_output(output, force)
    try:
        arrays = {"train": split.train, "test": split.test, "test_negatives": split.test_negatives,
                  "validation": split.validation, "validation_negatives": split.validation_negatives,
                  **split.extra_arrays}
        arrays = {name: array for name, array in arrays.items() if array is not None}
        for name, array in arrays.items():
            np.save(staging / f"{name}.npy", array, allow_pickle=False)
        _id_table(split.user_ids).to_csv(staging / "users.csv", index=False)
        _id_table(split.item_ids, split.titles).to_csv(staging / "items.csv", index=False)
        if split.vocabulary is not None:
            textdata.write_vocabulary(staging / "vocab.csv", *split.vocabulary)
        metadata = {
            "format_version": FORMAT_VERSION,
            "source": source,
            "num_users": int(split.user_ids.size),
            "num_items": int(split.item_ids.size),
            "num_train": int(split.train.shape[0]),
            "num_test_users": int(np.unique(split.test[:, 0]).size),
            "num_test": int(split.test.shape[0]),
            "num_validation": 0 if split.validation is None else int(split.validation.shape[0]),
            **({} if split.vocabulary is None else {"vocabulary_size": len(split.vocabulary[0])}),
            "test_negatives": 0 if split.test_negatives is None else int(split.test_negatives.shape[1]),
            "protocol": split.protocol,
            "counts": split.counts,
            "seed": seed,
            "arrays": {name: {"shape": list(array.shape), "dtype": str(array.dtype)} for name, array in arrays.items()},
            "fingerprint": split_fingerprint(split.train, split.test, split.test_negatives, split.validation,
                                             split.validation_negatives),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        umask = os.umask(0)  # read it back at once: mkdtemp made the folder 0700, a dataset is as any new folder
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        if output.exists():
            backup = parent / f".{output.name}.old-{os.getpid()}"
            output.rename(backup)
            staging.rename(output)
            shutil.rmtree(backup)
        else:
            staging.rename(output)
    except OSError as error:
        reason = write_failure(error, parent)  # before the partial dataset goes, freeing its space
        shutil.rmtree(staging, ignore_errors=True)
        raise ConversionError(f"{output}: cannot write the dataset ({reason}); free some space or "
                              "choose another --output") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(f"wrote {output}")
    return metadata


# ------------------------------------------------------------------------------------------------------ reading


def read_id_map(file):
    """(original ids as strings, titles or None) from an id map written by convert.py; (None, None) if absent."""
    if not file.is_file():
        return None, None
    try:
        with open(file, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        ids = [row["original_id"] for row in rows]
        titles = [row["title"] for row in rows] if rows and "title" in rows[0] else None
    except (OSError, UnicodeDecodeError, KeyError, csv.Error) as error:
        raise DatasetError(f"{file}: unreadable id map ({error}); re-create the dataset with convert.py") from None
    return ids, titles


def read_dataset(path):
    """Read a dataset directory (ours or NVIDIA's) into plain arrays: (the keyword arguments of
    ``dataloading.Dataset.from_arrays``, which checks shapes and ranges; metadata.json's record, or None for
    NVIDIA's layout, to be checked against the dataset with ``check_metadata``)."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: not a directory; create a dataset with convert.py and pass it with --data")
    if (path / "metadata.json").is_file():
        return _read_ours(path)
    if (path / "feature_spec.yaml").is_file():
        return _read_nvidia(path), None
    raise DatasetError(f"{path}: no metadata.json (convert.py) or feature_spec.yaml (NVIDIA) here; "
                       "create a dataset with convert.py")


def _load_array(file, mmap=False):
    try:
        return np.load(file, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError:
        raise DatasetError(f"{file}: missing; re-create the dataset with convert.py") from None
    except (ValueError, OSError, EOFError) as error:
        raise DatasetError(f"{file}: corrupted or not a .npy array ({str(error)[:80]}); re-create it with "
                           "convert.py") from None


# The counts metadata.json records: each a whole number, checked against the arrays and id maps beside it.
COUNTS = ("num_users", "num_items", "num_train", "num_test_users", "num_test", "num_validation", "test_negatives")


def _read_metadata(path):
    """metadata.json's record, its counts checked to be whole numbers (``3700.0`` or ``true`` is refused: a model
    would be sized from it) and ``num_users``/``num_items`` against the id maps' rows."""
    file = path / "metadata.json"
    try:
        metadata = json.loads(file.read_text())
        if not isinstance(metadata, dict):
            raise TypeError("not a JSON object")
        missing = [key for key in ("num_users", "num_items") if key not in metadata]
        if missing:
            raise KeyError(missing[0])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{file}: unreadable or incomplete ({error}); re-create the dataset with convert.py") \
            from None
    for key in COUNTS:
        value = metadata.get(key, 0)
        if type(value) is not int or value < 0:
            raise DatasetError(f"{file}: {key} is {json.dumps(value)[:20]}, expected a whole number >= 0 (edited "
                               "after convert.py wrote it?); re-create the dataset with convert.py")
    for key, name in (("num_users", "users.csv"), ("num_items", "items.csv")):
        if (path / name).is_file():
            rows = _count_rows(path / name)
            if rows != metadata[key]:
                raise DatasetError(f"{file}: records {key} {metadata[key]:,}, but {name} maps {rows:,} ids (edited "
                                   "after convert.py wrote them?); re-create the dataset with convert.py")
    return metadata


def _count_rows(file):
    """Data rows of a CSV id map (its header aside)."""
    try:
        with open(file, newline="", encoding="utf-8") as handle:
            return max(sum(1 for _ in csv.reader(handle)) - 1, 0)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{file}: unreadable id map ({error}); re-create the dataset with convert.py") from None


def _read_ours(path):
    metadata = _read_metadata(path)
    num_users, num_items = metadata["num_users"], metadata["num_items"]
    train, test = _load_array(path / "train.npy"), _load_array(path / "test.npy")
    # Negatives exist for splits with one held-out item per user (the metadata says how many: missing ones are an
    # error); the validation set only where the split made one.
    negatives = (_load_array(path / "test_negatives.npy") if (path / "test_negatives.npy").is_file()
                 or metadata.get("test_negatives", 1) else None)
    held = {name: _load_array(path / f"{name}.npy") if (path / f"{name}.npy").is_file() else None
            for name in ("validation", "validation_negatives")}
    # Mapped, not read: only --recency uses the times, and on ML-20M they are 160 MB.
    side = {name: _load_array(path / f"{name}.npy", mmap=True) if (path / f"{name}.npy").is_file() else None
            for name in ("train_timestamps", "train_ratings", "validation_timestamps")}
    held |= {name: _load_array(path / f"{name}.npy") if (path / f"{name}.npy").is_file() else None
             for name in ("test_ratings", "validation_ratings")}
    return {"num_users": num_users, "num_items": num_items, "train": train, "test": test, "test_negatives": negatives,
            "path": path, **side, **held, **_load_texts(path)}, metadata


def _load_texts(path):
    """{texts, vocabulary} of a dataset with review text (vocab.csv and the parts' ragged arrays); {} without."""
    if not (path / "vocab.csv").is_file():
        return {}
    try:
        vocabulary = read_vocabulary(path / "vocab.csv")
    except ValueError as error:
        raise DatasetError(f"{error}; re-create the dataset with convert.py") from None
    texts = {}
    for part in ("train", "test", "validation"):
        if (path / f"{part}_text.npy").is_file():
            values, offsets = _load_array(path / f"{part}_text.npy"), _load_array(path / f"{part}_text_offsets.npy")
            try:
                texts[part] = Ragged.from_arrays(values, offsets, len(vocabulary[0]), str(path / f"{part}_text.npy"))
            except ValueError as error:
                raise DatasetError(f"{error}; re-create the dataset with convert.py") from None
    return {"texts": texts, "vocabulary": vocabulary}


def check_metadata(path, metadata, actual_values):
    """The counts and fingerprint that metadata.json records (``metadata``) must describe the arrays beside it
    (``actual_values``: num_train, num_test_users, test_negatives and fingerprint as the loaded dataset has them)."""
    for key, actual in actual_values.items():
        if key in metadata and metadata[key] != actual:
            raise DatasetError(f"{path / 'metadata.json'}: records {key} {metadata[key]!r:.20}, but the arrays give "
                               f"{actual!r:.20} (edited after convert.py wrote them?); re-create the dataset with "
                               "convert.py")


def _nvidia_columns(path, sources, mapping):
    """{feature name: 1-d tensor} of one channel (``train`` or ``test``) of NVIDIA's source_spec, read from its
    ``.pt`` files with ``weights_only=True``."""
    columns = {}
    for chunk in sources[mapping]:
        if chunk.get("type") != "torch_tensor":
            raise DatasetError(f"{path / 'feature_spec.yaml'}: {mapping} source type {chunk.get('type')!r} is "
                               "not supported (only torch_tensor)")
        tensors = []
        for file in chunk["files"]:
            try:
                tensors.append(torch.load(path / file, map_location="cpu", weights_only=True))
            except Exception as error:  # noqa: BLE001 - a pickle refused by weights_only, a damaged file, ...
                first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:80]
                raise DatasetError(f"{path / file}: cannot load as tensors ({first_line}); only plain tensor "
                                   "files are read (weights_only)") from None
        data = torch.cat(tensors)  # [rows, features]: one column per feature
        if data.dim() == 1:
            data = data[:, None]
        if data.shape[1] != len(chunk["features"]):
            raise DatasetError(f"{path / chunk['files'][0]}: has {data.shape[1]} columns for features "
                               f"{chunk['features']}")
        for index, name in enumerate(chunk["features"]):
            columns[name] = data[:, index]
    return columns


def _read_nvidia(path):
    """NVIDIA's layout: feature_spec.yaml naming torch tensors for the train and test channels."""
    import yaml

    try:
        spec = yaml.safe_load((path / "feature_spec.yaml").read_text())
        features = spec["feature_spec"]
        user_name, item_name = spec["channel_spec"]["user_ch"][0], spec["channel_spec"]["item_ch"][0]
        num_users = int(features[user_name]["cardinality"])
        num_items = int(features[item_name]["cardinality"])
        sources = spec["source_spec"]
    except (yaml.YAMLError, KeyError, TypeError, IndexError, ValueError) as error:
        raise DatasetError(f"{path / 'feature_spec.yaml'}: not a feature spec this tool understands ({error})") \
            from None

    train_columns, test_columns = (_nvidia_columns(path, sources, part) for part in ("train", "test"))
    # NVIDIA's test channel holds one series of test_samples_per_series consecutive rows per user: the positive
    # (label 1, last in their converter's output) and the user's negatives.
    per_user = int((spec.get("metadata") or {}).get("test_samples_per_series", 0))
    test_users, test_items = test_columns[user_name].reshape(-1), test_columns[item_name].reshape(-1)
    if per_user < 2 or test_users.numel() % per_user:
        raise DatasetError(f"{path / 'feature_spec.yaml'}: metadata.test_samples_per_series must be at least 2 and "
                           f"divide the {test_users.numel()} test rows")
    users, items = test_users.view(-1, per_user), test_items.view(-1, per_user)
    label_name = spec["channel_spec"].get("label_ch", [None])[0]
    if label_name in test_columns:
        labels = test_columns[label_name].reshape(-1, per_user)
        if not torch.equal((labels > 0).sum(1), torch.ones(labels.shape[0], dtype=torch.long)):
            raise DatasetError(f"{path}: every test series needs exactly one positive (label 1)")
        positive = labels.argmax(1)
    else:
        positive = torch.full((users.shape[0],), per_user - 1)
    rows = torch.arange(users.shape[0])
    others = torch.ones_like(items, dtype=torch.bool)
    others[rows, positive] = False
    negatives = items[others].view(-1, per_user - 1)
    test = torch.stack([users[rows, positive], items[rows, positive]], 1)
    order = torch.argsort(test[:, 0])
    if not torch.equal(test[order, 0], torch.arange(num_users)):
        raise DatasetError(f"{path}: this tool needs exactly one test series per user")
    train = torch.stack([train_columns[user_name].reshape(-1), train_columns[item_name].reshape(-1)], 1).numpy()
    test, negatives = test[order].numpy(), negatives[order].numpy()
    return {"num_users": num_users, "num_items": num_items, "train": train, "test": test, "test_negatives": negatives,
            "path": path}
