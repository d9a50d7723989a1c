"""Defaults that depend on the data and the model: what ncf.py uses for -n, -b, -l, Adam's betas, the weight decay
and the schedule when they are not given.

Each is measured (experiments/grids and docs/history.md hold the sweeps behind them); ncf.py prints what it chose.

    negatives = choose_negatives(num_train)
    batch_size = choose_batch_size(num_train, negatives)
    schedule = choose_schedule(num_train, num_items, demo)
    learning_rate = choose_learning_rate(batch_size, small_cosine=schedule == "cosine")
    betas = choose_betas(batch_size)
"""

import math

DEFAULT_EPOCHS = 20
RATING_EPOCHS = 5  # with the one-cycle schedule the rating models are best at its end (ML-100k, docs/ratings.md)
DEMO_EPOCHS = 10  # the demo peaks before its 10th epoch (docs/results.md; its time: docs/speed.md)

IMPLICIT_WEIGHT_DECAY = 0.1  # AdamW's; better than NVIDIA's 0 on ML-100k and ML-1M (docs/history.md)
IMPLICIT_DROPOUT = 0.5  # NVIDIA's, after each MLP layer


DEMO_NEGATIVES = 4  # the demo keeps NVIDIA's default: with the 14 of the rule below it took 7 minutes on 2 cores


def choose_negatives(num_train):
    """Default negatives per positive: about 1.6M divided by the training pairs, between NVIDIA's 4 and 16.

    On a small dataset an epoch is cheap and over quickly, and more negatives per positive measurably help NeuMF on
    ML-100k (99,057 pairs, so 16), at a multiple of the time per epoch (docs/history.md). ML-1M (994,169 pairs)
    and larger sets keep NVIDIA's 4.
    """
    return int(min(16, max(4, round(1.6e6 / max(num_train, 1)))))


def choose_batch_size(num_train, negatives_per_positive):
    """Default batch: a power of two giving about 512 optimizer steps per epoch, between 2^10 and 2^20.

    NVIDIA's fixed 2^20 suits MovieLens-20M but leaves ML-1M with 5 steps per epoch, which train it poorly, and
    ML-100k with less than one. Sweeps on ML-100k and ML-1M (experiments/grids, docs/history.md) put the best
    batches at a few hundred to a thousand steps per epoch: ML-100k 2^12 (with its 16 negatives; 2^10 with 4),
    ML-1M 2^13, ML-20M 2^18.
    """
    samples = num_train * (1 + negatives_per_positive)
    return int(2 ** min(20, max(10, round(math.log2(max(samples / 512, 1))))))


SMALL_DATA_RATE = 0.002  # where the cosine schedule starts on small, dense data (choose_schedule)
DENSE_PAIRS_PER_ITEM = 25  # training pairs per item from which small data counts as dense


def choose_schedule(num_train, num_items, demo=False):
    """Default --lr_schedule: 'cosine' on small, dense data (below SMALL_DATA training pairs, at least
    DENSE_PAIRS_PER_ITEM of them per item; the built-in demo aside), else 'constant'.

    On ML-100k (59 pairs per item) the NeuMF defaults with a cosine decay from 0.002 (``SMALL_DATA_RATE``) rank as
    well as at the constant 0.001 and reach their best in fewer epochs; on three sparse catalogues (Last.fm,
    Amazon's Musical Instruments and Gift Cards 5-cores: 5, 8 and 14 pairs per item) it was no gain on validation,
    so the threshold lies between 14 and 59 (docs/training.md, "--lr_schedule"; the runs: docs/history.md). The
    demo keeps its constant rate, chosen on its own validation split; ML-1M and larger keep theirs: the schedule
    was not measured there as a default."""
    dense = num_train >= DENSE_PAIRS_PER_ITEM * num_items
    return "cosine" if num_train < SMALL_DATA and dense and not demo else "constant"


def choose_learning_rate(batch_size, small_cosine=False):
    """Default Adam learning rate for a batch size: NVIDIA's 0.0045 at 2^20, scaled by the square root of the batch
    ratio (the usual rule for Adam), floored at 0.001; with ``small_cosine`` (the cosine schedule on data where it
    is the default, ``choose_schedule``) ``SMALL_DATA_RATE``."""
    return SMALL_DATA_RATE if small_cosine else max(0.001, 0.0045 * math.sqrt(batch_size / 2**20))


SMALL_DATA = 500_000  # training pairs below which the MLP tower is the smaller one
NVIDIA_LAYERS = [256, 256, 128, 64]
SMALL_LAYERS = [128, 128, 64, 32]


def choose_layers(num_train):
    """Default MLP tower (--layers) of NeuMF and MLP: NVIDIA's 256 256 128 64, halved in every width below 500,000
    training pairs.

    On ML-100k's validation split (NeuMF defaults, seeds 0-2) the half-width tower ranks as well as NVIDIA's at
    about a third of the time a step (docs/history.md): a small dataset does not need the larger tower. ML-1M and
    larger keep NVIDIA's: the smaller tower was not measured there."""
    return list(SMALL_LAYERS if num_train < SMALL_DATA else NVIDIA_LAYERS)


