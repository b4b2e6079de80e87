"""Static hyperparameters of a [`jacdc.models.Transformer`][]."""

import dataclasses
import math
from collections.abc import Mapping
from typing import Literal

import numpy as np

from jacdc._graph import GraphShape


ACT_FNS = ("gelu_new", "gelu", "relu", "silu", "gelu_pytorch_tanh")
POSITIONAL = ("standard", "shortformer", "separate", "rotary", "none")
NORMALIZATION = ("LN", "RMS", "none")
WEIGHT_DTYPES = ("float32", "bfloat16", "float16")
ROPE_TYPES = ("default", "linear", "llama3")
_ROPE_KEYS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}
# Keys of Hugging Face's `rope_scaling` dict that carry no maths for the supported types.
_ROPE_IGNORED = ("rope_type", "type", "rope_theta")


def rope_scaling_key(rope_scaling) -> tuple[tuple[str, object], ...] | None:
    """The hashable form of a Hugging Face `rope_scaling` dict: sorted `(key, value)` pairs, with
    `"type"` renamed `"rope_type"`, lists made tuples; `None` (or `{"rope_type": "default"}`)
    gives `None`. Raises `ValueError` for a scaling type that is not implemented."""
    if rope_scaling is None:
        return None
    items = dict(rope_scaling)
    if "type" in items and "rope_type" not in items:
        items["rope_type"] = items.pop("type")
    items.pop("type", None)
    kind = items.get("rope_type", "default")
    if kind not in ROPE_TYPES:
        raise ValueError(
            f"rope_scaling type {kind!r} is not implemented; supported: {ROPE_TYPES}. "
            "Running it as another type would silently give a different model."
        )
    missing = [k for k in _ROPE_KEYS[kind] if k not in items]
    if missing:
        raise ValueError(f"rope_scaling of type {kind!r} needs the keys {missing}, got {items}.")
    if kind == "default" and set(items) <= {"rope_type", "rope_theta"}:
        return None
    freeze = lambda v: tuple(v) if isinstance(v, list) else v
    return tuple(sorted((str(k), freeze(v)) for k, v in items.items()))


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Static hyperparameters. Frozen and hashable, so safe as a static field. The defaults are
    GPT-2's; every family feature is off unless set (see `docs/families.md`).

    **Arguments:**

    - `n_layers`, `n_heads`, `d_model`, `d_head`: the usual sizes (`n_heads` query heads).
    - `d_mlp`: MLP hidden width, or `None` for attention-only models.
    - `d_vocab`: input vocabulary size; `d_vocab_out`: output vocabulary size (defaults to
        `d_vocab`; differs for tracr models).
    - `n_ctx`: the longest sequence the model accepts (the learned position table's length).
    - `act_fn`: `"gelu_new"` / `"gelu_pytorch_tanh"` (the tanh approximation; the same function),
        `"gelu"` (exact), `"relu"` or `"silu"`.
    - `normalization`: `"LN"` (LayerNorm with bias before each block and before the
        unembedding), `"RMS"` (RMSNorm `x * rsqrt(mean(x^2) + eps) * w`, no bias; Gemma's
        `(1 + w)` form is stored as `w' = 1 + w` by the loader) or `"none"` (tracr).
    - `positional`: `"standard"` (learned positions added to the embedding: one embedding node),
        `"shortformer"` (positions added to q and k inputs only, after LayerNorm, and outside the
        graph: one embedding node), `"separate"` (tracr: token and position embeddings are two
        separate source nodes), `"rotary"` (rotary embeddings on q and k; no position table) or
        `"none"` (no positional information; no position table).
    - `causal`: causal attention or bidirectional (tracr's default).
    - `ln_eps`: LayerNorm / RMSNorm epsilon.
    - `attn_scale`: attention logits are divided by this; `None` means `sqrt(d_head)` (Gemma-2:
        `sqrt(query_pre_attn_scalar)`).
    - `n_kv_heads`: key/value heads (grouped-query attention; `1`: multi-query); `None` means
        `n_heads`. Query head `h` uses key/value head `h // (n_heads // n_kv_heads)`.
    - `rotary_dim`: dimensions rotated per head (the first `rotary_dim` of `d_head`, Hugging
        Face's `rotate_half` pairing `(i, i + rotary_dim / 2)`); `None` means `d_head`.
    - `rope_theta`: the rotary base.
    - `rope_scaling`: Hugging Face's `rope_scaling` dict (stored hashable, see
        [`rope_scaling_key`][]); types `"default"`, `"linear"`, `"llama3"`.
    - `gated_mlp`: `act(x W_gate + b_gate) * (x W_in + b_in)` then `W_out` (SwiGLU, GeGLU).
    - `parallel_attn_mlp`: attention and MLP read the same residual stream (GPT-NeoX
        `use_parallel_residual`); in the graph a layer's MLP does not read that layer's heads.
    - `post_norms`: Gemma-2's post-attention norm (on the sum of the layer's heads) and
        post-MLP norm (folded into the MLP node's output).
    - `embed_scale`: the token embedding is multiplied by this (Gemma-2: `sqrt(d_model)`), inside
        the embedding node; `None` means 1.
    - `attn_softcap`, `final_softcap`: `cap * tanh(x / cap)` on the attention logits (after the
        scale, before the causal mask) and on the output logits; `None` = off.
    - `sliding_window`: per layer, the attention window (query `i` sees key `j` iff
        `i - window < j <= i`) or `None` for global attention; an int applies to every layer;
        `None` = every layer global.
    - `weight_dtype`: storage dtype of the weights (`"float32"`, `"bfloat16"`, `"float16"`);
        activations and accumulation stay float32.
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
    act_fn: Literal["gelu_new", "gelu", "relu", "silu", "gelu_pytorch_tanh"] = "gelu_new"
    normalization: Literal["LN", "RMS", "none"] = "LN"
    positional: Literal["standard", "shortformer", "separate", "rotary", "none"] = "standard"
    causal: bool = True
    ln_eps: float = 1e-5
    attn_scale: float | None = None
    n_kv_heads: int | None = None
    rotary_dim: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: tuple | Mapping | None = None
    gated_mlp: bool = False
    parallel_attn_mlp: bool = False
    post_norms: bool = False
    embed_scale: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    sliding_window: tuple[int | None, ...] | list | int | None = None
    weight_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
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
        if self.normalization not in NORMALIZATION:
            problems.append(
                f"normalization must be one of {NORMALIZATION}, got {self.normalization!r}"
            )
        if self.positional not in POSITIONAL:
            problems.append(f"positional must be one of {POSITIONAL}, got {self.positional!r}")
        if self.weight_dtype not in WEIGHT_DTYPES:
            problems.append(
                f"weight_dtype must be one of {WEIGHT_DTYPES}, got {self.weight_dtype!r}"
            )
        kv = self.n_kv_heads
        if kv is not None:
            if not isinstance(kv, int) or kv < 1:
                problems.append(f"n_kv_heads must be a positive int or None, got {kv!r}")
            elif isinstance(self.n_heads, int) and self.n_heads % kv:
                problems.append(
                    f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({kv}): each "
                    "key/value head serves n_heads // n_kv_heads query heads"
                )
        if self.rotary_dim is not None:
            r = self.rotary_dim
            if self.positional != "rotary":
                problems.append(f"rotary_dim={r} given, but positional={self.positional!r}")
            elif not isinstance(r, int) or r < 2 or r % 2 or r > self.d_head:
                problems.append(
                    f"rotary_dim must be an even int in [2, d_head={self.d_head}], got {r!r}"
                )
        if self.rope_scaling is not None:
            if self.positional != "rotary":
                problems.append(f"rope_scaling given, but positional={self.positional!r}")
            raw = self.rope_scaling
            theta = dict(raw).get("rope_theta") if isinstance(raw, (dict, tuple)) else None
            if theta is not None and float(theta) != float(self.rope_theta):
                problems.append(
                    f"rope_scaling holds rope_theta={theta}, but rope_theta={self.rope_theta}: "
                    "set rope_theta to the checkpoint's value"
                )
            try:
                key = rope_scaling_key(dict(raw))
            except (TypeError, ValueError) as err:
                problems.append(str(err).rstrip("."))
            else:
                object.__setattr__(self, "rope_scaling", key)
        if self.positional == "rotary" and not self.rope_theta > 0:
            problems.append(f"rope_theta must be positive, got {self.rope_theta!r}")
        if self.gated_mlp and self.d_mlp is None:
            problems.append("gated_mlp=True needs an MLP (d_mlp is None)")
        if self.parallel_attn_mlp and self.d_mlp is None:
            problems.append("parallel_attn_mlp=True needs an MLP (d_mlp is None)")
        if self.post_norms and self.normalization == "none":
            problems.append("post_norms=True needs normalization 'LN' or 'RMS', got 'none'")
        for name in ("attn_softcap", "final_softcap", "embed_scale"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                problems.append(f"{name} must be positive or None, got {value!r}")
        window = self.sliding_window
        if isinstance(window, (int, np.integer)) and not isinstance(window, bool):
            window = (int(window),) * self.n_layers if isinstance(self.n_layers, int) else ()
        if window is not None:
            window = tuple(window)
            if len(window) != self.n_layers:
                problems.append(
                    f"sliding_window must have one entry per layer ({self.n_layers}), got "
                    f"{len(window)}"
                )
            bad = [w for w in window if w is not None and (not isinstance(w, int) or w < 1)]
            if bad:
                problems.append(f"sliding_window entries must be positive ints or None, got {bad}")
            if not any(w is not None for w in window):
                window = None
            elif not self.causal:
                problems.append("sliding_window needs causal=True")
            object.__setattr__(self, "sliding_window", window)
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
    def kv_heads(self) -> int:
        """Key/value heads (`n_heads` unless grouped-query attention)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def rot_dim(self) -> int:
        """Dimensions per head that rotary embeddings rotate (0 without rotary)."""
        if self.positional != "rotary":
            return 0
        return self.d_head if self.rotary_dim is None else self.rotary_dim

    @property
    def has_pos_table(self) -> bool:
        """Whether the model has a learned position table `w_pos`."""
        return self.positional in ("standard", "shortformer", "separate")

    def windows(self) -> tuple[int | None, ...]:
        """The attention window of each layer (`None`: global)."""
        if self.sliding_window is None:
            return (None,) * self.n_layers
        return self.sliding_window

    def inv_freq(self) -> np.ndarray:
        """Rotary inverse frequencies `(rot_dim // 2,)` (float64), with `rope_scaling` applied
        as Hugging Face's `default`, `linear` and `llama3` rope types do."""
        r = self.rot_dim
        inv = 1.0 / self.rope_theta ** (np.arange(0, r, 2, dtype=np.float64) / r)
        scaling = dict(self.rope_scaling or ())
        kind = scaling.get("rope_type", "default")
        if kind == "linear":
            inv = inv / float(scaling["factor"])
        elif kind == "llama3":
            factor = float(scaling["factor"])
            low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
            old = float(scaling["original_max_position_embeddings"])
            wavelen = 2 * math.pi / inv
            scaled = np.where(wavelen > old / low, inv / factor, inv)
            smooth = (old / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = (wavelen >= old / high) & (wavelen <= old / low)
            inv = np.where(medium, smoothed, scaled)
        return inv

    @property
    def graph_shape(self) -> GraphShape:
        return GraphShape(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            has_mlp=self.has_mlp,
            n_embed=2 if self.positional == "separate" else 1,
            parallel=self.parallel_attn_mlp,
        )


# Hugging Face `config.json` keys that are metadata or framework options (how to label, save,
# trace or run the model in `transformers`), never the maths: every loader ignores them.
HF_METADATA_KEYS = frozenset(
    {
        "_name_or_path",
        "_num_labels",
        "name_or_path",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "finetuning_task",
        "num_labels",
        "id2label",
        "label2id",
        "problem_type",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "use_return_dict",
        "torchscript",
        "gradient_checkpointing",
        "tokenizer_class",
        "prefix",
        "is_decoder",
        "chunk_size_feed_forward",
        "tf_legacy_loss",
        "use_bfloat16",
    }
)
