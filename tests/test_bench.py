"""The benchmark scripts run end to end at tiny sizes and report what they measured."""

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dataloading
import ncf
from conftest import run_convert
from ncflib import checkpoint, evaluation

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(output, *first_cells):
    """The cells of the Markdown table rows of ``output`` whose first cell is one of ``first_cells``."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in output.splitlines()
            if line.startswith("|")]
    return [row for row in rows if row[0] in first_cells]


def test_train_bench_reports_one_row_per_batch_size(capsys):
    bench = load_script("train_bench")
    assert bench.main(["--synthetic", "150", "300", "4000", "--batch_sizes", "256", "1000", "--epochs", "2",
                       "--device", "cpu"]) == 0
    output = capsys.readouterr().out
    assert output.startswith("neumf, branch losses x 1,")  # ncf.py's default NeuMF, as trained by default
    assert [row[0] for row in table_rows(output, "2^8", "1000")] == ["2^8", "1000"]


def test_train_bench_trains_and_counts_exactly_as_ncf_does(tmp_path, capsys):
    """The benchmark's epochs are ncf.py's: the same best HR@10, every sample of an epoch counted once, and the
    throughput it reports is those samples over its epoch time."""
    data = tmp_path / "data"
    assert run_convert(["--synthetic", "150", "300", "4000", "--output", data])[0] == 0
    bench = load_script("train_bench")
    args = bench.parse_args(["--data", str(data), "--model", "gmf", "--epochs", "3", "--device", "cpu"])
    setup = bench.device_and_data("train_bench.py", args)
    row = bench.measure(setup[1], setup[0], 256, args)
    dataset = setup[1]
    assert row["samples"] == dataset.num_train * (1 + row["negatives"])
    assert row["train"] == pytest.approx(row["samples"] / row["epoch"])
    assert ncf.main(["--data", str(data), "--model", "gmf", "-b", "256", "-e", "3", "--checkpoint_dir", "",
                     "--log_path", str(tmp_path / "log.json")]) == 0
    summary = [line for line in (tmp_path / "log.json").read_text().splitlines() if '"summary"' in line][-1]
    assert row["hr"] == json.loads(summary)["best_accuracy"]


def test_inference_bench_reports_latency_percentiles_in_order(capsys):
    bench = load_script("inference_bench")
    assert bench.main(["--users", "50", "--items", "40", "--batch_sizes", "1", "64", "--iterations", "20",
                       "--device", "cpu"]) == 0
    rows = table_rows(capsys.readouterr().out, "1", "64")
    assert len(rows) == 2
    for row in rows:
        batch, mean, p90, p99, throughput = (cell.replace(",", "") for cell in row)
        assert float(p90) <= float(p99)  # the order the test's name promises
        assert abs(float(throughput) - int(batch) / (float(mean) / 1e3)) <= 0.01 * float(throughput) + 1
    assert bench.percentile([5.0, 1.0, 4.0, 2.0, 3.0], 0.9) == 5.0 and bench.percentile(list(range(100)), 0.9) == 90


def test_sweep_ranks_configurations_by_mean_hr(tmp_path, capsys):
    sweep = load_script("sweep")
    results = tmp_path / "results.jsonl"
    results.write_text('{"config": "a", "seed": 0, "status": 0, "seconds": 1, "hr": 0.5, "ndcg": 0.3}\n'
                       '{"config": "a", "seed": 1, "status": 0, "seconds": 1, "hr": 0.7, "ndcg": 0.4}\n'
                       '{"config": "b", "seed": 0, "status": 0, "seconds": 1, "hr": 0.65, "ndcg": 0.35}\n'
                       '{"config": "c", "seed": 0, "status": 2, "seconds": 0, "error": ["bad flag"]}\n')
    assert sweep.main(["--output", str(results)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ranked on the test HR")
    assert lines[2].split()[:4] == ["0.6500", "0.3500", "0.6500", "1"] and lines[2].endswith("b")
    assert lines[3].split()[:4] == ["0.6000", "0.3500", "0.5000", "2"] and lines[3].endswith("a")
    assert len(lines) == 4  # the failed run is not ranked


def test_sweep_ranks_on_validation_when_the_runs_had_it(tmp_path, capsys):
    sweep = load_script("sweep")
    results = tmp_path / "results.jsonl"
    results.write_text('{"config": "a", "seed": 0, "status": 0, "seconds": 1, "hr": 0.9, "ndcg": 0.5, "valid": 0.4}\n'
                       '{"config": "b", "seed": 0, "status": 0, "seconds": 1, "hr": 0.6, "ndcg": 0.3, "valid": 0.7}\n')
    assert sweep.main(["--output", str(results)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ranked on the validation set")
    assert lines[2].endswith("b") and lines[3].endswith("a")  # b's better validation wins over a's better test


def test_time_to_hr_reports_the_curve_and_the_target(capsys):
    bench = load_script("time_to_hr")
    flags = ["--synthetic", "300", "200", "6000", "--", "-e", "3", "--model", "gmf", "--device", "cpu", "--lr_schedule",
             "constant"]  # (a rate that stays up: the curve climbs after the first epoch)
    assert bench.main(flags) == 0
    rows = table_rows(capsys.readouterr().out, "0", "1", "2")
    assert [row[0] for row in rows] == ["0", "1", "2"]
    hrs = [float(row[1]) for row in rows]
    target = max(hrs[1:])  # first reached at epoch 1 or 2: a target the first epoch does not meet
    assert hrs[0] < target
    assert bench.main(["--target", str(target), *flags]) == 0
    output = capsys.readouterr().out
    seconds = [float(row[3]) for row in table_rows(output, "0", "1", "2")]
    first = next(epoch for epoch, hr in enumerate(hrs) if hr >= target)
    assert seconds == sorted(seconds)
    # The table rounds to 0.01 s and the summary to 0.1 s, each from the exact time: compare within rounding.
    reached = re.search(rf"reached {target} at epoch {first}, after ([0-9.]+) s", output)
    assert reached and abs(float(reached.group(1)) - seconds[first]) <= 0.056
    best = max(range(3), key=lambda epoch: (hrs[epoch], -epoch))
    stated = re.search(rf"best HR@10 {hrs[best]:.4f} at epoch {best}, after ([0-9.]+) s", output)
    assert stated and abs(float(stated.group(1)) - seconds[best]) <= 0.056


def test_record_run_appends_what_the_log_says(tmp_path, capsys):
    data = tmp_path / "data"
    assert run_convert(["--synthetic", "60", "40", "1500", "--output", data, "--valid_negative", "20"])[0] == 0
    assert ncf.main(["--data", str(data), "--model", "gmf", "-e", "2", "-b", "256", "--checkpoint_dir",
                     str(tmp_path / "ck")]) == 0
    summary = json.loads((tmp_path / "ck" / "log.json").read_text().splitlines()[-1])
    results = tmp_path / "results.jsonl"
    record_run = load_script("record_run")
    for seed in (0, 0):
        assert record_run.main([str(tmp_path / "ck" / "log.json"), "--config", "--model gmf -e 2", "--seed",
                                str(seed), "--output", str(results)]) == 0
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == 2 and records[0]["hr"] == summary["best_accuracy"]
    assert records[0]["ndcg"] == summary["best_ndcg"] and records[0]["best_epoch"] == summary["best_epoch"]
    assert records[0]["selected_on"] == "test" and len(records[0]["curve"]) == 2
    assert record_run.main([str(data / "metadata.json"), "--config", "x", "--seed", "0", "--output",
                            str(results)]) == 1
    assert "not a finished ncf.py log" in capsys.readouterr().err


def test_floor_counts_bytes_and_flops_and_compares_the_measured_step(capsys):
    bench = load_script("floor")
    parts, flops = bench.step_costs(10, 3, 5, factors=2, layers=[4, 2], activation_bytes=4, optimizer="adam")
    assert parts["embedding rows"] == 10 * (2 * 2 + 4) * 4 * 2
    tables, tower = (3 + 5) * (2 + 2), (4 * 2 + 2) + (2 + 2 + 1)
    assert parts["optimizer"] == (tables + tower) * 32
    assert parts["tower activations"] == 10 * (4 + 2) * 4 * 4 and flops == 6 * 10 * (4 * 2 + (2 + 2))
    # Branch losses: the branches' own output layers (2 -> 1 each) score every sample too.
    branch_parts, branch_flops = bench.step_costs(10, 3, 5, factors=2, layers=[4, 2], activation_bytes=4,
                                                  optimizer="adam", branch_heads=True)
    assert branch_parts["optimizer"] == parts["optimizer"] + (2 + 1 + 2 + 1) * 32
    assert branch_flops == flops + 6 * 10 * (2 + 2)
    assert bench.main(["--synthetic", "150", "300", "4000", "--batch_size", "512", "--epochs", "2",
                       "--device", "cpu", "--branch_loss", "0"]) == 0
    output = capsys.readouterr().out
    assert output.startswith("NeuMF, batch 512, optimizer adam")  # the paper's NeuMF: no branch losses
    rows = {row[0]: row for row in table_rows(output, "floor (larger of the two)", "measured step",
                                              "measured / floor")}
    floor_ms, step_ms = float(rows["floor (larger of the two)"][2]), float(rows["measured step"][2])
    bytes_ms, flops_ms = (float(row[2]) for row in table_rows(output, "all bytes", "FLOPs"))
    assert floor_ms == max(bytes_ms, flops_ms)
    ratio = float(rows["measured / floor"][2].rstrip("x"))  # printed to 0.1
    assert ratio == pytest.approx(step_ms / floor_ms, rel=0.02, abs=0.06)


@pytest.mark.slow  # four ncf.py processes
def test_time_to_hr_on_the_wall_clock_times_whole_processes_and_tables_the_median_run(tmp_path, capsys):
    pytest.importorskip("implicit")
    bench = load_script("time_to_hr")
    flags = ["--synthetic", "300", "200", "6000", "--runs", "2", "--target", "0.0", "--also", "--model gmf -e 1",
             "--als", "--plot", str(tmp_path / "curves.png"), "--", "--model", "gmf", "-e", "3"]
    assert bench.main(flags) == 0
    output = capsys.readouterr().out
    assert "start-up, loading and evaluation included" in output
    command, also, als = table_rows(output, "`--model gmf -e 3`", "`--model gmf -e 1`",
                                    "implicit ALS (bench.baselines settings)")
    # Target 0: reached at the first epoch's line, which comes after the process's start-up (a second or more).
    each = [float(value) for value in command[2].split(", ")]
    assert len(each) == 2 and all(value > 0.5 for value in each) and float(command[3]) == pytest.approx(
        sum(each) / 2, abs=0.051)
    epochs = table_rows(output, "epoch 0", "epoch 1", "epoch 2")
    assert [row[0] for row in epochs] == ["epoch 0", "epoch 1", "epoch 2", "epoch 0"]  # the -e 3 run, the -e 1 run
    seconds = [float(row[5]) for row in epochs[:3]]
    assert seconds == sorted(seconds) and seconds[0] == pytest.approx(max(each), abs=0.051)  # (the median of 2: the
    # slower run, whose curve is tabled)
    assert max(float(row[4].split(" / ")[0]) for row in epochs[:3]) == pytest.approx(float(command[4]), abs=1e-4)
    sweeps = table_rows(output, *(f"{count} sweeps" for count in (1, 2, 4, 8, 15)))
    # Each row is its own fit (the sweep count reaches ALS: the rows differ), and every fit learns the planted tastes:
    # well above chance, 10 of 101 candidates. (More sweeps need not rank better: on 6,000 pairs ALS overfits.)
    als_hr = [float(row[4].split(" / ")[0]) for row in sweeps]
    assert len(sweeps) == 5 and len(set(als_hr)) > 1 and min(als_hr) > 1.3 * 10 / 101
    assert (tmp_path / "curves.png").stat().st_size > 5000
    # Without --runs, --als has nothing to stand beside: one line.
    assert bench.main(["--als", "--", "-e", "1"]) == 2


def test_profile_step_ranks_operators_by_their_time(capsys):
    bench = load_script("profile_step")
    assert bench.main(["--synthetic", "150", "300", "4000", "--batch_size", "500", "--steps", "3", "--top", "8",
                       "--device", "cpu"]) == 0
    output = capsys.readouterr().out
    assert "3 steps: " in output and "drawing the batches alone" in output
    names = [line.split("|")[1].strip() for line in output.splitlines() if line.startswith("| aten::")]
    rows = table_rows(output, *names)  # CPU operators
    assert 3 <= len(rows) <= 8
    assert "aten::mm" in [row[0] for row in rows] or "aten::addmm" in [row[0] for row in rows]
    total = float(re.search(r"CPU self time ([0-9.]+) ms a step", output).group(1))
    for row in rows:  # each operator's share is its own time over the step's total self time
        assert float(row[3].rstrip("%")) == pytest.approx(100 * float(row[2]) / total, abs=0.6)


def test_alpha_sweep_ends_at_the_two_pretrained_models(tmp_path, capsys):
    """Alpha 1 scores exactly as the GMF model and alpha 0 as the MLP model; the table has a row per alpha."""
    data = tmp_path / "data"
    assert run_convert(["--synthetic", "60", "40", "1500", "--output", data, "--valid_negative", "20"])[0] == 0
    paths = {}
    for model in ("gmf", "mlp"):
        sizes = ["-f", "8"] if model == "gmf" else ["--layers", "16", "8"]
        assert ncf.main(["--data", str(data), "--model", model, "-e", "2", "-b", "256", *sizes, "--checkpoint_dir",
                         str(tmp_path / model)]) == 0
        paths[model] = str(tmp_path / model / "best.pt")
    capsys.readouterr()
    bench = load_script("alpha_sweep")
    assert bench.main(["--data", str(data), "--pretrain_gmf", paths["gmf"], "--pretrain_mlp", paths["mlp"],
                       "--alphas", "0", "0.5", "1", "-k", "3", "--device", "cpu"]) == 0
    rows = {row[0]: (float(row[1]), float(row[2])) for row in table_rows(capsys.readouterr().out, "0", "0.5", "1")}
    assert set(rows) == {"0", "0.5", "1"}
    dataset = dataloading.load_dataset(data)
    for alpha, model in (("1", "gmf"), ("0", "mlp")):
        alone = checkpoint.load_model(paths[model]).eval()
        with torch.no_grad():
            hits, ndcg, _, _, users = evaluation.sampled_sums(alone, dataset, 3, 1024, contextlib.nullcontext).tolist()
        assert rows[alpha] == pytest.approx((round(hits / users, 4), round(ndcg / users, 4)), abs=1e-4)
    # Bad input: one line naming the file, exit code 2.
    assert bench.main(["--data", str(data), "--pretrain_gmf", paths["gmf"], "--pretrain_mlp", paths["gmf"]]) == 2
    assert capsys.readouterr().err.strip() == f"alpha_sweep: error: {paths['gmf']}: holds a gmf model, expected mlp"


def test_ensemble_of_one_model_twice_scores_as_that_model(tmp_path, capsys):
    """The mean logits of a model and itself rank as the model alone; two different models give their own rows; a
    checkpoint of another dataset is refused in one line."""
    data = tmp_path / "data"
    assert run_convert(["--synthetic", "60", "40", "1500", "--output", data, "--valid_negative", "20"])[0] == 0
    paths = []
    for seed in (0, 1):
        assert ncf.main(["--data", str(data), "--model", "gmf", "-e", "2", "-b", "256", "-f", "8", "-s", str(seed),
                         "--checkpoint_dir", str(tmp_path / f"gmf{seed}")]) == 0
        paths.append(str(tmp_path / f"gmf{seed}" / "best.pt"))
    capsys.readouterr()
    bench = load_script("ensemble")
    assert bench.main(["--data", str(data), paths[0], paths[0], "-k", "3", "--device", "cpu"]) == 0
    rows = table_rows(capsys.readouterr().out, paths[0], "mean of the 2", "ensemble (mean logits)")
    assert len(rows) == 4 and len({(row[1], row[2]) for row in rows}) == 1  # every row the same figures
    dataset = dataloading.load_dataset(data)
    alone = checkpoint.load_model(paths[0]).eval()
    with torch.no_grad():
        hits, ndcg, _, _, users = evaluation.sampled_sums(alone, dataset, 3, 1024, contextlib.nullcontext).tolist()
    assert (float(rows[0][1]), float(rows[0][2])) == pytest.approx((hits / users, ndcg / users), abs=1e-4)
    assert bench.main(["--data", str(data), *paths, "-k", "3", "--device", "cpu"]) == 0
    rows = table_rows(capsys.readouterr().out, *paths, "mean of the 2", "ensemble (mean logits)")
    assert float(rows[2][1]) == pytest.approx((float(rows[0][1]) + float(rows[1][1])) / 2, abs=1e-4)
    models = [checkpoint.load_model(path).eval() for path in paths]
    with torch.no_grad():  # the ensemble row: the two models' logits averaged by hand
        hits, ndcg, _, _, users = evaluation.sampled_sums(
            None, dataset, 3, 1024, contextlib.nullcontext,
            score=lambda u, i: (models[0].score(u, i) + models[1].score(u, i)) / 2).tolist()
    assert (float(rows[3][1]), float(rows[3][2])) == pytest.approx((hits / users, ndcg / users), abs=1e-4)
    other = tmp_path / "other"
    assert run_convert(["--synthetic", "30", "40", "600", "--output", other, "--valid_negative", "20"])[0] == 0
    capsys.readouterr()
    assert bench.main(["--data", str(other), *paths]) == 2
    assert capsys.readouterr().err.strip().startswith(f"ensemble: error: {paths[0]}: trained on another dataset")


def test_baselines_are_the_closed_forms_and_rank_beside_checkpoints(tmp_path, capsys):
    data = tmp_path / "data"
    assert run_convert(["--synthetic", "60", "40", "1500", "--output", data, "--valid_negative", "20",
                        "--validation"])[0] == 0
    bench = load_script("baselines")
    dataset = dataloading.load_dataset(data)
    # EASE by its definition, in numpy: B = I - P / diag(P), P = (X'X + lambda I)^-1, zero diagonal.
    history = np.zeros((dataset.num_users, dataset.num_items))
    history[dataset.train_users.numpy(), dataset.train_items.numpy()] = 1
    inverse = np.linalg.inv(history.T @ history + 30 * np.eye(dataset.num_items))
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0)
    ease = bench.fit_ease(dataset, 30.0)  # ncf.py's own EASE (--model ease)
    np.testing.assert_allclose(ease.score_all(torch.arange(5)).numpy(), history[:5] @ weights, rtol=1e-4, atol=1e-5)
    popularity = bench.Popularity(dataset).score_all(torch.tensor([0, 3]))
    assert popularity[0].tolist() == np.bincount(dataset.train_items.numpy(), minlength=40).tolist()
    assert ncf.main(["--data", str(data), "--model", "gmf", "-e", "2", "-b", "256", "-f", "8",
                     "--checkpoint_dir", str(tmp_path / "gmf")]) == 0
    capsys.readouterr()
    results = tmp_path / "baselines.jsonl"
    assert bench.main(["--data", str(data), "--protocols", "sampled", "full", "-k", "5", "--device", "cpu",
                       "--checkpoints", str(tmp_path / "gmf" / "best.pt"), "--output", str(results)]) == 0
    output = capsys.readouterr().out
    assert "(chosen on validation)" in output
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(row["protocol"], row["model"][:4]) for row in rows] == [
        ("sampled", "popu"), ("sampled", "EASE"), ("sampled", str(tmp_path)[:4]), ("full", "popu"), ("full", "EASE"),
        ("full", str(tmp_path)[:4])]
    gmf = checkpoint.load_model(tmp_path / "gmf" / "best.pt")
    full = evaluation.evaluator(gmf, dataset, "full", 5, 2**18, contextlib.nullcontext)()
    assert rows[-1]["recall@5"] == round(full["recall@5"], 4)  # the checkpoint's row is ncf.py's evaluation


@pytest.mark.skipif(importlib.util.find_spec("implicit") is None, reason="implicit is an optional dependency")
def test_baselines_fit_implicits_als_and_rank_with_its_factors(tmp_path, capsys):
    # Four taste groups: each user has every item of their own group (the latest held out, ranked among the 24
    # items of the other groups), so factors that learned the groups rank it first and popularity cannot.
    lines = ["user,item,timestamp"] + [f"{user},{(user % 4) * 8 + (user + k) % 8},{k}" for user in range(48)
                                        for k in range(8)]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    data = tmp_path / "data"
    assert run_convert(["--path", tmp_path / "log.csv", "--output", data, "--valid_negative", "24"])[0] == 0
    bench = load_script("baselines")
    dataset = dataloading.load_dataset(data)
    als = bench.ALS(dataset, factors=8, regularisation=0.05, alpha=5.0, iterations=10)
    users, items = torch.tensor([0, 7]), torch.tensor([[1, 2, 3], [4, 5, 31]])
    expected = als.users[users] @ als.items.T
    torch.testing.assert_close(als.score(users, items), torch.gather(expected, 1, items))
    torch.testing.assert_close(als.score_all(users), expected)
    popularity = bench.evaluate(bench.Popularity(dataset), dataset, "sampled", 1)["hr@1"]
    assert bench.evaluate(als, dataset, "sampled", 1)["hr@1"] >= 0.9 > popularity  # it learned the planted tastes
    capsys.readouterr()
    assert bench.main(["--data", str(data), "--als", "--als_factors", "8", "--device", "cpu"]) == 0
    assert "implicit ALS (8 factors, reg 0.05, alpha 5, 15 iterations; fitted in" in capsys.readouterr().out


def test_full_eval_bench_times_ncfs_full_ranking(tmp_path, capsys):
    data = tmp_path / "data"
    assert run_convert(["--synthetic", "60", "40", "1500", "--output", data, "--valid_negative", "20"])[0] == 0
    assert ncf.main(["--data", str(data), "--model", "gmf", "-e", "1", "-b", "256", "--checkpoint_dir",
                     str(tmp_path / "gmf")]) == 0
    capsys.readouterr()
    bench = load_script("full_eval_bench")
    assert bench.main(["--data", str(data), "--checkpoint", str(tmp_path / "gmf" / "best.pt"), "-k", "5",
                       "--repeats", "2", "--device", "cpu"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {data} |")][0]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2] == "60 x 40"  # every user against every item
    dataset = dataloading.load_dataset(data)
    expected = evaluation.evaluator(checkpoint.load_model(tmp_path / "gmf" / "best.pt"), dataset, "full", 5, 2**18,
                                    contextlib.nullcontext)()
    assert float(cells[5]) == pytest.approx(expected["hr@5"], abs=5e-5)  # ncf.py's own full-ranking figure


def test_the_full_ranking_table_reads_when_each_run_passed_als(tmp_path):
    """result_of_log keeps each epoch's test Recall@k and the seconds up to it; the table's 'seconds to pass ALS'
    is the first epoch at or above ALS's figure (an epoch not evaluated is skipped), the mean over seeds."""
    from bench.common import result_of_log
    from bench.full_ranking_table import passing, seconds_to_pass

    records = [{"type": "config"}]
    for epoch, recall in enumerate([0.10, None, 0.30, 0.50]):
        records.append({"type": "epoch", "epoch": epoch, "hr@20": 0.5, "train_epoch_time": 8.0,
                        "validation_epoch_time": 2.0, **({} if recall is None else {"recall@20": recall})})
    records.append({"type": "summary", "best_accuracy": 0.5, "best_ndcg": 0.2, "best_epoch": 3, "total_time": 40.0,
                    "best_metrics": {"recall@20": 0.5, "ndcg@20": 0.2, "valid_recall@20": 0.4},
                    "selected_on": "validation"})
    log = tmp_path / "log.json"
    log.write_text("".join(json.dumps(record) + "\n" for record in records))
    run = result_of_log(log)
    assert run["recall_curve"] == [0.1, None, 0.3, 0.5] and run["elapsed"] == [10.0, 20.0, 30.0, 40.0]
    assert run["recall"] == 0.5 and run["valid"] == 0.4
    assert seconds_to_pass(run, 0.25) == 30.0 and seconds_to_pass(run, 0.1) == 10.0
    assert seconds_to_pass(run, 0.6) is None
    other = dict(run, elapsed=[20.0, 40.0, 60.0, 80.0])
    assert passing([run, other], 0.25) == "45" and passing([run, other], 0.6) == "never"
    assert passing([run], None) == ""


