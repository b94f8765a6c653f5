"""The two evaluation protocols of the SVA experiment, factor by factor, with their sources.

``library`` is this project's protocol (textbook Spearman, L2 saliency, every test group).
``authors`` follows Abnar & Zuidema's own code for Tables 1–2, read in their ``Reflect``
repository. Sources are cited as ``file:line`` (repository ``samiraabnar/Reflect``, commit
962f87e unless stated) or as ``notebook cell:line`` of ``notebooks/attention_flow.ipynb`` at
commit **d28ddd5** (2020-04-24), the version whose logged output ``notebooks/vp_flow_results``
(same commit) reproduces the paper's tables (see :data:`AUTHORS_LOG`). That notebook was
deleted from the repository on 2020-05-31 (commit c72aae0); ``git show d28ddd5:notebooks/
attention_flow.ipynb`` shows it.

Evaluation factors can be switched one at a time on a trained model (the ablation);
model factors need their own training run.
"""

from dataclasses import dataclass, field, fields, replace
from typing import Dict, List, Tuple

METHODS = ("raw", "rollout", "flow")
REFERENCES = ("blank_out", "input_gradients")
#: ``with_cls``: ``[CLS]`` is ranked with the other tokens; ``without_cls``: it is not.
CLS_VARIANTS = ("with_cls", "without_cls")
REFERENCE_TITLES = {"blank_out": "Table 1: vs blank-out", "input_gradients": "Table 2: vs input gradients"}

#: Abnar & Zuidema (2020), Table 1 (vs blank-out) and Table 2 (vs input gradients): mean
#: Spearman correlation after layers 1–6.
PAPER = {
    "blank_out": {"raw": (.69, .10, -.11, -.09, .20, .29), "rollout": (.32, .38, .51, .62, .70, .71),
                  "flow": (.32, .44, .70, .70, .71, .70)},
    "input_gradients": {"raw": (.53, .16, -.06, .00, .24, .46), "rollout": (.22, .27, .39, .47, .53, .54),
                        "flow": (.22, .31, .54, .61, .60, .61)},
}

#: The authors' logged run (``notebooks/vp_flow_results`` at d28ddd5: 100 validation examples,
#: checkpoint ``af_std5``). Cell 10 creates its lists once (cell 10:2-12), before the loop over
#: layers, so each value it prints is the running mean over layers 1..l (the notebook saved at
#: d28ddd5 loops over the last layer only; the log, like the cell at cfb039e, covers all six).
#: These are the printed values, layers 1–6.
AUTHORS_LOG_RUNNING_MEANS = {
    "blank_out": {"raw": (.7410, .4321, .2489, .1681, .1765, .1954),
                  "rollout": (.3253, .3583, .4158, .4724, .5240, .5631),
                  "flow": (.3253, .3945, .5162, .5760, .6113, .6353)},
    "input_gradients": {"raw": (.5230, .3458, .2054, .1585, .1776, .2252),
                        "rollout": (.2201, .2454, .2915, .3378, .3764, .4038),
                        "flow": (.2201, .2649, .3558, .4196, .4572, .4827)},
}


def per_layer_from_running_means(running: Tuple[float, ...]) -> Tuple[float, ...]:
    """Undo a running mean: ``x_l = l·m_l − (l−1)·m_{l−1}``.

    Example:
        >>> [round(v, 6) for v in per_layer_from_running_means((0.5, 0.25, 0.5))]
        [0.5, 0.0, 1.0]
    """
    return tuple(running[0] if l == 0 else (l + 1) * running[l] - l * running[l - 1] for l in range(len(running)))  # noqa: E741 (l = layer, as in the paper)


#: The authors' per-layer values recovered from their log (compare with :data:`PAPER`).
AUTHORS_LOG = {reference: {method: per_layer_from_running_means(values) for method, values in methods.items()}
               for reference, methods in AUTHORS_LOG_RUNNING_MEANS.items()}


@dataclass(frozen=True)
class ModelChoices:
    """Choices fixed at training time."""

    end_token: bool = False
    embedding_dropout: float = 0.1
    attention_dropout: float = 0.1
    residual_dropout: float = 0.1
    init_std: float = 0.02


