"""The training loop, the same for every model family: devices, mixed precision, one epoch, and the fit over epochs.

It knows no model and no task. It takes a model, an optimizer, a source of batches, a loss function and an
evaluation returning metrics by name, and selects the best epoch on one named metric in a stated direction:

    selection = Selection("accuracy")                    # or Selection("loss", higher_is_better=False)
    result = fit(model, optimizer, scaler, loss, batches_of_epoch, evaluate, selection, epochs=20)
    result = loop(solve_step(model, users, items, settings), evaluate, selection, epochs=len(settings))

``loop`` is the one epoch loop (time, record, evaluate, select, save, stop); a model brings its step: a gradient
epoch (``gradient_step``; ``fit`` is the two together) or a closed-form solve (``solve_step``).

- ``batches_of_epoch(epoch)``: the epoch's batches, with ``len()``; each a ``dataloading.Batch`` (its inputs, this
  rank's sample count, and the global batch's sample count over every rank).
- ``loss(model, inputs, autocast)``: (loss sum to report, loss sum to minimise), both 0-d tensors summed over the
  batch's samples; they differ when a model trains on more terms than it reports (auxiliary losses).
- ``evaluate()``: a dict of floats keyed by logged name; ``eval_samples`` in it (candidates scored) gives the
  evaluation throughput.

Distributed and mixed precision live here: world size and rank from torchrun's variables (``setup_devices``), one
autocast context factory and one ``GradScaler`` (``mixed_precision``), no precision branches in the loop.
"""

import contextlib
import gc
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

from dataloading import epoch_seed
from ncflib.errors import DeviceError, RanksDisagree
from ncflib.evaluation import Selection  # noqa: F401 - the loop's, kept with the metrics it names
from ncflib.optimizers import make_optimizer  # noqa: F401 - the loop's, built by the families

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


class NonFiniteLoss(Exception):
    """The training loss of an epoch became NaN or infinite."""

    def __init__(self, epoch, loss):
        super().__init__(f"training loss became {loss} in epoch {epoch}")
        self.epoch, self.loss = epoch, loss



@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self):
        return self.rank == 0


def setup_devices(choice="auto"):
    """The Runtime (device, rank, world size) from torchrun's variables (rank 0 of 1 without torchrun), with the
    process group initialised when there are several ranks."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if choice == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: no CUDA GPU is visible; use --device cpu")
    use_cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world_size > 1 and not dist.is_initialized():
        init_process_group("nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    return Runtime(device, rank, world_size)


def init_process_group(backend, **options):
    """``dist.init_process_group``, with the modules that bind the default group into default arguments
    (``group=group.WORLD``) imported first, so that they bind None. Imported later (DDP and TorchRec import them on
    first use), they kept the group, and with it Gloo's worker threads, alive into interpreter shutdown; a worker
    still releasing a finished collective's tensors then could not take the GIL and aborted the process ("terminate
    called without an active exception")."""
    import torch.distributed.nn.functional  # noqa: F401
    import torch.distributed.optim.zero_redundancy_optimizer  # noqa: F401

    dist.init_process_group(backend, **options)


@contextlib.contextmanager
def process_group_teardown():
    """Tear the process group (if any) down when the block ends; after a normal end, every rank first waits for the
    others, since a rank that tore down Gloo while another was still in its last collective made that one abort at
    exit ("terminate called without an active exception"). Then the group itself is freed here, not at interpreter
    shutdown: the collection frees the models (and DDP's reducer) that hold it, and freeing it joins Gloo's worker
    threads (see ``init_process_group``)."""
    try:
        yield
        if dist.is_initialized():
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
            gc.collect()


def mixed_precision(enabled, device):
    """One autocast context factory and one GradScaler; both are no-ops when ``enabled`` is false. bfloat16 where
    the device has it (CPUs do), else float16, which alone needs loss scaling."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=enabled and dtype == torch.float16)

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=enabled)

    return autocast, scaler


def compiled(function, compile_mode):
    """``function`` (a module or a method) compiled with torch.compile in ``compile_mode``, or as it is without
    one."""
    return torch.compile(function, mode=compile_mode) if compile_mode else function



def check_ranks_agree(settings, fingerprint, start_epoch, runtime):
    """Stop every rank with one clear error when ranks were given different data or flags, or would resume from
    different epochs (a last.pt that only some nodes can see), instead of training different models."""
    if runtime.world_size == 1:
        return
    settings = {key: value for key, value in settings.items() if key != "local_rank"}
    text = json.dumps({"dataset": fingerprint, "settings": settings, "start_epoch": start_epoch}, sort_keys=True,
                      default=str)
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")
    values = torch.tensor([digest, -digest], dtype=torch.int64, device=runtime.device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)  # max of digest and of -digest: equal digests iff max == -max
    if int(values[0]) != -int(values[1]):
        raise RanksDisagree("the ranks disagree on the dataset, the flags or the epoch to resume from; give every "
                            "rank the same --data (same contents), the same command line and a --checkpoint_dir they "
                            "all see (a shared file system)")



def seed_dropout(seed, epoch, rank=0):
    """Seed torch's global generator, which dropout draws from, for an epoch: a stream of its own on each rank."""
    torch.manual_seed(epoch_seed(seed, epoch) + 104_729 * (rank + 1))