LARGE_BATCH = 2**18


def choose_betas(batch_size):
    """Default Adam betas: NVIDIA's (0.25, 0.5), tuned for batch 2^20 on ML-20M, for large batches; Adam's usual
    (0.9, 0.999) below, measured better at the batches that suit smaller datasets (docs/history.md)."""
    return (0.25, 0.5) if batch_size >= LARGE_BATCH else (0.9, 0.999)


def choose_sizes(num_train, num_items, demo, negatives=None, batch_size=None, learning_rate=None, beta1=None,
                 beta2=None, weight_decay=None, lr_schedule=None):
    """The run's -n, -b, -l, -b1, -b2, weight decay and schedule: each as given, else chosen for ``num_train``
    training pairs over ``num_items`` items (``demo``: the built-in demo keeps NVIDIA's 4 negatives). Returns
    (values by flag name, notes {what: (value, how chosen)} to print, a warning or None); a batch larger than an
    epoch is clamped to one."""
    values, notes, warning = {}, {}, None
    if negatives is None:
        if demo:  # the built-in demo: a quick first run
            negatives, how = DEMO_NEGATIVES, "NVIDIA's, kept for the built-in demo so that it stays quick"
        else:
            negatives, how = choose_negatives(num_train), f"chosen for {num_train:,} training pairs"
        notes["negatives per positive"] = (negatives, f"{how}; set with -n")
    samples = num_train * (1 + negatives)
    if batch_size is None:
        batch_size = choose_batch_size(num_train, negatives)
        notes["batch size"] = (batch_size, f"chosen for {samples:,} samples per epoch; set with -b")
    elif batch_size > samples:
        warning = (f"warning: --batch_size {batch_size:,} is larger than an epoch ({samples:,} samples); using "
                   f"{samples:,}")
        batch_size = samples
        notes["batch size"] = (batch_size, "clamped to one epoch")
    else:
        notes["batch size"] = (batch_size, "given")
    default_schedule = choose_schedule(num_train, num_items, demo)
    if lr_schedule is None:
        lr_schedule = default_schedule
        if lr_schedule != "constant":
            notes["schedule"] = (lr_schedule, f"chosen for {num_train:,} training pairs, "
                                              f"{num_train / num_items:.0f} per item; set with --lr_schedule")
    if learning_rate is None:
        small_cosine = lr_schedule == default_schedule == "cosine"
        learning_rate = choose_learning_rate(batch_size, small_cosine)
        how = "the cosine schedule's start on small, dense data" if small_cosine else "chosen for the batch size"
        notes["learning rate"] = (learning_rate, f"{how}; set with -l")
    else:
        notes["learning rate"] = (learning_rate, "given")
    if beta1 is None or beta2 is None:
        default_betas = choose_betas(batch_size)
        beta1 = default_betas[0] if beta1 is None else beta1
        beta2 = default_betas[1] if beta2 is None else beta2
        notes["Adam betas"] = (f"{beta1:g}, {beta2:g}", "chosen for the batch size; set with -b1/-b2")
    values.update(negative_samples=negatives, batch_size=batch_size, learning_rate=learning_rate, beta1=beta1,
                  beta2=beta2, weight_decay=IMPLICIT_WEIGHT_DECAY if weight_decay is None else weight_decay,
                  lr_schedule=lr_schedule)
    return values, notes, warning


RATING_LEARNING_RATE = 5e-3  # fastai's rate for DotProductBias on ML-100k (with fit_one_cycle, 5 epochs)


def choose_rating_sizes(num_train, model, default_weight_decay, batch_size=None, learning_rate=None, beta1=None,
                        beta2=None, weight_decay=None, lr_schedule=None):
    """The rating models' -b, -l, -b1, -b2, --weight_decay and --lr_schedule, as ``choose_sizes`` returns them: a
    batch of about 1/1000 of the ratings (a power of two from 64, fastai's batch for ML-100k, to 2^16), fastai's
    rate 5e-3 along its one-cycle schedule, its Adam betas (0.9, 0.99), and the model's ``default_weight_decay``,
    each chosen on ML-100k's validation ratings (docs/ratings.md)."""
    values, notes, warning = {}, {}, None
    if batch_size is None:
        batch_size = int(2 ** min(16, max(6, round(math.log2(max(num_train / 1000, 1))))))
        notes["batch size"] = (batch_size, f"chosen for {num_train:,} training ratings; set with -b")
    elif batch_size > num_train:
        warning = f"warning: --batch_size {batch_size:,} is larger than an epoch ({num_train:,} ratings); using it all"
        batch_size = num_train
    if learning_rate is None:
        learning_rate = RATING_LEARNING_RATE
        notes["learning rate"] = (learning_rate, "fastai's for these models; set with -l")
    if lr_schedule is None:
        lr_schedule = "onecycle"
        notes["schedule"] = ("onecycle", "fastai's fit_one_cycle; set with --lr_schedule")
    if weight_decay is None:
        weight_decay = default_weight_decay
        notes["weight decay"] = (weight_decay, f"chosen for {model} on ML-100k; set with --weight_decay")
    if beta1 is None or beta2 is None:
        beta1, beta2 = 0.9 if beta1 is None else beta1, 0.99 if beta2 is None else beta2
        notes["Adam betas"] = (f"{beta1:g}, {beta2:g}", "fastai's; set with -b1/-b2")
    values.update(batch_size=batch_size, learning_rate=learning_rate, beta1=beta1, beta2=beta2,
                  weight_decay=weight_decay, lr_schedule=lr_schedule)
    return values, notes, warning


