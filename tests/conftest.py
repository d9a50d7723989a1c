"""Shared fixtures: tiny interaction logs written by the tests, and a path to the real datasets when present."""

import json
from pathlib import Path

import numpy as np
import pytest

import convert

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(*parts):
    """A file under ../shared/data, or skip the test cleanly when the folder is absent (a user's fresh clone)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real dataset not available: {path}")
    return path


def run_convert(args, capsys=None):
    """Run convert.py in-process; returns (exit code, stderr text)."""
    code = convert.main([str(arg) for arg in args] + ["--quiet"])
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def load_output(directory):
    """Everything convert.py wrote, as plain Python/numpy values."""
    directory = Path(directory)
    arrays = {path.stem: np.load(path, allow_pickle=False) for path in directory.glob("*.npy")}
    metadata = json.loads((directory / "metadata.json").read_text())
    return metadata, arrays


@pytest.fixture
def tiny_log():
    """A hand-made log: 4 users, 6 items, one repeated pair, one user with a single interaction, a time tie.

    Rows are (user, item, rating, timestamp) with MovieLens-style 1-based ids.
    """
    return [
        (10, 100, 5, 1000), (10, 101, 3, 1001), (10, 102, 4, 1005),  # user 10 test item: 102 (latest)
        (11, 100, 2, 900), (11, 103, 1, 950), (11, 100, 4, 990),  # repeated (11, 100) -> earliest kept; test: 103
        (12, 104, 5, 500), (12, 105, 5, 500),  # a tie in time: the later row (105) is the test item
        (13, 101, 3, 700),  # a single interaction: dropped
        (14, 105, 2, 10), (14, 103, 2, 20), (14, 102, 2, 5),  # file order differs from time order; test: 103
    ]


@pytest.fixture(scope="module")
def planted_ratio(tmp_path_factory):
    """Four groups of users, each interacting with most items of its own group: a ratio split (80/20, with
    validation) where a model that learned the groups ranks each user's held-out items first."""
    folder = tmp_path_factory.mktemp("planted_ratio")
    rng = np.random.default_rng(0)
    lines = ["user,item"]
    for user in range(48):
        group = user % 4
        lines += [f"{user},{group * 10 + item}" for item in rng.choice(10, size=8, replace=False)]
    (folder / "log.csv").write_text("\n".join(lines) + "\n")
    assert run_convert(["--path", folder / "log.csv", "--output", folder / "data", "--split", "ratio",
                        "--validation"])[0] == 0
    return folder / "data"