def cosine_rate(base, progress):
    """The learning rate at ``progress`` in [0, 1) of a run along half a cosine from ``base`` towards 0."""
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def one_cycle_rate(base, progress, warmup=0.25, start_divisor=25.0, end_divisor=1e5):
    """The learning rate at ``progress`` in [0, 1) of a one-cycle run (fastai's ``fit_one_cycle``): from
    ``base / start_divisor`` up to ``base`` along half a cosine over the ``warmup`` share of the run, then down
    along half a cosine to ``base / end_divisor``."""
    if progress < warmup:
        low, high, phase = base / start_divisor, base, progress / warmup
    else:
        low, high, phase = base / end_divisor, base, 1.0 - (progress - warmup) / (1.0 - warmup)
    return low + (high - low) * 0.5 * (1.0 - math.cos(math.pi * phase))


def schedule(name, base):
    """``training.fit``'s learning_rate(progress) for --lr_schedule ``name`` from ``base``; None for 'constant'."""
    rates = {"cosine": cosine_rate, "onecycle": one_cycle_rate}
    return None if name == "constant" else (lambda progress: rates[name](base, progress))


def train_epoch(model, optimizer, scaler, autocast, batches, loss, *, grads_accumulated=1, world_size=1,
                learning_rate=None, position=(0, 1), show_bar=False, description=""):
    """One pass over ``batches``; returns (mean reported loss over every rank's samples as a 0-d tensor, samples of
    every rank).

    ``learning_rate(progress)``, when given, sets the rate before each step from the run's progress in [0, 1);
    ``position`` is (this epoch, the run's epochs), so step s of n is at ``(epoch * n + s) / (epochs * n)``.
    """
    model.train()
    num_batches = len(batches)
    loss_total, samples = 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(batches, total=num_batches, desc=description, leave=False, disable=not show_bar)
    for step, batch in enumerate(bar):
        if learning_rate is not None:
            epoch, epochs = position
            rate = learning_rate((epoch * num_batches + step) / (epochs * num_batches))
            for group in optimizer.param_groups:
                group["lr"] = rate
        # Every rank divides its loss sum by the global batch's sample count times the ranks that DDP averages
        # over, so the applied gradient is that of the global batch's mean loss, even when a rank's slice is
        # uneven or empty. The last group may hold fewer batches than grads_accumulated; it is still applied,
        # scaled by its size.
        group = min(grads_accumulated, num_batches - (step // grads_accumulated) * grads_accumulated)
        applies = (step + 1) % grads_accumulated == 0 or step + 1 == num_batches
        sync = contextlib.nullcontext() if applies or world_size == 1 else model.no_sync()
        with sync:  # under no_sync, this rank accumulates; DDP averages once, at the applying step
            reported, objective = loss(model, batch.inputs, autocast)
            scaler.scale(objective * (world_size / (batch.global_samples * group))).backward()
        if applies:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        loss_total = loss_total + reported.detach()  # a device tensor from the first batch on: no host sync
        samples += batch.samples
    loss_total = torch.as_tensor(loss_total, device=getattr(loss_total, "device", None))
    totals = torch.stack([loss_total.double(), torch.tensor(float(samples), dtype=torch.float64,
                                                             device=loss_total.device)])
    if world_size > 1:
        dist.all_reduce(totals)
    return totals[0] / totals[1].clamp(min=1), int(totals[1])


def gradient_step(model, optimizer, scaler, loss, batches_of_epoch, *, epochs, autocast=None, seed=0, rank=0,
                  world_size=1, grads_accumulated=1, learning_rate=None, show_bar=False):
    """``loop``'s step for a model trained by gradient: one ``train_epoch`` over ``batches_of_epoch(epoch)`` (dropout
    seeded by the epoch), returning the record's ``train_loss`` and ``learning_rate`` (at the epoch's last step)
    and the samples of every rank. Raises NonFiniteLoss when the epoch's loss is not finite, before anything of
    that epoch is reported."""
    autocast = autocast or contextlib.nullcontext

    def step(epoch):
        seed_dropout(seed, epoch, rank)
        train_loss, samples = train_epoch(
            model, optimizer, scaler, autocast, batches_of_epoch(epoch), loss, grads_accumulated=grads_accumulated,
            world_size=world_size, learning_rate=learning_rate, position=(epoch, epochs), show_bar=show_bar,
            description=f"epoch {epoch}")
        train_loss = float(train_loss)  # the one host sync of the epoch
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(epoch, train_loss)
        return {"train_loss": train_loss, "learning_rate": optimizer.param_groups[0]["lr"]}, samples

    return step


def solve_step(model, users, items, settings):
    """``loop``'s step for a model solved in closed form (``protocols.SolvedInClosedForm``): epoch e solves the
    training pairs (users, items [N]) with ``settings[e]``; the record gets what ``solve`` returns, and no
    throughput: a solve's seconds do not grow with its pairs (a setting solved from a factorisation kept from the
    one before takes milliseconds), so pairs per second would say nothing."""

    def step(epoch):
        return model.solve(users, items, settings[epoch]), None

    return step


def loop(step, evaluate, selection, *, epochs, start_epoch=0, best=None, on_epoch=None, save=None, saved_best=None,
         threshold=None, patience=None, eval_every=1):
    """The one epoch loop of every model: from ``start_epoch`` to ``epochs``, ``step(epoch)`` (a gradient epoch or
    a closed-form solve: (record fields, samples, or None for a solve)), then evaluation after every
    ``eval_every``-th epoch and the last; returns the run's ``best`` and whether it stopped at ``threshold``.

    ``best`` (from a resumed run, else None) is a dict: ``epoch``, ``metrics`` (the evaluation of that epoch),
    ``seconds`` (training and evaluation time up to it) and ``elapsed`` (up to the last epoch run).
    ``on_epoch(record)`` is called after each epoch (to log and print) with the epoch's record: ``epoch``, the
    step's fields, the evaluation's metrics, throughputs and times. Then ``save(name, record, best)``, when given,
    writes "best.pt" for an epoch better than the run's best so far and than ``saved_best`` (a best model already
    kept, never overwritten by a worse one), and "last.pt" after every epoch. ``patience``: stop after that many
    evaluations in a row without a better selection metric (early stopping; epochs that were not evaluated do not
    count, so a patience shorter than ``eval_every`` still waits for an evaluation).
    """
    best = best or {"epoch": -1, "metrics": {}, "seconds": 0.0, "elapsed": 0.0}
    elapsed, reached = best["elapsed"], False
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        fields, samples = step(epoch)
        train_seconds = time.perf_counter() - started
        evaluated = (epoch + 1) % eval_every == 0 or epoch + 1 == epochs
        metrics = evaluate() if evaluated else {}  # (a skipped evaluation: a record of the training alone)
        eval_seconds = time.perf_counter() - started - train_seconds
        elapsed += time.perf_counter() - started
        scored = metrics.pop("eval_samples", None)
        record = {"epoch": epoch, **fields, **metrics,
                  **({"train_throughput": samples / max(train_seconds, 1e-9)} if samples is not None else {}),
                  "train_epoch_time": train_seconds,
                  **({"eval_throughput": scored / eval_seconds} if scored is not None else {}),
                  "validation_epoch_time": eval_seconds}
        waited = sum(1 for earlier in range(best["epoch"] + 1, epoch + 1)  # evaluations since the best
                     if (earlier + 1) % eval_every == 0 or earlier + 1 == epochs)
        best, saved_best, reached, stop = close_epoch(
            record, metrics, elapsed, best, selection, on_epoch=on_epoch, save=save, saved_best=saved_best,
            threshold=threshold, patience=patience, waited=waited)
        if stop:
            break
    return best, reached


def fit(model, optimizer, scaler, loss, batches_of_epoch, evaluate, selection, *, epochs, autocast=None, seed=0,
        rank=0, world_size=1, grads_accumulated=1, learning_rate=None, show_bar=False, **options):
    """``loop`` over the epochs of a model trained by gradient (``gradient_step``); ``options`` are ``loop``'s."""
    step = gradient_step(model, optimizer, scaler, loss, batches_of_epoch, epochs=epochs, autocast=autocast, seed=seed,
                         rank=rank, world_size=world_size, grads_accumulated=grads_accumulated,
                         learning_rate=learning_rate, show_bar=show_bar)
    return loop(step, evaluate, selection, epochs=epochs, **options)


def close_epoch(record, metrics, elapsed, best, selection, *, on_epoch=None, save=None, saved_best=None,
                threshold=None, patience=None, waited=None):
    """What the loop does once an epoch is over, as ``loop`` documents it: the run's best updated by the
    epoch's ``metrics`` (empty: the epoch was not evaluated), ``on_epoch(record)``, best.pt and last.pt saved, the
    threshold and patience checked (``waited``: the evaluations since the best before this epoch's, by default
    every epoch since it). Returns (best, saved_best, reached the threshold, stop)."""
    epoch, evaluated = record["epoch"], bool(metrics)
    value = metrics.get(selection.metric, selection.worst)
    improved = evaluated and selection.improves(value, best["metrics"].get(selection.metric, selection.worst))
    if improved:
        best = {"epoch": epoch, "metrics": metrics, "seconds": elapsed}
    best = {**best, "elapsed": elapsed}
    if on_epoch is not None:
        on_epoch(record)
    if save is not None:
        if improved and (saved_best is None or selection.improves(value, saved_best)):
            save("best.pt", record, best)
            saved_best = value
        save("last.pt", record, best)
    reached = evaluated and threshold is not None and selection.reaches(value, threshold)
    waited = epoch - best["epoch"] if improved or waited is None else waited
    stop = reached or (patience is not None and evaluated and best["epoch"] >= 0 and waited >= patience)
    return best, saved_best, reached, stop
