"""The documentation against what it documents: every figure of the README's results table is held by the results
file its row names, the README stays under 10 KB and docs/speed.md under 12 KB, and --help states no measurement."""

import collections
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# (first figure, second figure) field pairs a results file may hold: sweeps and record_run write hr/recall and
# ndcg of the selected epoch, bench.baselines writes them with their cut-off.
FIELD_PAIRS = [("hr", "ndcg"), ("recall", "ndcg"), ("hr@10", "ndcg@10"), ("recall@20", "ndcg@20")]


def results_table():
    """The rows of the README's results table, as {column: cell}."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def held_figures(path):
    """[{field: value}] of a JSON-lines results file: each record, and each group of records of one configuration
    and dataset as the means over its seeds (a figure is one run's, or a mean over seeds)."""
    groups = collections.defaultdict(list)
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            groups[(record.get("config") or record.get("model"), record.get("data"))].append(record)
    means = [{field: statistics.mean(record[field] for record in records)
              for field in records[0] if all(isinstance(record.get(field), (int, float)) for record in records)}
             for records in groups.values()]
    return [record for records in groups.values() for record in records] + means


def test_every_figure_of_the_readme_table_is_in_the_results_file_its_row_names():
    rows = results_table()
    assert len(rows) >= 5
    for row in rows:
        match = re.search(r"`(experiments/results/[\w.-]+\.jsonl)`", row["results file"])
        assert match, row
        first, second = (float(value) for value in re.match(r"\**(\d\.\d{4}) / (\d\.\d{4})", row["result"]).groups())
        found = [fields for fields in held_figures(ROOT / match.group(1)) for one, two in FIELD_PAIRS
                 if isinstance(fields.get(one), (int, float)) and isinstance(fields.get(two), (int, float))
                 and round(fields[one], 4) == first and round(fields[two], 4) == second]
        assert found, f"{match.group(1)} holds no {first} / {second} ({row['dataset and split']})"


def test_the_readme_and_the_speed_page_stay_short():
    assert (ROOT / "README.md").stat().st_size <= 10_240
    assert (ROOT / "docs" / "speed.md").stat().st_size <= 12 * 1024


@pytest.mark.parametrize("script", ["ncf.py", "convert.py", "recommend.py"])
def test_help_states_no_measurement(script):
    """--help gives reasons and pointers; the measurements live in docs/ (one place each)."""
    shown = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                           check=True).stdout
    assert MEASUREMENT.findall("reaches its best in 7 minutes, 24% faster, HR@10 0.7341, 31 ms, 4.0 s, 1.2 GiB") == [
        "7 minutes", "24%", "0.7341", "31 ms", "4.0 s", "1.2 GiB"]  # (the pattern catches what it names)
    assert MEASUREMENT.findall(" ".join(shown.split())) == []


# A measured figure: a number with three or more decimals, or with a unit of time, share, memory or throughput.
MEASUREMENT = re.compile(r"\b\d+\.\d{3,}\b|\b\d+(?:\.\d+)?\s?(?:%|minutes?\b|seconds?\b|hours?\b|ms\b|s\b|"
                         r"[KMG]i?B\b|samples/s\b)")
