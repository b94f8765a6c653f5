"""Linzen et al. (2016) number-prediction data: parsing, fixed-seed split, vocabulary, batches.

Each line of the bundled files is ``VBZ|VBP<TAB>sentence prefix``; the model reads the prefix
and predicts whether the (missing) verb is singular (``VBZ``) or plural (``VBP``). The files
``numpred.test.{1..5}`` hold dependencies with exactly that many agreement attractors;
``numpred.val`` holds random dependencies (mostly with no attractor), which we call the
``"random"`` group.
"""

import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

#: Environment variable naming the folder that holds the ``numpred.*`` files.
DATA_ENV = "CAPTUM_ATTNFLOW_SVA_DATA"
#: Where the data lies in a clone of the repository (it is not shipped in the wheel: a library
#: should not carry 3.6 MB of third-party data with terms of its own; see data/linzen_sva/README.md).
CLONE_DATA_DIR = Path(__file__).resolve().parents[3] / "data" / "linzen_sva"
#: Group name -> file. The attractor groups are named by their attractor count.
GROUP_FILES = {"random": "numpred.val", **{str(k): f"numpred.test.{k}" for k in range(1, 6)}}
LABELS = ("VBZ", "VBP")  # index 0 = singular, 1 = plural
CLS, PAD, UNK, EOS = "[CLS]", "[PAD]", "[UNK]", "[EOS]"
SPECIAL_TOKENS = (PAD, CLS, UNK, EOS)  # PAD first so that its id is 0


@dataclass(frozen=True)
class Example:
    """One labelled prefix: its tokens, label index (0 = VBZ, 1 = VBP) and group."""

    tokens: Tuple[str, ...]
    label: int
    group: str


@dataclass
class Split:
    """Fixed-seed train / validation / held-out test partition of the examples."""

    train: List[Example]
    validation: List[Example]
    test: List[Example]

    def sizes_by_group(self) -> Dict[str, Dict[str, int]]:
        """``{part: {group: count}}`` for documenting the split."""
        return {name: dict(sorted(Counter(ex.group for ex in part).items()))
                for name, part in (("train", self.train), ("validation", self.validation),
                                   ("test", self.test))}


def parse_line(line: str, group: str) -> Optional[Example]:
    """Parse ``LABEL<TAB>prefix``; returns None for blank or malformed lines."""
    label, sep, text = line.rstrip("\n").partition("\t")
    tokens = tuple(text.split())
    if not sep or label not in LABELS or not tokens:
        return None
    return Example(tokens=tokens, label=LABELS.index(label), group=group)


