"""Data-parallel runs on CPU with Gloo: sharded evaluation, two ranks training through torchrun, a killed rank
restarted by torchrun and resumed, and ranks that disagree."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dataloading
import ncf
from conftest import run_convert
from ncflib import evaluation
from ncflib import training as train
from ncflib.checkpoint import build_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A synthetic set with planted taste groups: big enough that an epoch on two ranks takes a moment."""
    folder = tmp_path_factory.mktemp("synthetic") / "data"
    assert run_convert(["--synthetic", "600", "400", "24000", "--output", folder])[0] == 0
    return folder


def launch(*args, launcher=("-m", "torch.distributed.run"), timeout=300, output=None):
    """Run ncf.py under torchrun (by default) on this interpreter with two CPU ranks, in its own process group so
    that nothing outlives a timeout. With ``output`` (an open file), start it in the background writing there and
    return the Popen (the caller ends it with ``stop``)."""
    command = [sys.executable, *launcher, "--standalone", "--nproc_per_node=2", str(ROOT / "ncf.py"),
               *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    if output is not None:
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)
    for _ in range(3):
        job = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                               start_new_session=True)
        try:
            stdout, stderr = job.communicate(timeout=timeout)
        finally:
            stop(job)
        result = subprocess.CompletedProcess(command, job.returncode, stdout, stderr)
        # On a loaded machine Gloo sometimes fails to connect two freshly started ranks ("connectFullMesh failed
        # ... Connection refused") before any of our code runs; the launch is then simply repeated.
        if "connectFullMesh failed" not in stderr + stdout:
            break
    return result


