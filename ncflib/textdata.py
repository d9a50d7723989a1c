"""Review text as plain arrays: the tokeniser, the vocabulary and ragged token arrays (no pickle anywhere).

A dataset with text holds ``vocab.csv`` (index, word, count: the words kept from the training reviews, the most
common first) and, per part, ``{part}_text.npy`` (int32: every review's word indices, one review after another)
with ``{part}_text_offsets.npy`` (int64, one more than the reviews: review r is ``text[offsets[r]:offsets[r+1]]``).

    tokens = [tokenise(text) for text in reviews]
    words, counts = build_vocabulary(tokens, max_words=20000, skip_top=0)
    values, offsets = encode(tokens, {word: index for index, word in enumerate(words)})
    ragged = Ragged.from_arrays(values, offsets)
    batch_values, batch_offsets = ragged.take(torch.tensor([3, 0]))   # for nn.EmbeddingBag
"""

import csv
import dataclasses
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

WORD = re.compile(r"[^\W_]+")  # a run of letters and digits (any script); everything else separates words


def tokenise(text):
    """The words of a text: lower case, runs of letters and digits; an empty list for None or ''."""
    return WORD.findall(text.lower()) if text else []


def build_vocabulary(token_lists, max_words=20000, skip_top=0):
    """(words, counts) from the given reviews' tokens: words by count, most common first (ties alphabetical),
    the ``skip_top`` most common left out, then at most ``max_words`` kept."""
    if max_words < 1 or skip_top < 0:
        raise ValueError(f"max_words must be at least 1 and skip_top 0 or more, got {max_words} and {skip_top}.")
    counts = Counter(word for tokens in token_lists for word in tokens)
    ranked = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))[skip_top:skip_top + max_words]
    return [word for word, _ in ranked], np.array([count for _, count in ranked], dtype=np.int64)


def encode(token_lists, index):
    """(values int32, offsets int64) of the reviews' known words, in order; unknown words are dropped, so a review
    with none has an empty slice."""
    encoded = [[index[word] for word in tokens if word in index] for tokens in token_lists]
    lengths = np.fromiter((len(words) for words in encoded), dtype=np.int64, count=len(encoded))
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    values = np.fromiter((word for words in encoded for word in words), dtype=np.int32, count=int(offsets[-1]))
    return values, offsets


def write_vocabulary(file, words, counts):
    with open(file, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "word", "count"])
        writer.writerows(zip(range(len(words)), words, counts.tolist()))


def read_vocabulary(file):
    """(words, counts) from ``vocab.csv``; a ValueError naming the file when it is not one."""
    try:
        with open(file, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        words = [row["word"] for row in rows]
        counts = np.array([int(row["count"]) for row in rows], dtype=np.int64)
        if [int(row["index"]) for row in rows] != list(range(len(rows))):
            raise ValueError("indices are not 0, 1, 2, ...")
    except (OSError, UnicodeDecodeError, KeyError, ValueError, TypeError, csv.Error) as error:
        raise ValueError(f"{file}: not a vocabulary written by convert.py ({error})") from None
    return words, counts


@dataclass(frozen=True)
class Ragged:
    """Reviews as ragged word indices: ``values`` [M] int64 and ``offsets`` [N + 1] int64 (torch)."""

    values: torch.Tensor
    offsets: torch.Tensor

    @classmethod
    def from_arrays(cls, values, offsets, vocabulary_size=None, name="text"):
        """From numpy arrays, checked: offsets start at 0, never decrease and end at len(values); every value a
        word index below ``vocabulary_size``. A ValueError naming ``name`` otherwise."""
        values, offsets = np.asarray(values), np.asarray(offsets)
        if (values.ndim != 1 or offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0
                or offsets[-1] != values.size or (np.diff(offsets) < 0).any()):
            raise ValueError(f"{name}: its offsets do not describe its {values.size:,} word indices")
        if values.size and (values.min() < 0 or (vocabulary_size is not None and values.max() >= vocabulary_size)):
            raise ValueError(f"{name}: word indices outside the vocabulary of {vocabulary_size:,} words")
        return cls(torch.from_numpy(values.astype(np.int64)), torch.from_numpy(offsets.astype(np.int64)))

    def __len__(self):
        return self.offsets.numel() - 1

    def lengths(self):
        return self.offsets.diff()

    def take(self, rows):
        """(values, offsets) of the reviews ``rows`` (a tensor of indices), joined in that order: what
        ``nn.EmbeddingBag(values, offsets)`` takes (offsets [B], each bag's start)."""
        starts, lengths = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        bag_starts = torch.cumsum(lengths, 0) - lengths
        total = int(lengths.sum())
        # Position p of the joined list comes from values[starts[b] + (p - bag_starts[b])], b its review.
        shift = torch.repeat_interleave(starts - bag_starts, lengths, output_size=total)
        return self.values[shift + torch.arange(total, device=rows.device)], bag_starts

    def to(self, device):
        return dataclasses.replace(self, **{field.name: getattr(self, field.name).to(device)
                                            for field in dataclasses.fields(self)})

