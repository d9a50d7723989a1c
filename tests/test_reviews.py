"""Review text: tokeniser and vocabulary, the ragged arrays convert.py writes, the text models and --words."""

import gzip
import json

import numpy as np
import pytest
import torch

import dataloading
import ncf
import recommend
from conftest import run_convert, shared_file
from ncflib import textdata
from ncflib.data import layout
from ncflib.protocols import traits
from ncflib.reviews import TextMF, TextRating, text_loss

GROUPS, ITEMS_PER_GROUP, WORDS_PER_GROUP = 4, 6, 10


def test_tokenise_keeps_runs_of_letters_and_digits_in_lower_case():
    assert textdata.tokenise("Great AMP!! 15-watt, it's LOUD...\nCafé 2x") == \
        ["great", "amp", "15", "watt", "it", "s", "loud", "café", "2x"]
    assert textdata.tokenise("") == [] and textdata.tokenise(None) == [] and textdata.tokenise("__ -- !!") == []


def test_vocabulary_ranks_by_count_then_alphabet_and_skips_the_most_common():
    tokens = [["b", "a", "c", "a"], ["c", "a", "d"], ["b", "e"]]
    assert textdata.build_vocabulary(tokens)[0] == ["a", "b", "c", "d", "e"]
    words, counts = textdata.build_vocabulary(tokens, max_words=2, skip_top=1)
    assert words == ["b", "c"] and counts.tolist() == [2, 2]
    values, offsets = textdata.encode(tokens, {word: index for index, word in enumerate(words)})
    assert values.dtype == np.int32 and offsets.dtype == np.int64
    assert values.tolist() == [0, 1, 1, 0] and offsets.tolist() == [0, 2, 3, 4]
    with pytest.raises(ValueError, match="max_words must be at least 1 and skip_top 0 or more, got 0 and 0"):
        textdata.build_vocabulary(tokens, max_words=0)


def test_ragged_take_gathers_reviews_in_the_asked_order_for_an_embedding_bag():
    ragged = textdata.Ragged.from_arrays(np.array([5, 6, 7, 8, 9], dtype=np.int32), np.array([0, 2, 2, 5]), 10)
    values, offsets = ragged.take(torch.tensor([2, 1, 0]))
    assert values.tolist() == [7, 8, 9, 5, 6] and offsets.tolist() == [0, 3, 3]
    bag = torch.nn.EmbeddingBag(10, 1, mode="sum")
    bag.weight.data = torch.arange(10.0)[:, None]
    assert bag(values, offsets).squeeze(1).tolist() == [24.0, 0.0, 11.0]  # the empty review sums to 0
    with pytest.raises(ValueError, match="outside the vocabulary"):
        textdata.Ragged.from_arrays(np.array([5, 10]), np.array([0, 2]), 10)
    with pytest.raises(ValueError, match="offsets"):
        textdata.Ragged.from_arrays(np.array([5, 6]), np.array([0, 3]), 10)


def planted_reviews(folder, with_text=True, seed=0):
    """Amazon-style JSON lines: users of GROUPS tastes review items of every group; an item of group g is described
    with words of group g (and common filler words); a user rates items of their own group 5, others 2, and says
    'great' or 'poor' accordingly."""
    rng = np.random.default_rng(seed)
    lines = []
    for user in range(48):
        for item in rng.choice(GROUPS * ITEMS_PER_GROUP, 10, replace=False):
            group, liked = item // ITEMS_PER_GROUP, item // ITEMS_PER_GROUP == user % GROUPS
            words = [f"g{group}w{w}" for w in rng.choice(WORDS_PER_GROUP, 5, replace=False)]
            words += list(rng.choice(["the", "and", "it", "this"], 4)) + ["great" if liked else "poor"]
            record = {"reviewerID": f"U{user}", "asin": f"I{item:02d}", "overall": 5.0 if liked else 2.0,
                      "unixReviewTime": 1_000_000 + len(lines)}
            if with_text:
                record |= {"reviewText": " ".join(rng.permutation(words)), "summary": "Item review"}
            lines.append(json.dumps(record))
    path = folder / "reviews.json"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reviews")
    source = planted_reviews(folder)
    assert run_convert(["--path", source, "--split", "random", "--validation", "--test_fraction", "0.1",
                        "--validation_fraction", "0.111", "--output", folder / "data"])[0] == 0
    return source, folder / "data"