@pytest.mark.slow  # the NCF paper's four ML-1M runs, at a tiny size (about half a minute)
def test_the_ml1m_pipeline_records_each_run_from_its_log_and_runs_them_in_turn_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("with a GPU the three from-scratch runs go side by side")
    data, runs = tmp_path / "data", tmp_path / "runs"
    assert run_convert(["--synthetic", "300", "200", "6000", "--output", data])[0] == 0
    done = subprocess.run(["bash", str(ROOT / "experiments" / "ml1m_paper.sh"), str(data), str(runs)], cwd=ROOT,
                          env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    names = ["gmf", "mlp", "neumf", "neumf-pretrained"]
    records = [json.loads(line) for line in (runs / "results.jsonl").read_text().splitlines()]
    assert [record["config"].split()[1] for record in records] == ["gmf", "mlp", "neumf", "neumf"]
    for name, record in zip(names, records):
        epochs = [json.loads(line) for line in (runs / name / "log.json").read_text().splitlines()]
        hits = [entry["hr@10"] for entry in epochs if "hr@10" in entry and "epoch" in entry]
        # Each record is its run's best epoch as its log has it, chosen on the test items (no validation split).
        assert record["status"] == 0 and record["selected_on"] == "test" and record["hr"] == pytest.approx(max(hits))
        assert f"{name}: best HR@10 {record['hr']:.4f}" in done.stdout  # the summary prints each run's best line
    assert f"--pretrain_gmf {runs}/gmf/best.pt --pretrain_mlp {runs}/mlp/best.pt" in records[3]["config"]
    # Without a GPU the runs go one after another: each run's first log line (its configuration) is stamped after
    # the last line of the run before it.
    stamps = {name: [json.loads(line)["time"] for line in (runs / name / "log.json").read_text().splitlines()]
              for name in names}
    for before, after in zip(names, names[1:]):
        assert stamps[after][0] > stamps[before][-1]


def test_closed_form_scale_fits_and_ranks_a_synthetic_catalogue_and_records_its_costs(tmp_path, capsys):
    from bench import closed_form_scale

    output = tmp_path / "scale.jsonl"
    args = ["--users", "60", "--items", "300", "--interactions", "3000", "--workdir", str(tmp_path / "work"),
            "--output", str(output)]
    assert closed_form_scale.main(args) == 0
    assert closed_form_scale.main([*args, "--model", "gfcf", "--flags", "--gfcf_grid 0.3,16"]) == 0  # (data reused)
    rp3beta, gfcf = [json.loads(line) for line in output.read_text().splitlines()]
    assert (rp3beta["model"], rp3beta["flags"], gfcf["flags"]) == ("rp3beta", "--rp3_grid 0.8,0.3,200",
                                                                   "--gfcf_grid 0.3,16")
    assert rp3beta["items"] <= 300 and rp3beta["users"] <= 60 and rp3beta["training_pairs"] < 3000
    assert 0 < rp3beta["recall@20"] <= 1 and rp3beta["fit_seconds"] >= 0 and rp3beta["peak_memory_mib"] > 50
    assert rp3beta["wall_seconds"] >= rp3beta["fit_seconds"] + rp3beta["evaluation_seconds"]
    assert len(list((tmp_path / "work").glob("data-*"))) == 1


def test_record_run_reads_a_refit_log_and_keeps_the_measured_peak_memory(tmp_path, planted_ratio):
    assert ncf.main(["--data", str(planted_ratio), "--model", "gfcf", "--gfcf_grid", "0,4", "0.3,4", "--refit",
                     "--eval_protocol", "full", "-k", "5", "--checkpoint_dir", str(tmp_path / "ck")]) == 0
    summary = json.loads((tmp_path / "ck" / "log.json").read_text().splitlines()[-1])
    results = tmp_path / "results.jsonl"
    assert load_script("record_run").main([str(tmp_path / "ck" / "log.json"), "--config", "--model gfcf --refit",
                                           "--seed", "0", "--output", str(results), "--peak_memory", "321.4"]) == 0
    record = json.loads(results.read_text())
    assert record["refit"] == summary["refit_choice"] and record["peak_memory_mib"] == 321
    assert record["recall"] == summary["best_metrics"]["recall@5"]  # the refit's test figure
    assert record["valid"] == summary["chosen_metrics"]["valid_recall@5"]  # the choice's validation figure
    assert len(record["curve"]) == len(record["recall_curve"]) == 2  # the choosing run's validation curve