def find_data_dir(data_dir: Optional[os.PathLike] = None) -> Path:
    """The folder of the Linzen files: ``data_dir``, else ``$CAPTUM_ATTNFLOW_SVA_DATA``, else the clone's.

    Raises FileNotFoundError naming the missing file and the three ways to point at the data.
    """
    candidate = Path(data_dir or os.environ.get(DATA_ENV) or CLONE_DATA_DIR)
    missing = [name for name in GROUP_FILES.values() if not (candidate / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"The Linzen et al. (2016) agreement data is not in {candidate} (missing {missing[0]}). It lies in "
            "data/linzen_sva/ of a clone of the captum-attnflow repository and is not part of the installed "
            f"package: run from a clone, set {DATA_ENV}=/path/to/linzen_sva, or pass --data-dir.")
    return candidate


def load_examples(data_dir: Optional[os.PathLike] = None) -> List[Example]:
    """All examples of every group, in file order (folder found by :func:`find_data_dir`)."""
    data_dir = find_data_dir(data_dir)
    examples: List[Example] = []
    for group, filename in GROUP_FILES.items():
        with open(data_dir / filename, encoding="utf-8") as handle:
            examples.extend(ex for ex in (parse_line(line, group) for line in handle) if ex is not None)
    return examples


def _test_quota(group_sizes: Dict[str, int], n_test: int, min_per_group: int) -> Dict[str, int]:
    # Proportional allocation, but every group gets at least ``min_per_group`` (at most a
    # third of it) so that the rare 4- and 5-attractor groups are represented.
    total = sum(group_sizes.values())
    return {group: min(size // 3, max(min_per_group, round(n_test * size / total)))
            for group, size in group_sizes.items()}


def split_examples(examples: Sequence[Example], *, n_test: int = 2500, n_validation: int = 2000,
                   min_test_per_group: int = 60, seed: int = 0) -> Split:
    """Stratified (by group) fixed-seed split into train / validation / held-out test.

    The test part gets about ``n_test`` examples allocated proportionally to group size with
    at least ``min_test_per_group`` per group; validation gets about ``n_validation``
    proportionally; the rest is training data.
    """
    by_group: Dict[str, List[Example]] = {}
    for example in examples:
        by_group.setdefault(example.group, []).append(example)
    rng = random.Random(seed)
    sizes = {group: len(items) for group, items in by_group.items()}
    test_quota = _test_quota(sizes, n_test, min_test_per_group)
    total = sum(sizes.values())
    split = Split([], [], [])
    for group in sorted(by_group):
        items = list(by_group[group])
        rng.shuffle(items)
        n_group_test = test_quota[group]
        n_group_val = min(round(n_validation * sizes[group] / total), (len(items) - n_group_test) // 2)
        split.test.extend(items[:n_group_test])
        split.validation.extend(items[n_group_test:n_group_test + n_group_val])
        split.train.extend(items[n_group_test + n_group_val:])
    for part in (split.train, split.validation, split.test):
        rng.shuffle(part)
    return split


class Vocabulary:
    """Token <-> id map built from training examples; rare words map to ``[UNK]``."""

    def __init__(self, tokens: Sequence[str]):
        self.itos = list(SPECIAL_TOKENS) + [t for t in tokens if t not in SPECIAL_TOKENS]
        self.stoi = {token: index for index, token in enumerate(self.itos)}

    @classmethod
    def build(cls, examples: Sequence[Example], min_count: int = 2) -> "Vocabulary":
        """Words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts = Counter(token for ex in examples for token in ex.tokens)
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        return cls(kept)

    @classmethod
    def from_itos(cls, itos: Sequence[str]) -> "Vocabulary":
        """Rebuild a vocabulary from its saved ``itos`` list."""
        if tuple(itos[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError("itos must start with the special tokens " + ", ".join(SPECIAL_TOKENS))
        return cls(itos[len(SPECIAL_TOKENS):])

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def pad_id(self) -> int:
        return self.stoi[PAD]

    @property
    def cls_id(self) -> int:
        return self.stoi[CLS]

    @property
    def unk_id(self) -> int:
        return self.stoi[UNK]

    @property
    def eos_id(self) -> int:
        return self.stoi[EOS]

    def encode(self, tokens: Sequence[str], end_token: bool = False) -> List[int]:
        """``[CLS]`` followed by the token ids, then ``[EOS]`` if ``end_token``."""
        return [self.cls_id] + [self.stoi.get(t, self.unk_id) for t in tokens] + [self.eos_id] * end_token


def collate(examples: Sequence[Example], vocab: Vocabulary, max_len: Optional[int] = None,
            end_token: bool = False) -> Dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` (1 = real token) and ``labels``."""
    encoded = [vocab.encode(ex.tokens, end_token) for ex in examples]
    if max_len is not None:
        encoded = [ids[:max_len] for ids in encoded]
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), vocab.pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
    labels = torch.tensor([ex.label for ex in examples], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def length_bucketed_batches(examples: Sequence[Example], batch_size: int, *,
                            rng: random.Random) -> Iterator[List[Example]]:
    """Shuffled batches of similar length: little padding, so less CPU time wasted."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    # Sort within chunks of 50 batches, then shuffle the batches themselves.
    chunk = batch_size * 50
    batches: List[List[int]] = []
    for start in range(0, len(order), chunk):
        block = sorted(order[start:start + chunk], key=lambda i: len(examples[i].tokens))
        batches.extend(block[i:i + batch_size] for i in range(0, len(block), batch_size))
    rng.shuffle(batches)
    for batch in batches:
        yield [examples[i] for i in batch]
