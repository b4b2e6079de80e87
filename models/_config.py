"""Static hyperparameters of a [`jacdc.models.Transformer`][]."""

import dataclasses
import math
from typing import Literal

from jacdc._graph import GraphShape


ACT_FNS = ("gelu_new", "gelu", "relu")
POSITIONAL = ("standard", "shortformer", "separate")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Static hyperparameters. Frozen and hashable, so safe as a static field.

    **Arguments:**

    - `n_layers`, `n_heads`, `d_model`, `d_head`: the usual sizes.
    - `d_mlp`: MLP hidden width, or `None` for attention-only models.
    - `d_vocab`: input vocabulary size; `d_vocab_out`: output vocabulary size (defaults to
        `d_vocab`; differs for tracr models).
    - `n_ctx`: the longest sequence the positional embedding covers.
    - `act_fn`: `"gelu_new"` (GPT-2's tanh approximation), `"gelu"` (exact) or `"relu"`.
    - `normalization`: `"LN"` (LayerNorm before each block and before the unembedding) or
        `"none"` (tracr).
    - `positional`: `"standard"` (learned positions added to the embedding: one embedding node),
        `"shortformer"` (positions added to q and k inputs only, after LayerNorm, and outside the
        graph: one embedding node), `"separate"` (tracr: token and position embeddings are two
        separate source nodes).
    - `causal`: causal attention (GPT-2 and the attention-only models) or bidirectional (tracr's
        default).
    - `ln_eps`: LayerNorm epsilon.
    - `attn_scale`: attention logits are divided by this; `None` means `sqrt(d_head)`.
    - `fold_value_biases`: a record, not a setting of the forward pass: the weights had
        TransformerLens's value-bias folding applied (`b_V = 0`, their contribution in `b_O`;
        see `jacdc.models.fold_value_biases`), as the paper's loaders do by default.
    """

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int | None
    d_vocab: int
    n_ctx: int
    d_vocab_out: int | None = None
    act_fn: Literal["gelu_new", "gelu", "relu"] = "gelu_new"
    normalization: Literal["LN", "none"] = "LN"
    positional: Literal["standard", "shortformer", "separate"] = "standard"
    causal: bool = True
    ln_eps: float = 1e-5
    attn_scale: float | None = None
    fold_value_biases: bool = False

    def __post_init__(self):
        problems = []
        for name in ("n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive int, got {value!r}")
        if self.d_mlp is not None and (not isinstance(self.d_mlp, int) or self.d_mlp < 1):
            problems.append(f"d_mlp must be a positive int or None, got {self.d_mlp!r}")
        if self.d_vocab_out is not None and self.d_vocab_out < 1:
            problems.append(f"d_vocab_out must be positive or None, got {self.d_vocab_out!r}")
        if self.act_fn not in ACT_FNS:
            problems.append(f"act_fn must be one of {ACT_FNS}, got {self.act_fn!r}")
        if self.normalization not in ("LN", "none"):
            problems.append(f"normalization must be 'LN' or 'none', got {self.normalization!r}")
        if self.positional not in POSITIONAL:
            problems.append(f"positional must be one of {POSITIONAL}, got {self.positional!r}")
        if problems:
            raise ValueError("Invalid TransformerConfig: " + "; ".join(problems) + ".")

    @property
    def has_mlp(self) -> bool:
        return self.d_mlp is not None

    @property
    def vocab_out(self) -> int:
        return self.d_vocab if self.d_vocab_out is None else self.d_vocab_out

    @property
    def scale(self) -> float:
        return math.sqrt(self.d_head) if self.attn_scale is None else self.attn_scale

    @property
    def graph_shape(self) -> GraphShape:
        return GraphShape(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            has_mlp=self.has_mlp,
            n_embed=2 if self.positional == "separate" else 1,
        )
