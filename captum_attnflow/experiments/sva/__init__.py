"""Subject–verb agreement experiment: reproduce Tables 1–2 of Abnar & Zuidema (2020).

Run ``python -m captum_attnflow.experiments.sva all`` (or ``train`` / ``evaluate``;
``--quick`` for a seconds-long smoke run).
"""

from captum_attnflow.experiments.sva.data import Example, Split, Vocabulary, load_examples, split_examples
from captum_attnflow.experiments.sva.model import SelfAttention, SvaConfig, SvaTransformer

__all__ = [
    "Example",
    "SelfAttention",
    "Split",
    "SvaConfig",
    "SvaTransformer",
    "Vocabulary",
    "load_examples",
    "split_examples",
]
