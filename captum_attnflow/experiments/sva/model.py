"""The paper's subject-verb agreement classifier as a plain ``torch.nn.Module``.

Abnar & Zuidema (2020), Sec. 2: a 6-layer Transformer encoder (GPT-2-style blocks) with 8
heads and hidden size 128, no causal mask, a ``[CLS]`` token at position 0 whose final
representation feeds a 2-way classifier (singular/plural verb). The dropout rates and the
initialisation scale are options because the two protocols differ there (see ``protocol.py``).
"""

import math
from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple, Union

import torch
from torch import nn


@dataclass
class SvaConfig:
    """Hyper-parameters of :class:`SvaTransformer` (defaults: the paper's model)."""

    vocab_size: int
    num_layers: int = 6
    num_heads: int = 8
    hidden_size: int = 128
    max_positions: int = 64
    num_labels: int = 2
    embedding_dropout: float = 0.1
    attention_dropout: float = 0.1
    residual_dropout: float = 0.1
    init_std: float = 0.02
    pad_id: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention returning ``(output, weights)``.

    ``weights`` are the post-softmax per-head attention probabilities ``(B, H, S, S)``,
    the quantity that rollout and flow propagate.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}.")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        batch_size, seq_len, hidden_size = hidden.shape
        qkv = self.qkv(hidden).view(batch_size, seq_len, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, S, D)
        scores = query @ key.transpose(-1, -2) / math.sqrt(self.head_dim)
        if key_padding_mask is not None:
            # No causal mask (the paper's choice); only padded keys are hidden.
            scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
        weights = scores.softmax(dim=-1)
        context = (self.dropout(weights) @ value).transpose(1, 2).reshape(batch_size, seq_len, hidden_size)
        return self.proj(context), weights


class Block(nn.Module):
    """GPT-2-style pre-LayerNorm block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``."""

    def __init__(self, config: SvaConfig):
        super().__init__()
        hidden = config.hidden_size
        self.ln_attention = nn.LayerNorm(hidden)
        self.attention = SelfAttention(hidden, config.num_heads, config.attention_dropout)
        self.ln_mlp = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden),
                                 nn.Dropout(config.residual_dropout))
        self.dropout = nn.Dropout(config.residual_dropout)

    def forward(self, hidden: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        attended, weights = self.attention(self.ln_attention(hidden), key_padding_mask)
        hidden = hidden + self.dropout(attended)
        hidden = hidden + self.mlp(self.ln_mlp(hidden))
        return hidden, weights


class Embeddings(nn.Module):
    """Token plus learned position embeddings: the "input" of the authors' gradient × input."""

    def __init__(self, config: SvaConfig):
        super().__init__()
        self.token = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_id)
        self.position = nn.Embedding(config.max_positions, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.token(input_ids) + self.position(positions)[None]


class SvaTransformer(nn.Module):
    """Encoder classifier over ``[CLS] w_1 ... w_n`` (optionally ``[EOS]``); logits from ``[CLS]``.

    ``forward(input_ids, attention_mask=None, output_attentions=False)`` returns
    ``(B, num_labels)`` logits, or ``(logits, attentions)`` with ``attentions`` a list of L
    tensors ``(B, H, S, S)`` when ``output_attentions=True``. Gradient methods attribute to
    ``model.embeddings`` (token + position) or ``get_input_embeddings()`` (token only).
    """

    def __init__(self, config: SvaConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.dropout = nn.Dropout(config.embedding_dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.ln_final = nn.LayerNorm(config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.apply(self._init_weights)
        with torch.no_grad():  # keep [PAD]'s embedding at zero, as padding_idx intends
            self.embeddings.token.weight[config.pad_id].zero_()

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2 initialisation: N(0, init_std) weights, zero biases.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding layer (for Captum's layer attribution methods)."""
        return self.embeddings.token

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                output_attentions: bool = False) -> Union[torch.Tensor, Tuple[torch.Tensor, List[torch.Tensor]]]:
        hidden = self.dropout(self.embeddings(input_ids))
        key_padding_mask = None if attention_mask is None else attention_mask.bool()
        attentions = []
        for block in self.blocks:
            hidden, weights = block(hidden, key_padding_mask)
            attentions.append(weights)
        logits = self.classifier(self.ln_final(hidden[:, 0]))
        return (logits, attentions) if output_attentions else logits