def test_convert_writes_the_vocabulary_of_the_training_reviews_and_ragged_arrays_that_round_trip(reviewed):
    source, data = reviewed
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    dataset = dataloading.load_dataset(data)
    words, counts = dataset.vocabulary
    users, items = layout.read_id_map(data / "users.csv")[0], layout.read_id_map(data / "items.csv")[0]
    by_pair = {(row["reviewerID"], row["asin"]): row for row in rows}

    def texts(part_users, part_items, ragged):
        found = []
        for index, (user, item) in enumerate(zip(part_users.tolist(), part_items.tolist())):
            row = by_pair[(users[user], items[item])]
            values, _ = ragged.take(torch.tensor([index]))
            found.append(([words[word] for word in values.tolist()], row))
        return found

    train = texts(dataset.train_users, dataset.train_items, dataset.train_text)
    held = [texts(torch.repeat_interleave(part.users, part.offsets.diff()), part.items, part.text)
            for part in (dataset.test, dataset.validation)]
    # Every part's reviews come back as their own words, unknown ones dropped, in order.
    for decoded, row in train + held[0] + held[1]:
        expected = textdata.tokenise(row["summary"] + " " + row["reviewText"])
        assert decoded == [word for word in expected if word in words]
    # The counts are the training reviews' alone: a word only held-out reviews use is not in the vocabulary.
    training_counts = {}
    for _, row in train:
        for word in textdata.tokenise(row["summary"] + " " + row["reviewText"]):
            training_counts[word] = training_counts.get(word, 0) + 1
    assert dict(zip(words, counts.tolist())) == training_counts
    metadata = json.loads((data / "metadata.json").read_text())
    assert metadata["vocabulary_size"] == len(words) and metadata["protocol"]["text"]["max_words"] == 20000


def test_held_out_only_words_never_enter_the_vocabulary(tmp_path):
    lines = [json.dumps({"reviewerID": f"U{n % 5}", "asin": f"I{n}", "overall": 4.0, "unixReviewTime": n,
                         "reviewText": f"common word{n}"}) for n in range(40)]
    (tmp_path / "r.json.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    assert run_convert(["--path", tmp_path / "r.json.gz", "--split", "random", "--output", tmp_path / "d"])[0] == 0
    dataset = dataloading.load_dataset(tmp_path / "d")
    words = set(dataset.vocabulary[0])
    held = {f"word{int(layout.read_id_map(tmp_path / 'd' / 'items.csv')[0][item][1:])}"
            for item in dataset.test.items.tolist()}
    assert len(held) == 8 and not held & words and "common" in words and len(words) == 33
    # Test reviews keep only their known word, "common".
    assert dataset.test.text.lengths().tolist() == [1] * 8


def test_an_amazon_file_without_review_text_converts_and_a_text_model_refuses_with_one_line(tmp_path, capsys):
    source = planted_reviews(tmp_path, with_text=False)
    assert run_convert(["--path", source, "--split", "random", "--output", tmp_path / "data"])[0] == 0
    dataset = dataloading.load_dataset(tmp_path / "data")
    assert dataset.vocabulary[0] == [] and dataset.train_text.values.numel() == 0
    assert len(dataset.train_text) == dataset.num_train
    capsys.readouterr()
    assert ncf.main(["--data", str(tmp_path / "data"), "--model", "textmf", "--checkpoint_dir", ""]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "have no words" in error and "Traceback" not in error
    # The same file is fine for a rating model, and a dataset without text at all is refused as well.
    assert ncf.main(["--data", str(tmp_path / "data"), "--model", "biasmf", "-e", "1", "--checkpoint_dir", ""]) == 0
    # The implicit splits leave text out.
    assert run_convert(["--path", planted_reviews(tmp_path), "--output", tmp_path / "loo", "--valid_negative", "5"],
                       capsys)[0] == 0
    assert not (tmp_path / "loo" / "vocab.csv").exists()


def test_text_column_of_a_csv_is_kept(tmp_path):
    (tmp_path / "r.csv").write_text("user,item,rating,comment\n" + "".join(
        f"{n % 4},{n},{1 + n % 5},\"Nice, thing {n}\"\n" for n in range(30)))
    assert run_convert(["--path", tmp_path / "r.csv", "--split", "random", "--text_col", "comment", "--sep", ",",
                        "--output", tmp_path / "d", "--max_words", "3", "--skip_top", "1"])[0] == 0
    words, counts = dataloading.load_dataset(tmp_path / "d").vocabulary
    assert words[0] == "thing" and counts.tolist() == [24, 1, 1] and words[1].isdigit()  # "nice" (24) skipped


def test_textmf_without_text_weight_is_its_base_and_predicts_from_user_and_item_alone():
    torch.manual_seed(0)
    model = TextMF(5, 6, num_words=7, factors=4, text_weight=0.0)
    users, items = torch.tensor([0, 4]), torch.tensor([5, 1])
    words, offsets = torch.tensor([1, 2, 3]), torch.tensor([0, 2])
    assert torch.equal(model(users, items), model.rating(users, items))
    assert torch.equal(model(users, items, words, offsets), model(users, items))
    loss = model.training_loss()
    inputs = (users, items, torch.tensor([4.0, 2.0]), None, words, offsets)
    assert torch.equal(loss(model, inputs, _no_autocast)[1], ((model(users, items) - inputs[2]) ** 2).sum())


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


def test_text_loss_counts_each_review_once_and_skips_empty_ones():
    table = torch.nn.Embedding(4, 2)
    table.weight.data = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])

    class Fixed:
        def draw(self, shape, generator=None):
            return torch.full(shape, 2)  # always the word opposite to item vector (1, 0)

    items = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    words, offsets = torch.tensor([0, 0, 1]), torch.tensor([0, 2, 2])  # reviews: [0, 0], [], [1]
    total, count = text_loss(items, table, torch.tensor(1.0), words, offsets, Fixed(), 1)
    softplus = torch.nn.functional.softplus
    expected = softplus(torch.tensor(-1.0)) + softplus(torch.tensor(0.0)) + 2 * softplus(torch.tensor(-1.0))
    assert count == 2 and total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_textrating_reads_the_review_and_is_labelled_a_diagnostic(reviewed, tmp_path, capsys):
    _, data = reviewed
    log = tmp_path / "log.json"
    assert ncf.main(["--data", str(data), "--model", "textrating", "-e", "20", "-f", "8", "-l", "0.05",
                     "--checkpoint_dir", str(tmp_path / "ck"), "--log_path", str(log)]) == 0
    out = capsys.readouterr().out
    assert "reads the held-out review" in out
    summary = json.loads(log.read_text().splitlines()[-1])
    assert summary["best_metrics"]["rmse"] < 0.5  # 'great' and 'poor' give the 5s and 2s away
    assert traits(TextRating).reads_review and traits(TextRating).output == "rating"  # what the refusal reads
    assert recommend.main(["--checkpoint", str(tmp_path / "ck" / "best.pt"), "--user", "U1"]) == 1
    error = capsys.readouterr().err
    assert "diagnostic" in error and len(error.strip().splitlines()) == 1