def stop(job):
    """Kill a launched job and every process it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(job.pid, signal.SIGKILL)
    job.wait()


def read_log(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


QUICK = ["-e", "4", "-b", "2048", "-n", "4", "-l", "0.005", "--lr_schedule", "constant", "-b1", "0.9", "-b2", "0.999",
         "--layers", "64", "32", "16", "-f", "16", "--dropout", "0"]


@pytest.mark.parametrize("world_size", [2, 3, 7, 50])
def test_sharded_evaluation_equals_one_process(synthetic, world_size):
    dataset = dataloading.load_dataset(synthetic)
    torch.manual_seed(0)
    model = build_model("neumf", dataset.num_users, dataset.num_items, factors=8, layers=(16, 8), dropout=0).eval()
    autocast, _ = train.mixed_precision(False, torch.device("cpu"))
    whole = evaluation.sampled_sums(model, dataset, 10, 97, autocast)
    shards = sum(evaluation.sampled_sums(model, dataset, 10, 97, autocast, rank, world_size)
                 for rank in range(world_size))
    assert shards[0] == whole[0] and shards[3] == whole[3] and shards[4] == whole[4] == dataset.num_users
    assert shards[1].item() == pytest.approx(whole[1].item(), rel=1e-12)  # NDCG: float64 sums, regrouped
    assert shards[2].item() == pytest.approx(whole[2].item(), rel=1e-5)  # loss: float32 batch sums, regrouped


    class Lockstep:  # scoring that is a collective (sharded tables): every rank must call it as often
        lockstep = True

        def __init__(self):
            self.calls = 0

        def eval(self):
            return self

        def score(self, users, items):
            self.calls += 1
            return model.score(users, items)

    counted = [Lockstep() for _ in range(world_size)]
    together = sum(evaluation.sampled_sums(counted[rank], dataset, 10, 97, autocast, rank, world_size)
                   for rank in range(world_size))
    assert len({one.calls for one in counted}) == 1  # spare batches on the ranks with fewer users
    assert torch.equal(together, shards)  # ...which are not counted


@pytest.mark.slow  # torchrun with two CPU processes: `python -m pytest -m slow` (and CI) runs it
def test_two_ranks_train_and_only_rank_zero_writes(synthetic, tmp_path):
    result = launch("--data", synthetic, *QUICK, "--checkpoint_dir", tmp_path / "ck")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "x 2 ranks" in result.stdout
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 4  # printed by rank 0 only
    records = read_log(tmp_path / "ck" / "log.json")
    assert [record["type"] for record in records] == ["config"] + ["epoch"] * 4 + ["summary"]
    assert records[0]["world_size"] == 2
    assert records[-1]["best_accuracy"] > 0.4  # chance is about 0.1
    assert sorted(path.name for path in (tmp_path / "ck").iterdir()) == ["best.pt", "last.pt", "log.json"]

    # Two ranks evaluating the saved model (through the deprecated launcher) agree with one process exactly.
    best = tmp_path / "ck" / "best.pt"
    sharded = launch("--data", synthetic, "--mode", "test", "--load_checkpoint_path", best, "--log_path",
                     tmp_path / "sharded.json", launcher=("-m", "torch.distributed.launch", "--use_env"))
    assert sharded.returncode == 0, sharded.stdout + sharded.stderr
    assert ncf.main(["--data", str(synthetic), "--mode", "test", "--load_checkpoint_path", str(best),
                     "--log_path", str(tmp_path / "single.json"), "--device", "cpu"]) == 0
    two, one = read_log(tmp_path / "sharded.json")[-1], read_log(tmp_path / "single.json")[-1]
    assert two["hr@10"] == one["hr@10"] == records[-1]["best_accuracy"]
    assert two["ndcg@10"] == pytest.approx(one["ndcg@10"], rel=1e-12)


def worker_pids(launcher_pid):
    """PIDs of the processes started by torchrun, by their RANK variable (Linux /proc)."""
    workers = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher_pid:
            for variable in environ:
                if variable.startswith(b"RANK="):
                    workers[int(variable[5:])] = int(entry.name)
    return workers


@pytest.mark.slow  # torchrun with two CPU processes: `python -m pytest -m slow` (and CI) runs it
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finding torchrun's workers needs Linux /proc")
def test_a_killed_rank_resumes_to_the_same_result(synthetic, tmp_path):
    flags = ["--data", synthetic, *QUICK, "-e", "6", "-b", "512", "--resume"]
    whole = launch(*flags, "--checkpoint_dir", tmp_path / "whole")
    assert whole.returncode == 0, whole.stdout + whole.stderr

    # Kill rank 1 in the middle of training; the job fails. Launching the same command again (what a scheduler's
    # requeue or torchrun --max-restarts does) resumes from the last complete epoch.
    log = tmp_path / "killed" / "log.json"
    with open(tmp_path / "killed.txt", "w") as output:
        job = launch(*flags, "--checkpoint_dir", tmp_path / "killed", output=output)
        deadline = time.monotonic() + 240  # a job that never logs its second epoch fails the test, not hangs it
        killed = None
        try:
            while killed is None and job.poll() is None and time.monotonic() < deadline:
                if log.exists() and sum(record["type"] == "epoch" for record in read_log(log)) >= 2:
                    workers = worker_pids(job.pid)
                    if 1 in workers:
                        os.kill(workers[1], signal.SIGKILL)  # rank 1 dies in the middle of epoch 2 or 3
                        killed = workers[1]
                time.sleep(0.02)
            job.wait(timeout=120)
        finally:
            stop(job)
    text = (tmp_path / "killed.txt").read_text()
    assert killed is not None, "the run ended before a rank could be killed:\n" + text
    assert job.returncode != 0
    done_before = max(record["epoch"] for record in read_log(log) if record["type"] == "epoch")
    assert done_before < 5

    again = launch(*flags, "--checkpoint_dir", tmp_path / "killed")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming from {tmp_path / 'killed' / 'last.pt'} after epoch {done_before}" in again.stdout

    records = read_log(log)
    assert [record["type"] for record in records].count("config") >= 2  # the killed attempt and the resumed one
    epochs = {record["epoch"]: record for record in records if record["type"] == "epoch"}
    expected = [record for record in read_log(tmp_path / "whole" / "log.json") if record["type"] == "epoch"]
    assert sorted(epochs) == list(range(6))
    for reference in expected:  # a re-run epoch overwrites nothing: every epoch matches the uninterrupted run
        for key in ("train_loss", "test_loss", "hr@10", "ndcg@10"):
            assert epochs[reference["epoch"]][key] == reference[key], (reference["epoch"], key)
    assert records[-1]["best_accuracy"] == read_log(tmp_path / "whole" / "log.json")[-1]["best_accuracy"]


@pytest.mark.slow  # torchrun with two CPU processes: `python -m pytest -m slow` (and CI) runs it
def test_ranks_with_different_flags_stop_with_one_message(synthetic, tmp_path):
    script = tmp_path / "disagree.py"
    # Rank 1 is given another seed: the ranks must refuse to train rather than drift apart.
    script.write_text("import os, sys\n"
                      f"sys.path.insert(0, {str(ROOT)!r})\n"
                      "import ncf\n"
                      "seed = os.environ['RANK']\n"
                      f"sys.exit(ncf.main(['--data', {str(synthetic)!r}, '-e', '1', '--checkpoint_dir', '',"
                      " '--seed', seed]))\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    result = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode != 0
    assert "the ranks disagree on the dataset, the flags or the epoch to resume from" in result.stderr


@pytest.mark.slow  # torchrun with two CPU processes: `python -m pytest -m slow` (and CI) runs it
def test_two_ranks_refit_on_the_training_and_validation_pairs(tmp_path):
    data = tmp_path / "data"
    assert run_convert(["--synthetic", "600", "400", "24000", "--validation", "--output", data])[0] == 0
    result = launch("--data", data, *QUICK[:1], "3", *QUICK[2:], "--refit", "--checkpoint_dir", tmp_path / "ck")
    assert result.returncode == 0, result.stdout + result.stderr
    records = read_log(tmp_path / "ck" / "log.json")
    chosen = records[-1]["best_epoch"]
    assert [record["type"] for record in records] == (["config"] + ["epoch"] * 3 + ["refit_config"]
                                                      + ["refit_epoch"] * (chosen + 1) + ["summary"])
    assert records[-1]["refit"] and records[-1]["best_accuracy"] > 0.3  # chance is about 0.1
    best = torch.load(tmp_path / "ck" / "best.pt", weights_only=True)
    assert best["config"]["refit_of"]["epoch"] == chosen and best["epoch"] == chosen
    assert sorted(path.name for path in (tmp_path / "ck" / "chosen").iterdir()) == ["best.pt", "last.pt"]
