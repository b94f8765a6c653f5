"""Train the subject-verb agreement model on CPU with a fixed seed and save a checkpoint."""

import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from captum_attnflow.experiments.sva.data import (
    Example,
    Split,
    Vocabulary,
    collate,
    length_bucketed_batches,
    load_examples,
    split_examples,
)
from captum_attnflow.experiments.sva.model import SvaConfig, SvaTransformer
from captum_attnflow.experiments.sva.protocol import PROTOCOLS

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class TrainSettings:
    """Everything that determines a run; saved with the checkpoint.

    ``seed`` drives the initialisation and the batch order; ``split_seed`` the data split,
    which stays the same for every training seed so that all runs share their test examples.
    """

    seed: int = 0
    split_seed: int = 0
    protocol: str = "library"
    n_test: int = 2500
    n_validation: int = 2000
    min_test_per_group: int = 60
    min_count: int = 2
    num_layers: int = 6
    num_heads: int = 8
    hidden_size: int = 128
    end_token: bool = False
    embedding_dropout: float = 0.1
    attention_dropout: float = 0.1
    residual_dropout: float = 0.1
    init_std: float = 0.02
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    time_budget_s: Optional[float] = None  # stop early (between batches) past this budget
    subset: Optional[int] = None  # keep a fixed-seed stratified subset of the data (--quick)
    threads: int = 2

    @classmethod
    def for_protocol(cls, protocol: str, seed: int = 0, *, quick: bool = False) -> "TrainSettings":
        """The model choices of ``PROTOCOLS[protocol]``; ``quick``: a tiny model on a few hundred
        examples (seconds, for tests and smoke runs)."""
        choices = PROTOCOLS[protocol].model
        settings = cls(seed=seed, protocol=protocol, end_token=choices.end_token,
                       embedding_dropout=choices.embedding_dropout, attention_dropout=choices.attention_dropout,
                       residual_dropout=choices.residual_dropout, init_std=choices.init_std)
        if quick:
            settings = replace(settings, n_test=60, n_validation=40, min_test_per_group=5, min_count=1,
                               num_layers=2, num_heads=2, hidden_size=16, epochs=1, batch_size=32,
                               learning_rate=3e-3, subset=400)
        return settings


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stratified_subset(examples: Sequence[Example], size: int, seed: int) -> List[Example]:
    """About ``size`` examples with every group kept in proportion (at least 10 each)."""
    rng = random.Random(seed)
    groups: Dict[str, List[Example]] = {}
    for example in examples:
        groups.setdefault(example.group, []).append(example)
    subset = []
    for group in sorted(groups):
        items = groups[group]
        count = max(10, round(size * len(items) / len(examples)))
        subset.extend(rng.sample(items, min(count, len(items))))
    return subset


def prepare_data(settings: TrainSettings, data_dir: Optional[Path] = None):
    """Load, (optionally) subsample and split the data; build the vocabulary on train."""
    examples = load_examples(data_dir)
    if settings.subset is not None:
        examples = stratified_subset(examples, settings.subset, settings.split_seed)
    split = split_examples(examples, n_test=settings.n_test, n_validation=settings.n_validation,
                           min_test_per_group=settings.min_test_per_group, seed=settings.split_seed)
    vocab = Vocabulary.build(split.train, min_count=settings.min_count)
    return split, vocab


def build_model(settings: TrainSettings, vocab: Vocabulary, max_positions: int) -> SvaTransformer:
    config = SvaConfig(vocab_size=len(vocab), num_layers=settings.num_layers,
                       num_heads=settings.num_heads, hidden_size=settings.hidden_size,
                       max_positions=max_positions, embedding_dropout=settings.embedding_dropout,
                       attention_dropout=settings.attention_dropout, residual_dropout=settings.residual_dropout,
                       init_std=settings.init_std, pad_id=vocab.pad_id)
    return SvaTransformer(config)