@dataclass(frozen=True)
class EvaluationChoices:
    """Choices made when correlating attention scores with a reference on a trained model."""

    examples: str = "all"  # "all" held-out groups (stratified) | "natural" (numpred.val only)
    rank_end_token: bool = False  # rank the end token (models trained with one); its blank-out is 0
    blank_out_id: str = "unk"  # replacement: "unk" | "pad"
    blank_out_class: str = "gold"  # "gold" | "predicted"
    gradient_reducer: str = "l2"  # "l2" | "sum_abs" | "grad_x_input"
    ranks: str = "average"  # "average" | "dense"
    formula: str = "pearson"  # "pearson" | "difference"
    undefined: str = "exclude"  # "exclude" | "zero"
    relevance: str = "cls"  # "cls" row | "max" | "mean" over output positions


@dataclass(frozen=True)
class Protocol:
    name: str
    model: ModelChoices
    evaluation: EvaluationChoices


@dataclass(frozen=True)
class Factor:
    """One protocol choice: its values, what it means and where the authors' value comes from."""

    name: str
    stage: str  # "model" or "evaluation"
    values: Tuple  # every value the experiment can run
    library: object
    authors: object
    meaning: str
    source: str
    notes: str = field(default="")
    run: bool = True  # False: not switched in the ablation (see notes)


PROTOCOLS: Dict[str, Protocol] = {
    "library": Protocol("library", ModelChoices(), EvaluationChoices()),
    "authors": Protocol(
        "authors",
        ModelChoices(end_token=True, embedding_dropout=0.2, attention_dropout=0.6, residual_dropout=0.4,
                     init_std=0.05),
        EvaluationChoices(examples="natural", rank_end_token=True, blank_out_id="unk", blank_out_class="gold",
                          gradient_reducer="sum_abs", ranks="dense", formula="difference", undefined="zero",
                          relevance="cls")),
}

D28 = "attention_flow.ipynb@d28ddd5"
FACTORS: List[Factor] = [
    Factor("end_token", "model", (False, True), False, True,
           "an end-of-sentence token after the prefix (input `[CLS] w1 … wn [EOS]`)",
           "tasks/sv_agreement.py:84-97 (the verb position becomes `<eos>`); "
           f"{D28} cell 3:13-17 (`[CLS]` prepended)"),
    Factor("dropout", "model", ((0.1, 0.1, 0.1), (0.2, 0.6, 0.4)), (0.1, 0.1, 0.1), (0.2, 0.6, 0.4),
           "dropout on embeddings / attention probabilities / residual branches",
           "util/model_configs.py:220-226 (`small_gpt_v9`: embd .2, attn .6, resid .4)"),
    Factor("init_std", "model", (0.02, 0.05), 0.02, 0.05, "std of the normal weight initialisation",
           "util/model_configs.py:225 (`initializer_range` .05)"),
    Factor("examples", "evaluation", ("all", "natural"), "all", "natural",
           "evaluated examples: all held-out groups (attractor-heavy, stratified) or the natural "
           "distribution only (held-out `numpred.val` prefixes)",
           f"{D28} cell 3:9-11 (first 100 of `valid_dataset`, batch size 1); tfds_data/tal_agreement.py:78-91 "
           "(validation = 1 % of the shuffled corpus, natural distribution)",
           "the authors evaluated 100 examples; we use every held-out one of the chosen groups"),
    Factor("rank_end_token", "evaluation", (False, True), False, True,
           "the end token is ranked with the other tokens, its blank-out score set to 0",
           f"{D28} cell 3:69-70 (`tf.eye(max_len)[:-1]`: the last position is never blanked); "
           "cell 7:27 (`+ [0]`: its score is 0); cell 5:16, 24, 55 (scores of every position)"),
    Factor("blank_out_id", "evaluation", ("unk", "pad"), "unk", "unk",
           "the id a blanked token is replaced by",
           f"{D28} cell 3:69 (`encode(constants.unk)`); a later version (commit cfb039e, cell 15) "
           "uses id 0, the padding id"),
    Factor("blank_out_class", "evaluation", ("gold", "predicted"), "gold", "gold",
           "the class whose probability change blank-out measures",
           f"{D28} cell 3:46, 82 (`main_probs[:, y[0]]`, the gold class); cfb039e cell 15 uses the predicted one",
           "with two classes p₀ + p₁ = 1, so |Δp_gold| = |Δp_predicted| exactly: not switched in the ablation",
           run=False),
    Factor("gradient_reducer", "evaluation", ("l2", "sum_abs", "grad_x_input"), "l2", "sum_abs",
           "input gradients per token: ‖g‖₂, |Σ_d g_d| or |Σ_d g_d·e_d| (e = token + position embedding)",
           f"{D28} cell 3:30-33 (g of p₀ − p₁; `abs(reduce_sum(grads))`); the authors' `inputgrad` "
           "(cell 3:34) is gradient × input; tf2_models/transformers.py:217 (e = token + position embeddings)",
           "the gradient of p₀ − p₁ is 2·∂p₀ = −2·∂p₁, so any target class gives the same ranks"),
    Factor("ranks", "evaluation", ("average", "dense"), "average", "dense", "how tied scores are ranked",
           f"{D28} cell 5:6-7 (pandas `rank(method='dense')`)"),
    Factor("formula", "evaluation", ("pearson", "difference"), "pearson", "difference",
           "Spearman as the Pearson correlation of ranks, or 1 − 6Σd²/(n(n²−1)) (exact only without ties)",
           f"{D28} cell 5:8-11"),
    Factor("undefined", "evaluation", ("exclude", "zero"), "exclude", "zero",
           "an undefined correlation (constant scores) is left out of the mean, or counted as 0",
           f"{D28} cell 10:20-23 and the same pattern for every cell"),
    Factor("relevance", "evaluation", ("cls", "max", "mean"), "cls", "cls",
           "relevance of an input: the `[CLS]` row, or the max / mean over all output positions",
           f"{D28} cell 5:16, 24, 55 (the `[CLS]` row); the max is the authors' SST-2 choice "
           "(samiraabnar/attention_flow, compute_corel_distilbert_sst.py:49, 95, 103)"),
]
FACTORS_BY_NAME = {factor.name: factor for factor in FACTORS}

