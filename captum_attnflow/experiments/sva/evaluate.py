"""Score tokens with raw attention, rollout and flow, and correlate with reference attributions.

Abnar & Zuidema (2020), Sec. 5, Tables 1–2: for every held-out example and every layer, the
Spearman rank correlation between the attention-based scores of the ``[CLS]`` token over the
inputs and the token importance given by blank-out (Table 1) or input gradients (Table 2).
We add integrated gradients as a third reference.
"""

import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from captum.attr import FeatureAblation, LayerIntegratedGradients, Saliency
from tqdm.auto import tqdm

from captum_attnflow.evaluation import per_example_spearman
from captum_attnflow.experiments.sva.data import Example, Vocabulary, collate
from captum_attnflow.experiments.sva.model import SvaTransformer
from captum_attnflow.experiments.sva.train import (
    CHECKPOINT_NAME,
    accuracy_by_group,
    load_checkpoint,
    prepare_data,
)
from captum_attnflow.functional import FLOW_BACKENDS, attention_flow, attention_rollout, fuse_heads

METHODS = ("raw", "rollout", "flow")
REFERENCES = ("blank_out", "input_gradients", "integrated_gradients")
IG_STEPS = 32


class ProbabilityModel(torch.nn.Module):
    """Wraps :class:`SvaTransformer` to return class probabilities (what Captum explains)."""

    def __init__(self, model: SvaTransformer):
        super().__init__()
        self.model = model

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        logits = self.model(input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds)
        return logits.softmax(dim=-1)


def attention_scores(attentions: Sequence[torch.Tensor],
                     attention_mask: torch.Tensor) -> Dict[str, torch.Tensor]:
    """``{"raw", "rollout": (L, B, S)}``: the ``[CLS]`` row over the inputs after each layer."""
    return {
        "raw": torch.stack([fuse_heads(layer)[:, 0] for layer in attentions]),
        "rollout": attention_rollout(attentions, attention_mask=attention_mask)[:, :, 0],
    }


def flow_scores(attentions: Sequence[torch.Tensor], attention_mask: torch.Tensor,
                backend: str = "auto") -> torch.Tensor:
    """``(L, B, S)`` attention flow from ``[CLS]`` after each layer to the inputs."""
    # allow_large: the batch size here already bounds each call; we want every example.
    return torch.stack([
        attention_flow(attentions, output_positions=0, layer=layer, attention_mask=attention_mask,
                       backend=backend, allow_large=True)
        for layer in range(len(attentions))])


def reference_scores(model: SvaTransformer, batch: Dict[str, torch.Tensor],
                     vocab: Vocabulary) -> Dict[str, torch.Tensor]:
    """``{reference: (B, S)}`` token importance for the probability of the correct class."""
    wrapped = ProbabilityModel(model)
    input_ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    seq_len = input_ids.shape[1]

    # Blank-out: every position is its own feature (Captum's default mask for a tensor input),
    # replaced by [UNK]; |p(correct) before − after|.
    ablation = FeatureAblation(lambda ids, m: wrapped(ids, attention_mask=m))
    blank_out = ablation.attribute(input_ids, baselines=vocab.unk_id, target=labels,
                                   additional_forward_args=(mask,), perturbations_per_eval=seq_len).abs()

    # Input gradients: L2 norm over the hidden dim of d p(correct) / d token embedding.
    embeddings = model.get_input_embeddings()(input_ids).detach().requires_grad_()
    saliency = Saliency(lambda emb, m: wrapped(attention_mask=m, inputs_embeds=emb))
    gradients = saliency.attribute(embeddings, target=labels, additional_forward_args=(mask,),
                                   abs=False).norm(dim=-1)

    # Integrated gradients on the embedding layer from an all-[UNK] input (same [CLS] and
    # padding), summed over the hidden dim, absolute value.
    baseline_ids = torch.where((mask.bool()) & (input_ids != vocab.cls_id),
                               torch.full_like(input_ids, vocab.unk_id), input_ids)
    integrated = LayerIntegratedGradients(lambda ids, m: wrapped(ids, attention_mask=m),
                                          model.get_input_embeddings())
    ig = integrated.attribute(input_ids, baselines=baseline_ids, target=labels,
                              additional_forward_args=(mask,), n_steps=IG_STEPS,
                              internal_batch_size=IG_STEPS * input_ids.shape[0])
    return {"blank_out": blank_out.detach(), "input_gradients": gradients.detach(),
            "integrated_gradients": ig.sum(dim=-1).abs().detach()}


def correlate_batch(method_scores: Dict[str, torch.Tensor], references: Dict[str, torch.Tensor],
                    token_mask: np.ndarray) -> Dict[tuple, np.ndarray]:
    """``{(reference, method, layer): (B,) correlations}`` with layers numbered from 1."""
    result = {}
    for reference, ref_values in references.items():
        for method, values in method_scores.items():
            for layer in range(values.shape[0]):
                result[(reference, method, layer + 1)] = per_example_spearman(
                    values[layer], ref_values, torch.from_numpy(token_mask))
    return result