def test_textitem_puts_each_items_own_words_first(reviewed, tmp_path, capsys):
    _, data = reviewed
    assert ncf.main(["--data", str(data), "--model", "textitem", "-e", "30", "-f", "16", "-l", "0.02",
                     "--checkpoint_dir", str(tmp_path / "ck"), "--log_path", str(tmp_path / "log.json")]) == 0
    capsys.readouterr()
    items = [f"I{item:02d}" for item in range(GROUPS * ITEMS_PER_GROUP)]
    assert recommend.main(["--checkpoint", str(tmp_path / "ck" / "best.pt"), "--words", *items, "-k", "10"]) == 0
    lists = capsys.readouterr().out.split("words nearest to item ")[1:]
    assert len(lists) == len(items)
    for item, listing in zip(items, lists):
        top = [line.split()[1] for line in listing.splitlines()[2:12]]
        own = sum(word.startswith(f"g{int(item[1:]) // ITEMS_PER_GROUP}w") for word in top)
        assert own >= 8, (item, top)


@pytest.mark.skipif(shared_file("amazon-musical-instruments-5core", "Musical_Instruments_5.json.gz") is None,
                    reason="the shared Amazon data is not here")
def test_musical_instruments_converts_with_text(tmp_path):
    source = shared_file("amazon-musical-instruments-5core", "Musical_Instruments_5.json.gz")
    assert run_convert(["--path", source, "--split", "random", "--validation", "--test_fraction", "0.1",
                        "--validation_fraction", "0.111", "--output", tmp_path / "mi"])[0] == 0
    dataset = dataloading.load_dataset(tmp_path / "mi")
    assert dataset.num_users == 1429 and dataset.num_items == 900
    assert len(dataset.train_text) + len(dataset.test.text) + len(dataset.validation.text) == 10261
    assert dataset.vocabulary[0][:3] == ["the", "i", "a"]


def test_textmf_at_text_weight_0_trains_exactly_as_its_base(reviewed, tmp_path):
    _, data = reviewed
    results = {}
    for kind, flags in (("biasmf", []), ("textmf", ["--text_weight", "0"])):
        log = tmp_path / f"{kind}.json"
        assert ncf.main(["--data", str(data), "--model", kind, "-e", "2", "-f", "8", "--checkpoint_dir", "",
                         "--log_path", str(log), *flags]) == 0
        results[kind] = [json.loads(line) for line in log.read_text().splitlines()][-1]["best_metrics"]
    assert results["textmf"] == results["biasmf"]


def test_the_seeds_benchmark_reports_each_row_over_the_seeds_and_labels_the_diagnostics(tmp_path, capsys):
    from bench import rating_seeds

    source = planted_reviews(tmp_path)
    assert rating_seeds.main(["--path", str(source), "--seeds", "0", "1", "--run", "--model biasmf -e 1 -f 4",
                              "--run", "--model textrating -e 1 -f 4"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in lines[1:]] == [
        "| the training mean", "| ncf.py --model biasmf -e 1 -f 4",
        "| ncf.py --model textrating -e 1 -f 4 (reads the test review: a diagnostic)"]
    mean_row = lines[1].split(" | ")
    assert len(mean_row[5].split()) == 2  # one figure per seed