#: Mean and std are printed over examples (np.mean, np.std) in the authors' cell 10; raw attention
#: is the head *sum* renormalised (cell 5:16), the same ranking as our head mean; rollout and
#: flow add the identity and renormalise (cell 5:22-33), our residual weight 0.5.
NOT_REPLICATED = (
    ("training data", "10 % of Linzen et al.'s `agr_50_mostcommon_10K.tsv.gz`, shuffled with seed 42 "
     "(tfds_data/tal_agreement.py:75-91)", "not reachable from this machine (checked 2026-11-28: DNS "
     "fails for tallinzen.net and github.com); we train on our split of the bundled `numpred.*` files"),
    ("training signal", "online distillation from an LSTM teacher (checkpoint name in "
     f"{D28} cell 2: `online_dstl_6_crs_slw_teacher_cl_lstm…_student_cl_bert…`)",
     "we train on the gold labels with cross-entropy"),
    ("padding mask", "a 0/1 mask *added* to the attention logits of real query rows "
     "(tf2_models/transformers.py:219, transformer_layers.py:54-56), which changes nothing: padded "
     "keys are attended during training; evaluation runs one example at a time, so without padding",
     "a key-padding mask; at batch size 1 the two models compute the same thing"),
    ("optimiser", "their trainer's schedule and an L2 penalty of 1e-4 (tf2_models/lm_transformer.py:169-170)",
     "AdamW (weight decay .01), linear warm-up and decay"),
)


def evaluation_field_names() -> Tuple[str, ...]:
    return tuple(f.name for f in fields(EvaluationChoices))


def variations(base: EvaluationChoices, *, end_token: bool) -> Dict[str, EvaluationChoices]:
    """``{"factor=value": choices}``: ``base`` with one evaluation factor set to each other value.

    ``examples`` and ``undefined`` act when correlations are averaged, not computed, so they
    are not listed here; ``rank_end_token`` only exists for models trained with an end token.
    """
    result = {}
    for factor in FACTORS:
        if factor.stage != "evaluation" or not factor.run or factor.name in ("examples", "undefined"):
            continue
        if factor.name == "rank_end_token" and not end_token:
            continue
        for value in factor.values:
            if value != getattr(base, factor.name):
                result[f"{factor.name}={value}"] = replace(base, **{factor.name: value})
    return result


def configurations(protocol: Protocol) -> Dict[str, EvaluationChoices]:
    """Every correlation configuration run on a model trained under ``protocol``.

    ``"base"`` is the protocol itself, then every single-factor variation, then
    ``"cross"``: the *other* protocol's evaluation choices on this model (the end token left
    unranked), so the two models can be compared under the same evaluation.
    """
    end_token = protocol.model.end_token
    other = PROTOCOLS["library" if protocol.name == "authors" else "authors"].evaluation
    cross = replace(other, rank_end_token=False)
    return {"base": protocol.evaluation, **variations(protocol.evaluation, end_token=end_token), "cross": cross}
