"""ncf-tune: a small study through SQLite, its files and refit, a resume after a killed worker, two worker processes
on one storage, a search space declared by a family defined here, and PostgreSQL when a server can be started."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import ncf  # noqa: E402
from conftest import run_convert  # noqa: E402
from ncflib import families, tune  # noqa: E402
from ncflib.ease import ClosedFormFamily  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FULL = ["--eval_protocol", "full", "-k", "5", "--device", "cpu"]


def trials_of(output):
    with open(output / "trials.csv") as handle:
        return list(csv.DictReader(handle))


def study_trials(output, name):
    storage = f"sqlite:///{(output / 'study.db').resolve()}"
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def test_a_small_study_chooses_on_validation_and_refits_the_best(planted_ratio, tmp_path, capsys):
    output = tmp_path / "tune"
    assert tune.main(["--data", str(planted_ratio), "--models", "ease", "rp3beta", "gfcf", "--trials", "6",
                      "--output", str(output), *FULL]) == 0
    out = capsys.readouterr().out
    rows = trials_of(output)
    assert len(rows) == 6 and {row["state"] for row in rows} == {"complete"}
    assert {row["model"] for row in rows} <= {"ease", "rp3beta", "gfcf"}
    # Trials never saw the test items: their logs hold validation figures alone.
    for number in range(6):
        records = [json.loads(line) for line in (output / "trials" / f"{number}.json").read_text().splitlines()]
        epochs = [record for record in records if record["type"] == "epoch"]
        assert epochs and all("valid_recall@5" in record and "recall@5" not in record for record in epochs)
    best = max(rows, key=lambda row: float(row["validation Recall@5"]))
    # The refit: the best trial's command with --refit; best.pt serves recommend.py; the command reproduces it.
    command = (output / "command.txt").read_text().split()
    assert command[:2] == ["python", "ncf.py"] and "--refit" in command and best["model"] in command
    summary = json.loads((output / "best" / "log.json").read_text().splitlines()[-1])
    assert summary["refit"] and summary["chosen_metrics"]["valid_recall@5"] == pytest.approx(
        float(best["validation Recall@5"]), abs=1e-6)
    assert (output / "best" / "best.pt").is_file() and (output / "history.png").is_file()
    assert (output / "seconds.png").is_file()
    assert f"best: trial {best['trial']}, {best['model']}" in out and "refit on training and validation: test" in out

    # A rerun of the same command continues to the same total: no trial runs again, the refit is kept.
    assert tune.main(["--data", str(planted_ratio), "--models", "ease", "rp3beta", "gfcf", "--trials", "6",
                      "--output", str(output), *FULL]) == 0
    assert len(trials_of(output)) == 6 and "is done already" in capsys.readouterr().out
    # A larger total adds only the difference.
    assert tune.main(["--data", str(planted_ratio), "--models", "ease", "--trials", "8", "--output", str(output),
                      "--study", "other", *FULL]) == 0
    assert len(trials_of(output)) == 8


class Smoothed(nn.Module):
    """Solved in closed form: each item scores its count of training pairs plus a smoothing ``setting``."""

    def __init__(self, num_users, num_items):
        super().__init__()
        self.register_buffer("counts", torch.zeros(num_items))

    def solve(self, users, items, setting):
        self.counts.copy_(torch.bincount(items, minlength=self.counts.numel()).float() + setting)
        return {"smoothing": setting}

    def forward(self, users, items):
        return self.counts[items]

    def score_all(self, users):
        return self.counts.expand(users.numel(), -1).clone()


def test_a_family_declares_its_own_search_space(planted_ratio, tmp_path, capsys):
    class SmoothedFamily(ClosedFormFamily):
        name, models, description, grid_flag = "smoothed", {"tunedcount": Smoothed}, "tunedcount", "smoothing"

        def add_arguments(self, parser, flags):
            flags.add(parser.add_argument_group("smoothed"), "--smoothing", type=float, nargs="+", default=[0.0],
                      readers=("tunedcount",), rule="0 or more", help="the smoothing tried")

        def default_epochs(self, args):
            return len(args.smoothing)

        def search_space(self, trial, protocol, timed=False):
            return ["--smoothing", f"{trial.suggest_float('tunedcount.smoothing', 0.0, 3.0):.3g}"]

    family = families.register(SmoothedFamily())
    try:
        output = tmp_path / "tune"
        assert tune.main(["--data", str(planted_ratio), "--models", "tunedcount", "--trials", "3", "--output",
                          str(output), *FULL]) == 0
        trials = study_trials(output, f"{planted_ratio.name}-full-k5")
        assert [trial.params["model"] for trial in trials] == ["tunedcount"] * 3
        assert all(0 <= trial.params["tunedcount.smoothing"] <= 3 for trial in trials)
        command = (output / "command.txt").read_text()
        assert "--model tunedcount" in command and "--smoothing" in command and "--refit" in command
    finally:
        families.unregister(family)


@pytest.mark.parametrize("protocol", ["sampled", "full"])
def test_every_built_in_search_space_gives_flags_its_model_reads(protocol):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for kind in families.model_kinds():
        family = families.family_of(kind)
        try:
            for timed in (False, True, True):
                flags = family.search_space(study.ask(), protocol, timed)
                if kind == "gmf":  # (the recent pairs weigh in where the held-out item is each user's latest)
                    assert ("--recency" in flags) == (timed and protocol == "sampled")
                ncf.parse_args(["--model", kind, *tune.protocol_flags(
                    type("Args", (), {"eval_protocol": protocol, "topk": 10, "device": "cpu", "seed": 0}), kind),
                    *flags])  # (a refused flag exits)
        except NotImplementedError:
            assert not family.tuned_by_default(protocol)  # (a family without a space is never tried by default)


def test_refusals_in_one_line(planted_ratio, tmp_path, capsys):
    no_validation = tmp_path / "plain"
    assert run_convert(["--path", planted_ratio.parent / "log.csv", "--output", no_validation, "--split",
                        "ratio"])[0] == 0
    capsys.readouterr()
    assert tune.main(["--data", str(no_validation), "--output", str(tmp_path / "t"), *FULL]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"ncf-tune: error: --data {no_validation}: has no validation split, and trials are chosen on one "
                   "(never on the test items); convert it with --validation")
    rated = tmp_path / "rated.csv"
    rated.write_text("user,item,rating\n" + "".join(f"{user},{item},{1 + (user + item) % 5}\n" for user in range(30)
                                                    for item in range(user % 7, user % 7 + 12)))
    assert run_convert(["--path", rated, "--output", tmp_path / "rated", "--split", "ratio", "--validation"])[0] == 0
    capsys.readouterr()
    assert tune.main(["--data", str(tmp_path / "rated"), "--models", "ease", "dotbias", "--output",
                      str(tmp_path / "t"), *FULL]) == 1
    assert capsys.readouterr().err.strip() == ("ncf-tune: error: --models mixes ranking models and rating models, "
                                               "whose metrics cannot be compared; tune them in two studies")
    assert not (tmp_path / "t").exists()


def launch(data, output, trials, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), NCF_TUNE_HEARTBEAT="1")
    return subprocess.Popen([sys.executable, "-m", "ncflib.tune", "--data", str(data), "--models", "gmf", "ease",
                             "--trials", str(trials), "--output", str(output), *FULL, *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.slow  # worker processes and a killed one: `python -m pytest -m slow` (and CI) runs it
def test_a_killed_worker_loses_only_its_running_trial_and_two_workers_share_a_study(planted_ratio, tmp_path):
    output = tmp_path / "tune"
    # Kill -9 a worker while a trial runs; the rerun fails that trial (its heartbeat overdue) and runs it again.
    job = launch(planted_ratio, output, 6, "--jobs", "1")
    deadline = time.time() + 120
    while time.time() < deadline:
        trials = study_trials(output, f"{planted_ratio.name}-full-k5") if (output / "study.db").is_file() else []
        if any(trial.state == optuna.trial.TrialState.COMPLETE for trial in trials) and any(
                trial.state == optuna.trial.TrialState.RUNNING for trial in trials):
            os.killpg(job.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    job.wait()
    killed = [trial.number for trial in study_trials(output, f"{planted_ratio.name}-full-k5")
              if trial.state == optuna.trial.TrialState.RUNNING]
    assert killed
    finished_before = {trial.number: trial.value for trial in study_trials(output, f"{planted_ratio.name}-full-k5")
                       if trial.state == optuna.trial.TrialState.COMPLETE}
    first, second = (launch(planted_ratio, output, 6, "--jobs", "2", "--worker", str(index)) for index in (0, 1))
    for worker in (first, second):
        worker.communicate(timeout=300)
        assert worker.returncode == 0
    trials = study_trials(output, f"{planted_ratio.name}-full-k5")
    finished = [trial for trial in trials if trial.state.name in tune.FINISHED]
    assert len(finished) == 6  # the total, neither more nor fewer
    assert {trial.number: trial.value for trial in trials if trial.number in finished_before} == finished_before
    retried = [trial for trial in trials if trial.state == optuna.trial.TrialState.FAIL]
    assert [trial.number for trial in retried] == killed
    assert any(trial.system_attrs.get("failed_trial") == killed[0] for trial in trials)  # run again, same settings


def postgres_url():
    """A database URL of a PostgreSQL server that accepts connections (from NCF_TEST_POSTGRES, as .ci/run sets it),
    or None."""
    url = os.environ.get("NCF_TEST_POSTGRES")
    if not url:
        return None
    pytest.importorskip("psycopg")
    host, port = "localhost", 5432
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return None
    return url


@pytest.mark.slow
def test_two_tuners_share_one_study_on_postgresql(planted_ratio, tmp_path):
    url = postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL server (CI starts one and sets NCF_TEST_POSTGRES)")
    study = f"shared-{os.getpid()}"
    jobs = [launch(planted_ratio, tmp_path / name, 6, "--storage", url, "--study", study, "--models", "ease", "gfcf")
            for name in ("a", "b")]
    for job in jobs:
        out, _ = job.communicate(timeout=300)
        assert job.returncode == 0, out
    trials = optuna.load_study(study_name=study, storage=url).get_trials()
    assert len([trial for trial in trials if trial.state.name in tune.FINISHED]) in (6, 7)  # (two machines: one extra)
    assert len({trial.number for trial in trials}) == len(trials)
    optuna.delete_study(study_name=study, storage=url)


def test_the_run_observer_sees_validation_alone(planted_ratio, tmp_path):
    seen = []
    args = ncf.parse_args(["--data", str(planted_ratio), "--model", "gmf", "-e", "2", *FULL, "--checkpoint_dir", ""])
    assert ncf.run(args, ncf.Observer(seen.append, validation_only=True)) == 0
    assert [record["epoch"] for record in seen] == [0, 1]
    assert all("valid_recall@5" in record and "recall@5" not in record for record in seen)