# ------------------------------------------------------------------------------------------------ full ranking

# The implicit models' defaults under --eval_protocol full, for the models that score by a dot product of user and
# item vectors (GMF): sampled softmax on cosines over many negatives shared by each batch, its temperature chosen
# from the catalogue's size (choose_temperature). Chosen on the validation splits of ML-100k, ML-1M, Last.fm and
# Yelp2018 (docs/training.md, "Full ranking").
FULL_RANKING = {"loss": "softmax", "similarity": "cosine", "negative_weight": 10.0, "shared_negatives": 1024,
                "positives_per_batch": 1024, "learning_rate": 0.002, "weight_decay": 0.0, "epochs": 30}
# The sampled softmax's temperature on cosines: TEMPERATURE at TEMPERATURE_ITEMS items, lower on larger catalogues
# as (TEMPERATURE_ITEMS / items) ** TEMPERATURE_POWER, within TEMPERATURE_RANGE.
TEMPERATURE, TEMPERATURE_ITEMS, TEMPERATURE_POWER, TEMPERATURE_RANGE = 0.19, 3000, 0.16, (0.05, 0.3)


def choose_temperature(num_items):
    """The softmax's default temperature on cosines for a catalogue of ``num_items``. A cosine lies in [-1, 1], so
    the temperature sets how far apart the positive's and the negatives' logits can be; the larger the catalogue,
    the more items the positive must rise above, and the sharper the softmax that ranks best on validation. The
    power law is the least-squares fit of the best temperatures on four catalogues of 1,682 to 38,048 items (the
    sweep: experiments/grids/full-ranking-temperature.txt; its figures: docs/training.md, "Full ranking")."""
    low, high = TEMPERATURE_RANGE
    return round(min(high, max(low, TEMPERATURE * (TEMPERATURE_ITEMS / max(num_items, 1)) ** TEMPERATURE_POWER)), 3)


SIMILARITY_OF_LOSS = {"ccl": "cosine"}  # the similarity each loss takes when not given (else 'dot')


def choose_contrastive(num_train, num_items, loss=None, similarity=None, temperature=None, negative_weight=None,
                       shared_negatives=None, batch_size=None, learning_rate=None, beta1=None, beta2=None,
                       weight_decay=None, lr_schedule=None):
    """The settings of a run with --loss bpr, softmax or ccl, or with shared negatives (each as given, else
    ``FULL_RANKING``'s): (values by flag name, notes {what: (value, how chosen)}, a warning or None). -b counts
    positives here: a batch of them scores its shared negatives."""
    chosen = {}
    loss = _given_or(chosen, "loss", loss, FULL_RANKING["loss"])
    similarity = _given_or(chosen, "similarity", similarity,
                           SIMILARITY_OF_LOSS.get(loss, FULL_RANKING["similarity"] if loss == FULL_RANKING["loss"]
                                                  else "dot"))
    values = {"loss": loss, "similarity": similarity,
              "temperature": _given_or(chosen, "temperature", temperature,
                                       choose_temperature(num_items) if similarity == "cosine" else 1.0),
              "negative_weight": _given_or(chosen, "negative_weight", negative_weight,
                                           FULL_RANKING["negative_weight"]),
              "shared_negatives": _given_or(chosen, "shared_negatives", shared_negatives,
                                            FULL_RANKING["shared_negatives"]),
              "batch_size": _given_or(chosen, "batch_size", batch_size,
                                      min(FULL_RANKING["positives_per_batch"], max(num_train, 1))),
              "learning_rate": _given_or(chosen, "learning_rate", learning_rate, FULL_RANKING["learning_rate"]),
              "beta1": 0.9 if beta1 is None else beta1, "beta2": 0.999 if beta2 is None else beta2,
              "weight_decay": _given_or(chosen, "weight_decay", weight_decay, FULL_RANKING["weight_decay"]),
              "lr_schedule": lr_schedule or "constant"}
    if values["loss"] != "ccl":
        chosen.pop("negative_weight", None)  # (ccl's alone)
    notes = {name.replace("_", " "): (values[name], "the full-ranking default; set with --" + name)
             for name in chosen}
    if "temperature" in chosen and similarity == "cosine":
        notes["temperature"] = (values["temperature"], f"chosen for {num_items:,} items (lower for larger "
                                                       "catalogues); set with --temperature")
    return values, notes, None


def _given_or(chosen, name, given, default):
    """``given``, else ``default`` (noting ``name`` in ``chosen``)."""
    if given is not None:
        return given
    chosen[name] = True
    return default