def _length_sorted_batches(examples: Sequence[Example], batch_size: int) -> List[List[int]]:
    # Batching examples of similar length avoids computing on padding (most cost here).
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].tokens))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def _token_masks(attention_mask: torch.Tensor) -> Dict[str, np.ndarray]:
    real = attention_mask.bool().numpy()
    inputs_only = real.copy()
    inputs_only[:, 0] = False  # the variant: input tokens only, [CLS] not ranked
    return {"without_cls": inputs_only, "with_cls": real}


def evaluate_examples(model: SvaTransformer, vocab: Vocabulary, examples: Sequence[Example], *,
                      n_flow: Optional[int] = None, batch_size: int = 32, flow_backend: str = "auto",
                      progress: bool = True) -> dict:
    """Per-example correlations (over input tokens without and with ``[CLS]``) and timings.

    Flow runs on the first ``n_flow`` examples only (all when None), since it is the slow part.
    Correlations are returned in length-sorted order (flow's only for its examples).
    """
    n_flow = len(examples) if n_flow is None else min(n_flow, len(examples))
    stores: Dict[str, Dict[tuple, List[np.ndarray]]] = {"without_cls": {}, "with_cls": {}}
    timings = {"attention": 0.0, "flow": 0.0, "references": 0.0}
    for indices in tqdm(_length_sorted_batches(examples, batch_size), desc="evaluate",
                        disable=not progress, mininterval=5):
        batch = collate([examples[i] for i in indices], vocab)
        mask = batch["attention_mask"]
        tick = time.perf_counter()
        with torch.no_grad():
            _, attentions = model(batch["input_ids"], attention_mask=mask, output_attentions=True)
        scores = attention_scores(attentions, mask)
        timings["attention"] += time.perf_counter() - tick
        flow_rows = torch.tensor([row for row, i in enumerate(indices) if i < n_flow], dtype=torch.long)
        if len(flow_rows):
            tick = time.perf_counter()
            flow = flow_scores([layer[flow_rows] for layer in attentions], mask[flow_rows], flow_backend)
            timings["flow"] += time.perf_counter() - tick
        tick = time.perf_counter()
        references = reference_scores(model, batch, vocab)
        timings["references"] += time.perf_counter() - tick

        for variant, token_mask in _token_masks(mask).items():
            for key, values in correlate_batch(scores, references, token_mask).items():
                stores[variant].setdefault(key, []).append(values)
            if len(flow_rows):
                flow_refs = {name: ref[flow_rows] for name, ref in references.items()}
                for key, values in correlate_batch({"flow": flow}, flow_refs,
                                                   token_mask[flow_rows.numpy()]).items():
                    stores[variant].setdefault(key, []).append(values)
    result = {variant: {key: np.concatenate(values) for key, values in store.items()}
              for variant, store in stores.items()}
    return {**result, "timings": timings, "n_examples": len(examples), "n_flow": n_flow}


def summarize(correlations: Dict[tuple, np.ndarray]) -> List[dict]:
    """Rows ``reference, method, layer, mean, std, n`` (NaN correlations left out)."""
    rows = []
    for reference in REFERENCES:
        for method in METHODS:
            layers = sorted(layer for ref, meth, layer in correlations if (ref, meth) == (reference, method))
            for layer in layers:
                values = correlations[(reference, method, layer)]
                values = values[~np.isnan(values)]
                rows.append({"reference": reference, "method": method, "layer": layer,
                             "mean": float(values.mean()) if values.size else float("nan"),
                             "std": float(values.std()) if values.size else float("nan"),
                             "n": int(values.size)})
    return rows


def run_evaluation(out_dir: Path, results_dir: Path, *, n_eval: Optional[int] = None,
                   n_flow: Optional[int] = None, flow_backend: str = "auto", threads: int = 2,
                   progress: bool = True) -> dict:
    """Load the checkpoint, evaluate on the held-out test split, write the results files."""
    from captum_attnflow.experiments.sva.report import write_results

    torch.set_num_threads(threads)
    model, vocab, settings, train_log = load_checkpoint(Path(out_dir) / CHECKPOINT_NAME)
    split, _ = prepare_data(settings)  # same seed -> same split as in training
    test = split.test if n_eval is None else split.test[:n_eval]
    start = time.perf_counter()
    accuracy = accuracy_by_group(model, split.test, vocab)
    evaluation = evaluate_examples(model, vocab, test, n_flow=n_flow, flow_backend=flow_backend,
                                   progress=progress)
    evaluation["eval_time_s"] = time.perf_counter() - start
    # Primary: [CLS] ranked with the other tokens, the only setting in which the paper's
    # layer-1 raw and rollout values can differ (see report.py); the other is the variant.
    summary = {"rows": summarize(evaluation["with_cls"]),
               "rows_without_cls": summarize(evaluation["without_cls"]),
               "accuracy": accuracy, "train_log": train_log, "settings": settings,
               "split": split.sizes_by_group(), "evaluation": evaluation,
               "flow_backend": flow_backend, "flow_backends_available": list(FLOW_BACKENDS),
               "ig_steps": IG_STEPS}
    write_results(summary, Path(results_dir), Path(out_dir))
    return summary
