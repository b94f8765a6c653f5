"""Subject–verb agreement experiment: reproduce Tables 1–2 of Abnar & Zuidema (2020).

Run ``python -m captum_attnflow.experiments.sva all`` (or ``train`` / ``evaluate`` / ``report``;
``--protocol authors|library|both``, ``--seeds``, ``--quick`` for a seconds-long smoke run).
The protocols are documented factor by factor in :mod:`~captum_attnflow.experiments.sva.protocol`.
"""

from captum_attnflow.experiments.sva.data import Example, Split, Vocabulary, load_examples, split_examples
from captum_attnflow.experiments.sva.model import SelfAttention, SvaConfig, SvaTransformer
from captum_attnflow.experiments.sva.protocol import FACTORS, PROTOCOLS, EvaluationChoices, ModelChoices, Protocol

__all__ = [
    "FACTORS",
    "PROTOCOLS",
    "EvaluationChoices",
    "Example",
    "ModelChoices",
    "Protocol",
    "SelfAttention",
    "Split",
    "SvaConfig",
    "SvaTransformer",
    "Vocabulary",
    "load_examples",
    "split_examples",
]