@torch.no_grad()
def predict(model: SvaTransformer, examples: Sequence[Example], vocab: Vocabulary,
            end_token: bool = False, batch_size: int = 256) -> np.ndarray:
    """Predicted label index per example."""
    model.eval()
    predictions = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], vocab, end_token=end_token)
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
        predictions.append(logits.argmax(-1).numpy())
    return np.concatenate(predictions) if predictions else np.zeros(0, dtype=int)


def accuracy_by_group(model: SvaTransformer, examples: Sequence[Example], vocab: Vocabulary,
                      end_token: bool = False) -> Dict[str, Dict[str, float]]:
    """``{group: {"accuracy", "n"}}`` plus an ``"all"`` entry."""
    correct = predict(model, examples, vocab, end_token) == np.array([ex.label for ex in examples])
    groups = np.array([ex.group for ex in examples])
    result = {"all": {"accuracy": float(correct.mean()), "n": int(len(correct))}}
    for group in sorted(set(groups.tolist())):
        hits = correct[groups == group]
        result[group] = {"accuracy": float(hits.mean()), "n": int(len(hits))}
    return result


def _lr_lambda(total_steps: int, warmup_steps: int):
    # Linear warm-up, then linear decay to zero over the planned steps.
    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return schedule


def train_model(settings: TrainSettings, split: Split, vocab: Vocabulary, *,
                progress: bool = True) -> Tuple[SvaTransformer, dict]:
    """AdamW training; returns the model and a log (per-epoch loss/accuracy, time)."""
    seed_everything(settings.seed)
    max_positions = 1 + settings.end_token + max(len(ex.tokens) for part in (split.train, split.validation,
                                                                              split.test) for ex in part)
    model = build_model(settings, vocab, max_positions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    steps_per_epoch = -(-len(split.train) // settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, max(1, int(settings.warmup_fraction * total_steps))))
    rng = random.Random(settings.seed)
    log: Dict[str, Any] = {"epochs": [], "stopped_early": False}
    start = time.perf_counter()
    for epoch in range(settings.epochs):
        model.train()
        losses = []
        batches = length_bucketed_batches(split.train, settings.batch_size, rng=rng)
        for examples in tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}",
                             disable=not progress, mininterval=5):
            batch = collate(examples, vocab, end_token=settings.end_token)
            logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
            loss = F.cross_entropy(logits, batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if settings.time_budget_s is not None and time.perf_counter() - start > settings.time_budget_s:
                log["stopped_early"] = True
                break
        validation = accuracy_by_group(model, split.validation, vocab, settings.end_token)
        log["epochs"].append({"epoch": epoch + 1, "steps": len(losses),
                              "train_loss": float(np.mean(losses)),
                              "validation_accuracy": validation["all"]["accuracy"],
                              "elapsed_s": time.perf_counter() - start})
        if progress:
            tqdm.write(json.dumps(log["epochs"][-1]))
        if log["stopped_early"]:
            break
    log["train_time_s"] = time.perf_counter() - start
    model.eval()
    return model, log


def save_checkpoint(path: Path, model: SvaTransformer, vocab: Vocabulary,
                    settings: TrainSettings, log: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "config": model.config.to_dict(),
                "vocab": vocab.itos, "settings": asdict(settings), "log": log}, path)


def load_checkpoint(path: Path):
    """``(model, vocab, settings, log)`` from :func:`save_checkpoint`'s file."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    model = SvaTransformer(SvaConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    vocab = Vocabulary.from_itos(payload["vocab"])
    return model, vocab, TrainSettings(**payload["settings"]), payload["log"]


def run_training(settings: TrainSettings, out_dir: Path, *, data_dir: Optional[Path] = None,
                 progress: bool = True) -> dict:
    """Prepare data, train, save ``out_dir/checkpoint.pt``; returns the training log."""
    torch.set_num_threads(settings.threads)
    split, vocab = prepare_data(settings, data_dir)
    model, log = train_model(settings, split, vocab, progress=progress)
    log["vocab_size"] = len(vocab)
    log["split"] = split.sizes_by_group()
    save_checkpoint(Path(out_dir) / CHECKPOINT_NAME, model, vocab, settings, log)
    return log
