"""A transformer whose every residual read goes through an explicit edge mask.

The forward pass keeps the output of every *source* node (embeddings, each head's result, each
MLP's output) in topological order (see `jacdc._graph`). Each *receiver* (a head's q, k or v
input, an MLP input, the output) reads

    input_r = sum_s [ m[r, s] * online_s + (1 - m[r, s]) * corrupted_s ] + biases

over the sources `s` upstream of `r`, where `online_s` is the output of `s` in *this* forward pass
and `corrupted_s` comes from the `corrupted` argument. The biases are the constant attention
output biases `b_O` of the layers before `r` (they belong to no node). Each head applies its own
LayerNorm to its own patched input. A direct edge (`q_input -> q`) mixes the head's computed q
with the corrupted q the same way. So an all-ones mask is the clean model, an all-zeros mask is
the corrupted run, and zero ablation is `corrupted = Sources.zeros_like(...)` with the q/k/v
computed from the biases alone ([`jacdc.models.zero_ablation_sources`][]).

The families (rotary positions, grouped-query attention, RMSNorm, gated MLPs, parallel blocks,
Gemma-2's post-norms, soft-caps and sliding windows) are static options of the config, so both
paths below are one code path each; `docs/families.md` gives the graph and the meaning of an edge
for each. With Gemma-2's post-attention norm, the per-layer sum over a layer's heads is normalised
*per receiver* (the heads are not additive there).

For speed, the forward can start at any *stage* (stage `2l` = layer `l`'s attention, `2l + 1` =
its MLP, `2L` = the unembedding) given the online outputs of the sources before it, and can
unembed only the positions a metric reads.
"""

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from jacdc._graph import EdgeMask

from ._config import TransformerConfig


class Sources(eqx.Module):
    """Activations of every source node and every head's q/k/v, for one sequence.

    - `resid`: `(src, seq, d_model)`, what each source writes to the residual stream (a head's
        result before any post-attention norm; an MLP's output after any post-MLP norm);
    - `q`, `k`, `v`: `(layer, head, seq, d_head)`, the vectors the direct edges patch: per
        *query* head (also with grouped-query attention), q and k after rotary embeddings.
    """

    resid: Float[Array, "*batch src seq d_model"]
    q: Float[Array, "*batch layer head seq d_head"]
    k: Float[Array, "*batch layer head seq d_head"]
    v: Float[Array, "*batch layer head seq d_head"]


class SuffixPrefix(eqx.Module):
    """What [`Transformer.run_suffix`][] reads of the sources before its stage, made once per
    stage by [`Transformer.suffix_prefix`][] (for one sequence, or with leading batch axes):

    - `delta`: `clean - corrupted` of the `n0` prefix sources `(n0, seq, d_model)`: those written
        before `stage` (at stage 0 the embeddings); `None` at the output stage, where no layer
        runs;
    - `csum`: the sum of the corrupted prefix sources `(seq, d_model)` (`None` likewise);
    - `out_delta`, `out_csum`: the same at the positions the metric reads (the output receiver
        mixes only those);
    - `groups`: the corrupted outputs of each recomputed source group (a layer's heads, an MLP),
        in source order.
    """

    delta: Float[Array, "*batch n0 seq d_model"] | None
    csum: Float[Array, "*batch seq d_model"] | None
    out_delta: Float[Array, "*batch n0 p d_model"]
    out_csum: Float[Array, "*batch p d_model"]
    groups: tuple[Float[Array, "*batch _ seq d_model"], ...]


class LayerNorm(eqx.Module):
    w: Float[Array, " d_model"]
    b: Float[Array, " d_model"]
    eps: float = eqx.field(static=True)

    def __call__(self, x: Float[Array, "... d_model"]) -> Float[Array, "... d_model"]:
        x = x - x.mean(-1, keepdims=True)
        scale = jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + self.eps)
        return x * scale * self.w + self.b


class RMSNorm(eqx.Module):
    """`x * rsqrt(mean(x^2) + eps) * w` (Llama, Mistral, Qwen2; Gemma's `(1 + w)` form is
    stored as `w' = 1 + w`)."""

    w: Float[Array, " d_model"]
    eps: float = eqx.field(static=True)

    def __call__(self, x: Float[Array, "... d_model"]) -> Float[Array, "... d_model"]:
        scale = jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + self.eps)
        return x * scale * self.w


Norm = LayerNorm | RMSNorm


class Block(eqx.Module):
    """One layer's weights, in TransformerLens names and layouts.

    `w_q`: `(head, d_model, d_head)`; `w_k, w_v`: `(kv_head, d_model, d_head)` (`kv_head =
    n_kv_heads`, `n_heads` without grouped-query attention); `w_o`: `(head, d_head, d_model)`;
    `w_in`, `w_gate`: `(d_model, d_mlp)`; `w_out`: `(d_mlp, d_model)`. Absent biases are zeros.
    `ln_post_attn` / `ln_post_mlp`: Gemma-2's post-attention / post-MLP norms (else `None`).
    """

    ln1: Norm | None
    w_q: Float[Array, "head d_model d_head"]
    b_q: Float[Array, "head d_head"]
    w_k: Float[Array, "kv_head d_model d_head"]
    b_k: Float[Array, "kv_head d_head"]
    w_v: Float[Array, "kv_head d_model d_head"]
    b_v: Float[Array, "kv_head d_head"]
    w_o: Float[Array, "head d_head d_model"]
    b_o: Float[Array, " d_model"]
    ln2: Norm | None
    w_in: Float[Array, "d_model d_mlp"] | None
    b_in: Float[Array, " d_mlp"] | None
    w_out: Float[Array, "d_mlp d_model"] | None
    b_out: Float[Array, " d_model"] | None
    w_gate: Float[Array, "d_model d_mlp"] | None = None
    b_gate: Float[Array, " d_mlp"] | None = None
    ln_post_attn: Norm | None = None
    ln_post_mlp: Norm | None = None


def _act(name: str, x):
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "silu":
        return jax.nn.silu(x)
    return jax.nn.relu(x)


def _mix(
    m: Float[ArrayLike, "*r n"],
    online: Float[Array, "n seq d"],
    corrupted: Float[Array, "n seq d"],
    m_corrupted: Float[ArrayLike, "*r n"] | None = None,
) -> Float[Array, "*r seq d"]:
    """sum_s m_s * online_s + (1 - m_s) * corrupted_s, exact at m = 0 and m = 1.
    `m_corrupted` replaces `1 - m` (the scan path zeroes both at sources not upstream)."""
    if m_corrupted is None:
        m_corrupted = 1.0 - m
    return jnp.einsum("...n,nsd->...sd", m, online) + jnp.einsum(
        "...n,nsd->...sd", m_corrupted, corrupted
    )


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class Transformer(eqx.Module):
    """The edge-masked transformer of every supported family (GPT-2, attention-only
    shortformer, tracr, GPT-NeoX/Pythia, Llama, Mistral, Qwen2, Gemma-2), set by its
    [`jacdc.models.TransformerConfig`][] (see `docs/families.md`).

    `__call__` works on **one sequence**; batch with
    `jax.vmap(model, in_axes=(0, None, 0))` (one mask for the batch) or `in_axes=(0, 0, 0)`.
    """

    cfg: TransformerConfig = eqx.field(static=True)
    w_e: Float[Array, "d_vocab d_model"]
    w_pos: Float[Array, "n_ctx d_model"] | None
    blocks: tuple[Block, ...]
    ln_final: Norm | None
    w_u: Float[Array, "d_model d_vocab_out"]
    b_u: Float[Array, " d_vocab_out"]

    def __init__(self, cfg: TransformerConfig, *, key: PRNGKeyArray, init_std: float = 0.02):
        """Random initialisation (normal with `init_std`, biases small and non-zero so that
        tests see them; every weight the config has is initialised).

        **Arguments:**

        - `cfg`: a [`jacdc.models.TransformerConfig`][].
        - `key`: a JAX PRNG key (keyword-only).
        - `init_std`: standard deviation of the weights.
        """
        self.cfg = cfg
        keys = iter(jr.split(key, 8 + 24 * cfg.n_layers))
        dtype = _DTYPES[cfg.weight_dtype]

        def normal(shape, std=init_std):
            return (std * jr.normal(next(keys), shape, jnp.float32)).astype(dtype)

        d, e, H, KV = cfg.d_model, cfg.d_head, cfg.n_heads, cfg.kv_heads
        self.w_e = normal((cfg.d_vocab, d), 1.0 if cfg.normalization == "none" else init_std * 5)
        self.w_pos = normal((cfg.n_ctx, d), init_std * 5) if cfg.has_pos_table else None

        def ln():
            if cfg.normalization == "none":
                return None
            if cfg.normalization == "RMS":
                return RMSNorm(1.0 + normal((d,), 0.1), cfg.ln_eps)
            return LayerNorm(1.0 + normal((d,), 0.1), normal((d,), 0.1), cfg.ln_eps)

        blocks = []
        for _ in range(cfg.n_layers):
            has = cfg.has_mlp
            gated = has and cfg.gated_mlp
            blocks.append(
                Block(
                    ln1=ln(),
                    w_q=normal((H, d, e), d**-0.5),
                    b_q=normal((H, e), 0.1),
                    w_k=normal((KV, d, e), d**-0.5),
                    b_k=normal((KV, e), 0.1),
                    w_v=normal((KV, d, e), d**-0.5),
                    b_v=normal((KV, e), 0.1),
                    w_o=normal((H, e, d), (H * e) ** -0.5),
                    b_o=normal((d,), 0.1),
                    ln2=ln() if has else None,
                    w_in=normal((d, cfg.d_mlp), d**-0.5) if has else None,
                    b_in=normal((cfg.d_mlp,), 0.1) if has else None,
                    w_out=normal((cfg.d_mlp, d), cfg.d_mlp**-0.5) if has else None,
                    b_out=normal((d,), 0.1) if has else None,
                    w_gate=normal((d, cfg.d_mlp), d**-0.5) if gated else None,
                    b_gate=normal((cfg.d_mlp,), 0.1) if gated else None,
                    ln_post_attn=ln() if cfg.post_norms else None,
                    ln_post_mlp=ln() if cfg.post_norms and has else None,
                )
            )
        self.blocks = tuple(blocks)
        self.ln_final = ln()
        self.w_u = normal((d, cfg.vocab_out), d**-0.5)
        self.b_u = normal((cfg.vocab_out,), 0.1)

    @classmethod
    def from_params(
        cls,
        cfg: TransformerConfig,
        *,
        w_e,
        w_pos=None,
        blocks: list[dict],
        ln_final,
        w_u,
        b_u=None,
    ) -> "Transformer":
        """Builds a model from explicit weights (TransformerLens layouts; see [`Block`][]).

        Each element of `blocks` is a dict with the keys of `Block`. Norms (`ln1`, `ln2`,
        `ln_post_attn`, `ln_post_mlp`, and `ln_final`) are `(w, b)` pairs for LayerNorm and
        `(w, None)` (or `w` alone) for RMSNorm, or `None` where the config has none. Biases
        (`b_q, b_k, b_v, b_o, b_in, b_gate, b_out`, `b_u`) may be `None` or left out: zeros, which
        is exact. `w_pos` is `None` unless the config has a learned position table. Arrays
        (NumPy, including `ml_dtypes.bfloat16`, or JAX) are cast to `cfg.weight_dtype`; a JAX
        array that already has it is kept as it is (its placement too). Shapes are checked
        against `cfg`, and every mismatch is reported in one message.
        """
        d, e, H, m, KV = cfg.d_model, cfg.d_head, cfg.n_heads, cfg.d_mlp, cfg.kv_heads
        dtype = _DTYPES[cfg.weight_dtype]
        problems: list[str] = []

        def cast(x):
            if isinstance(x, jax.Array) and x.dtype == dtype:
                return x
            if not isinstance(x, jax.Array):
                x = np.asarray(x)
                if x.dtype.kind not in "fiu" and x.dtype.name != "bfloat16":
                    raise TypeError(f"expected a numeric array, got dtype {x.dtype}")
            return jnp.asarray(x).astype(dtype)

        def check(name, x, shape, bias=False):
            if x is None:
                if shape is not None and not bias:
                    problems.append(f"{name}: missing, expected shape {shape}")
                if shape is not None and bias:
                    return jnp.zeros(shape, dtype)
                return None
            if shape is None:
                problems.append(f"{name}: given, but this config has no such weight")
                return None
            if tuple(np.shape(x)) != tuple(shape):
                problems.append(f"{name}: shape {tuple(np.shape(x))}, expected {tuple(shape)}")
                return None
            return cast(x)

        def make_norm(name, given, wanted=True):
            if cfg.normalization == "none" or not wanted:
                if given is not None:
                    why = "normalization='none'" if wanted else "this config has no such norm"
                    problems.append(f"{name}: given, but {why}")
                return None
            if given is None:
                problems.append(f"{name}: missing {cfg.normalization} norm weights")
                return None
            if cfg.normalization == "RMS":
                if isinstance(given, (tuple, list)):
                    if len(given) == 2 and given[1] is not None:
                        problems.append(f"{name}.b: given, but RMSNorm has no bias")
                    given = given[0]
                return RMSNorm(check(f"{name}.w", given, (d,)), cfg.ln_eps)
            if not isinstance(given, (tuple, list)) or len(given) != 2:
                problems.append(f"{name}: expected a (w, b) LayerNorm pair")
                return None
            return LayerNorm(
                check(f"{name}.w", given[0], (d,)), check(f"{name}.b", given[1], (d,)), cfg.ln_eps
            )

        if len(blocks) != cfg.n_layers:
            raise ValueError(f"Expected {cfg.n_layers} blocks of weights, got {len(blocks)}.")
        built = []
        for i, blk in enumerate(blocks):
            p = f"blocks.{i}"
            has = cfg.has_mlp
            gated = has and cfg.gated_mlp
            unknown = set(blk) - set(Block.__dataclass_fields__)
            if unknown:
                problems.append(f"{p}: unknown weights {sorted(unknown)}")

            def w(name, shape, bias=False, blk=blk, p=p):
                return check(f"{p}.{name}", blk.get(name), shape, bias)

            built.append(
                Block(
                    ln1=make_norm(f"{p}.ln1", blk.get("ln1")),
                    w_q=w("w_q", (H, d, e)),
                    b_q=w("b_q", (H, e), True),
                    w_k=w("w_k", (KV, d, e)),
                    b_k=w("b_k", (KV, e), True),
                    w_v=w("w_v", (KV, d, e)),
                    b_v=w("b_v", (KV, e), True),
                    w_o=w("w_o", (H, e, d)),
                    b_o=w("b_o", (d,), True),
                    ln2=make_norm(f"{p}.ln2", blk.get("ln2"), has),
                    w_in=w("w_in", (d, m) if has else None),
                    b_in=w("b_in", (m,) if has else None, True),
                    w_out=w("w_out", (m, d) if has else None),
                    b_out=w("b_out", (d,) if has else None, True),
                    w_gate=w("w_gate", (d, m) if gated else None),
                    b_gate=w("b_gate", (m,) if gated else None, True),
                    ln_post_attn=make_norm(
                        f"{p}.ln_post_attn", blk.get("ln_post_attn"), cfg.post_norms
                    ),
                    ln_post_mlp=make_norm(
                        f"{p}.ln_post_mlp", blk.get("ln_post_mlp"), cfg.post_norms and has
                    ),
                )
            )
        w_e = check("w_e", w_e, (cfg.d_vocab, d))
        w_pos = check("w_pos", w_pos, (cfg.n_ctx, d) if cfg.has_pos_table else None)
        lnf = make_norm("ln_final", ln_final)
        w_u = check("w_u", w_u, (d, cfg.vocab_out))
        b_u = check("b_u", b_u, (cfg.vocab_out,), True)
        if problems:
            raise ValueError(
                "Weights do not fit the config:\n  "
                + "\n  ".join(problems)
                + "\nCheck that the checkpoint and the config describe the same model."
            )
        model = object.__new__(cls)
        object.__setattr__(model, "cfg", cfg)
        object.__setattr__(model, "w_e", w_e)
        object.__setattr__(model, "w_pos", w_pos)
        object.__setattr__(model, "blocks", tuple(built))
        object.__setattr__(model, "ln_final", lnf)
        object.__setattr__(model, "w_u", w_u)
        object.__setattr__(model, "b_u", b_u)
        return model

    # ---------------------------------------------------------------------------------------
    @property
    def graph_shape(self):
        return self.cfg.graph_shape

    def check_tokens(self, tokens) -> None:
        """Checks token shape, dtype and (for concrete arrays) range; raises `ValueError`."""
        cfg = self.cfg
        if not hasattr(tokens, "ndim") or tokens.ndim != 1:
            raise ValueError(
                "`Transformer.__call__` takes one unbatched sequence of shape (seq,), but got "
                f"shape {getattr(tokens, 'shape', type(tokens))}. For a batch use "
                "`jax.vmap(model, in_axes=(0, None, 0))`."
            )
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"Tokens must be integer ids, got dtype {tokens.dtype}.")
        if tokens.shape[0] > cfg.n_ctx or tokens.shape[0] < 1:
            raise ValueError(
                f"Sequence length {tokens.shape[0]} is outside [1, {cfg.n_ctx}] (n_ctx). "
                "Shorten the prompts."
            )
        if not isinstance(tokens, (jax.core.Tracer, jax.ShapeDtypeStruct)):
            arr = np.asarray(tokens)
            if arr.min() < 0 or arr.max() >= cfg.d_vocab:
                raise ValueError(
                    f"Token ids must lie in [0, {cfg.d_vocab}) (the vocabulary size), got "
                    f"min {arr.min()} and max {arr.max()}. Check the tokenizer matches the model."
                )

    def check_token_batch(self, tokens, what: str = "tokens") -> None:
        """Checks a `(batch, seq)` array of token ids (shape, dtype, range); `ValueError` else.

        An array spread over several processes (multi-host) is checked from its metadata and
        the shards this process holds: each process checks its own part."""
        if isinstance(tokens, jax.Array) and not tokens.is_fully_addressable:
            shape, dtype = tuple(tokens.shape), tokens.dtype
            parts = [np.asarray(s.data).ravel() for s in tokens.addressable_shards]
            values = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        else:
            arr = np.asarray(tokens)
            shape, dtype, values = arr.shape, arr.dtype, arr
        if len(shape) != 2 or shape[0] == 0:
            raise ValueError(
                f"Expected {what} as a non-empty (batch, seq) array of token ids, got shape "
                f"{shape}."
            )
        self.check_tokens(jax.ShapeDtypeStruct(shape[1:], dtype))
        if values.size and (values.min() < 0 or values.max() >= self.cfg.d_vocab):
            raise ValueError(
                f"{what}: token ids must lie in [0, {self.cfg.d_vocab}) (the vocabulary size), "
                f"got min {values.min()} and max {values.max()}. Check the tokenizer matches "
                "the model."
            )

    def _check_sources(self, corrupted: Sources, seq: int) -> None:
        cfg, shape = self.cfg, self.graph_shape
        want = {
            "resid": (shape.n_src, seq, cfg.d_model),
            "q": (cfg.n_layers, cfg.n_heads, seq, cfg.d_head),
            "k": (cfg.n_layers, cfg.n_heads, seq, cfg.d_head),
            "v": (cfg.n_layers, cfg.n_heads, seq, cfg.d_head),
        }
        for name, shp in want.items():
            got = tuple(getattr(corrupted, name).shape)
            if got != shp:
                raise ValueError(
                    f"`corrupted.{name}` has shape {got}, expected {shp} for one sequence of "
                    f"length {seq}. Build it with `jacdc.models.corrupted_sources` or "
                    "`zero_ablation_sources`, and vmap over the batch axis."
                )

    def embed(self, tokens, positions) -> list[Float[Array, "seq d_model"]]:
        """The embedding source outputs (one or two of them)."""
        cfg = self.cfg
        tok = self.w_e[tokens].astype(jnp.float32)
        if cfg.embed_scale is not None:
            tok = tok * jnp.float32(cfg.embed_scale)
        if not cfg.has_pos_table or cfg.positional == "shortformer":
            return [tok]
        pos = self.w_pos[positions].astype(jnp.float32)
        if cfg.positional == "standard":
            return [tok + pos]
        return [tok, pos]

    def __call__(
        self,
        tokens: Int[Array, " seq"],
        mask: EdgeMask,
        corrupted: Sources,
        positions: Int[Array, " seq"] | None = None,
        *,
        layers: Literal["scan", "unrolled"] = "scan",
    ) -> tuple[Float[Array, "seq d_vocab_out"], Sources]:
        """Masked forward pass of one sequence.

        **Arguments:**

        - `tokens`: `(seq,)` integer ids.
        - `mask`: an [`jacdc.EdgeMask`][] for this model's graph.
        - `corrupted`: [`jacdc.models.Sources`][] of the corrupted run (for this sequence).
        - `positions`: position ids, default `arange(seq)`; a permutation here gives the
            shuffled positional embedding that tracr's random ablation uses.
        - `layers`: `"scan"` (default) runs one compiled layer body under `lax.scan`, so
            compile time does not grow with depth; `"unrolled"` is the reference path, a Python
            loop over the layers (the two agree to float rounding; tested).

        **Returns:** the logits `(seq, d_vocab_out)` and the online [`Sources`][] of this pass.
        """
        self.check_tokens(tokens)
        mask.check_shape(self.graph_shape)
        self._check_sources(corrupted, tokens.shape[0])
        _check_layers(layers)
        if layers == "scan":
            return self._forward_scan(tokens, mask, corrupted, positions, None, None, None)
        return self._forward(tokens, mask, corrupted, positions, 0, None, None)

    def run_from(
        self,
        stage: int,
        tokens: Int[Array, " seq"],
        mask: EdgeMask,
        corrupted: Sources,
        prefix: Float[Array, "n_prefix seq d_model"],
        positions: Int[Array, " seq"] | None = None,
        logit_positions: Int[Array, " p"] | None = None,
    ) -> Float[Array, "p d_vocab_out"]:
        """Runs the forward from `stage` on, given the online outputs `prefix` of the sources
        written before it (at least `n_prefix(stage)` of them, in source order; later ones are
        ignored). Returns the logits at `logit_positions` (all positions if `None`). The
        reference (unrolled) path of [`run_from_scan`][]: one compiled function per stage."""
        want = self.n_prefix(stage)
        if prefix.shape[0] < want:
            raise ValueError(
                f"Stage {stage} needs the outputs of {want} sources, got {prefix.shape[0]}."
            )
        logits, _ = self._forward(
            tokens, mask, corrupted, positions, stage, prefix[:want], logit_positions
        )
        return logits

    def run_from_scan(
        self,
        stage: Int[Array, ""] | int,
        tokens: Int[Array, " seq"],
        mask: EdgeMask,
        corrupted: Sources,
        clean: Float[Array, "src seq d_model"],
        positions: Int[Array, " seq"] | None = None,
        logit_positions: Int[Array, " p"] | None = None,
        stacked: Block | None = None,
        first_layer: int = 0,
        prefix_delta: Float[Array, "n_pre seq d_model"] | None = None,
        prefix_csum: Float[Array, "seq d_model"] | None = None,
    ) -> Float[Array, "p d_vocab_out"]:
        """[`run_from`][] with the stage a *traced* integer: one compiled function serves
        every stage. `clean` holds the online outputs of **all** sources (the clean run's);
        those written before `stage` are read, the others are recomputed. Layers before the
        stage are skipped with `lax.cond`, so the work is that of the suffix.

        `first_layer` (static, default 0): scan only the layers from it on, reading the
        sources before it from `clean` without copying them (valid for stages at or after
        `2 * first_layer`; one compilation per `first_layer`). Not for models with
        post-attention norms (Gemma-2). With `prefix_delta` (`clean - corrupted.resid`, at
        least the sources before `first_layer`'s) and `prefix_csum` (the sum of
        `corrupted.resid` over those sources), a receiver mixes the prefix as
        `prefix_csum + sum_s m_s delta_s`: one contraction instead of two, equal to rounding
        (both computed once per band by the
        caller)."""
        shape = self.graph_shape
        if clean.shape[0] != shape.n_src:
            raise ValueError(
                f"`clean` must hold the outputs of all {shape.n_src} sources, got "
                f"{clean.shape[0]}. Pass the clean run's `Sources.resid`."
            )
        stage = jnp.asarray(stage, jnp.int32)
        logits, _ = self._forward_scan(
            tokens, mask, corrupted, positions, stage, clean, logit_positions, stacked,
            first_layer, prefix_delta, prefix_csum,
        )  # fmt: skip
        return logits

    def n_prefix(self, stage: int) -> int:
        """Sources written before `stage` (what [`run_from`][] needs): for an MLP stage this
        includes the layer's own heads, also in parallel blocks (whose MLP does not read them,
        but later layers do, and the MLP stage leaves them unchanged)."""
        L = self.cfg.n_layers
        if not 0 <= stage <= 2 * L:
            raise ValueError(f"stage must lie in [0, {2 * L}], got {stage}.")
        return self.graph_shape.n_src_before_stage(stage)

    def _suffix_groups(self, stage: int) -> list[tuple[int, int]]:
        """`(first source, size)` of every source group [`run_suffix`][] recomputes from
        `stage` on (a layer's heads, an MLP), in source order."""
        shape, groups = self.graph_shape, []
        for layer in range(stage // 2, self.cfg.n_layers):
            if 2 * layer >= stage:
                groups.append((shape.head_src(layer, 0), self.cfg.n_heads))
            if self.cfg.has_mlp and 2 * layer + 1 >= stage:
                groups.append((shape.mlp_src(layer), 1))
        return groups

    def suffix_prefix(
        self,
        stage: int,
        clean: Float[Array, "*batch src seq d_model"],
        corrupted: Float[Array, "*#batch src seq d_model"],
        logit_positions: Int[Array, " p"] | None = None,
    ) -> SuffixPrefix:
        """The [`SuffixPrefix`][] of `stage` from the clean run's sources and the corrupted ones
        (`Sources.resid`; leading batch axes allowed, `corrupted`'s broadcast to `clean`'s)."""
        self._check_suffix_stage(stage)
        n0 = self._suffix_n0(stage)
        corrupted = jnp.broadcast_to(corrupted, clean.shape)
        f32 = lambda a: a.astype(jnp.float32)
        pick = (lambda a: a) if logit_positions is None else (lambda a: a[..., logit_positions, :])
        c_pre = f32(corrupted[..., :n0, :, :])
        c_sum = c_pre.sum(-3)
        out_delta = f32(pick(clean[..., :n0, :, :])) - pick(c_pre)
        delta, csum = None, None
        if stage < 2 * self.cfg.n_layers:  # some layer runs: the whole positions are needed
            delta, csum = f32(clean[..., :n0, :, :]) - c_pre, c_sum
        groups = tuple(corrupted[..., g : g + k, :, :] for g, k in self._suffix_groups(stage))
        return SuffixPrefix(delta, csum, out_delta, pick(c_sum), groups)

    def _suffix_n0(self, stage: int) -> int:
        """The prefix of [`run_suffix`][] at `stage`: the sources written before it, and at
        stage 0 the embeddings (whose clean values are the clean run's)."""
        return max(self.graph_shape.n_src_before_stage(stage), self.graph_shape.n_embed)

    def _check_suffix_stage(self, stage) -> None:
        L = self.cfg.n_layers
        if not isinstance(stage, int) or not 0 <= stage <= 2 * L:
            raise ValueError(f"stage must be a Python int in [0, {2 * L}], got {stage!r}.")
        if self.cfg.post_norms:
            raise ValueError(
                "run_suffix needs a model without post-attention norms (Gemma-2 normalises each "
                "layer's heads together per receiver); use run_from or run_from_scan."
            )

    def run_suffix(
        self,
        stage: int,
        tokens: Int[Array, " seq"],
        mask: EdgeMask,
        corrupted: Sources,
        prefix: SuffixPrefix,
        positions: Int[Array, " seq"] | None = None,
        logit_positions: Int[Array, " p"] | None = None,
    ) -> Float[Array, "p d_vocab_out"]:
        """[`run_from`][] for a static `stage`, unrolled, with every receiver mixing exactly its
        upstream sources: the prefix (the sources before `stage`, fixed at their clean values)
        as `csum + sum_s m_s delta_s` from `prefix` ([`suffix_prefix`][] of the same stage and
        `logit_positions`), and each recomputed group with its own contraction. The output
        receiver mixes only `logit_positions`. Equal to [`run_from`][] up to rounding; no
        post-attention norms (Gemma-2)."""
        self._check_suffix_stage(stage)
        cfg, shape = self.cfg, self.graph_shape
        L, f32 = cfg.n_layers, jnp.float32
        n0 = self._suffix_n0(stage)
        want = (n0, len(self._suffix_groups(stage)), stage < 2 * L)
        got = (prefix.out_delta.shape[0], len(prefix.groups), prefix.delta is not None)
        if got != want:
            raise ValueError(
                f"This prefix (for {got[0]} prefix sources and {got[1]} source groups) was not "
                f"made for stage {stage} (which needs {n0} and {want[1]}); pass "
                f"`model.suffix_prefix({stage}, ...)` of one sequence."
            )
        if positions is None:
            positions = jnp.arange(tokens.shape[0])
        pos_qk, rope, windows = self._pos_qk(positions), self._rope(positions), cfg.windows()
        pick = (lambda a: a) if logit_positions is None else (lambda a: a[:, logit_positions])
        done = []  # (first source, online outputs, corrupted outputs) of each recomputed group
        c_groups = iter(prefix.groups)

        def read(m, n, bias, out=False):
            """A receiver's input from its `n` upstream sources (mask rows `m`)."""
            delta, csum = prefix.delta, prefix.csum
            if out:
                delta, csum = prefix.out_delta, prefix.out_csum
            m_pre = m[..., :n0]
            if n < n0:  # a parallel block's MLP at its own stage: its layer's heads not upstream
                m_pre = jnp.where(jnp.arange(n0) < n, m_pre, 0.0)
                csum = csum - corrupted.resid[n:n0].astype(f32).sum(0)
            x = jnp.einsum("...n,nsd->...sd", m_pre, delta.astype(f32)) + csum
            for g, on, co in done:
                if g >= n:
                    break
                if out:
                    on, co = pick(on), pick(co)
                x = x + _mix(m[..., g : g + on.shape[0]], on, co.astype(f32))
            return x + bias

        bias = jnp.zeros((cfg.d_model,), f32)
        for blk in self.blocks[: stage // 2]:
            bias = bias + blk.b_o
        for layer in range(stage // 2, L):
            blk = self.blocks[layer]
            if 2 * layer >= stage:
                n = shape.n_src_before_layer(layer)
                m_qkv = jnp.stack([mask.q[layer], mask.k[layer], mask.v[layer]])
                x = read(m_qkv, n, bias)
                c = corrupted
                result, _, _, _ = _heads(
                    cfg, blk, x, mask.direct[layer], c.q[layer], c.k[layer], c.v[layer], pos_qk,
                    rope, windows[layer],
                )  # fmt: skip
                done.append((n, result, next(c_groups)))
            bias_before, bias = bias, bias + blk.b_o
            if cfg.has_mlp and 2 * layer + 1 >= stage:
                n = shape.n_src_before_mlp(layer)
                x = read(mask.mlp[layer], n, bias_before if cfg.parallel_attn_mlp else bias)
                done.append((shape.mlp_src(layer), _mlp(cfg, blk, x)[None], next(c_groups)))
        x = read(mask.out, shape.n_src, bias, out=True)
        return self._unembed(x, None)

    def _rope(self, positions):
        """`(cos, sin)` tables `(seq, rot_dim)` of the rotary embedding, or `None`."""
        if not self.cfg.rot_dim:
            return None
        inv = jnp.asarray(self.cfg.inv_freq(), jnp.float32)
        angles = positions.astype(jnp.float32)[:, None] * inv[None, :]
        angles = jnp.concatenate([angles, angles], axis=-1)
        return jnp.cos(angles), jnp.sin(angles)

    def _pos_qk(self, positions):
        if self.cfg.positional != "shortformer":
            return None
        return self.w_pos[positions].astype(jnp.float32)

    def _read_unrolled(self, m, online, corrupted, n, bias):
        """A receiver's input from the first `n` sources (list `online`), with mask row `m`.
        With post-norms, each earlier layer's heads are mixed, summed with its `b_o` and
        normalised by that layer's post-attention norm (see `docs/families.md`)."""
        cfg, shape = self.cfg, self.graph_shape
        stacked = jnp.stack(online[:n])
        if not cfg.post_norms:
            return _mix(m, stacked, corrupted[:n]) + bias
        E, P, H = shape.n_embed, shape.per_layer, cfg.n_heads
        x = _mix(m[..., :E], stacked[:E], corrupted[:E])
        for layer in range(-(-(n - E) // P)):
            blk = self.blocks[layer]
            hs = slice(E + layer * P, E + layer * P + H)
            part = _mix(m[..., hs], stacked[hs], corrupted[hs]) + blk.b_o.astype(jnp.float32)
            x = x + blk.ln_post_attn(part)
            j = E + layer * P + H
            if cfg.has_mlp and j < n:
                x = x + _mix(m[..., j : j + 1], stacked[j : j + 1], corrupted[j : j + 1])
        return x

    def _forward(self, tokens, mask, corrupted, positions, stage, prefix, logit_positions):
        cfg, shape = self.cfg, self.graph_shape
        seq = tokens.shape[0]
        if positions is None:
            positions = jnp.arange(seq)
        if stage == 0:
            online = self.embed(tokens, positions)
        else:
            online = list(prefix)
        qs, ks, vs = [], [], []
        pos_qk, rope = self._pos_qk(positions), self._rope(positions)
        windows = cfg.windows()
        bias = jnp.zeros((cfg.d_model,), jnp.float32)
        for layer, blk in enumerate(self.blocks):
            if 2 * layer >= stage:
                n = shape.n_src_before_layer(layer)
                m_qkv = jnp.stack(
                    [mask.q[layer, :, :n], mask.k[layer, :, :n], mask.v[layer, :, :n]]
                )
                x = self._read_unrolled(m_qkv, online, corrupted.resid, n, bias)
                c = corrupted
                result, q, k, v = _heads(
                    cfg, blk, x, mask.direct[layer], c.q[layer], c.k[layer], c.v[layer], pos_qk,
                    rope, windows[layer],
                )  # fmt: skip
                qs.append(q), ks.append(k), vs.append(v)
                online.extend(result[h] for h in range(cfg.n_heads))
            bias_before = bias
            if not cfg.post_norms:  # with post-norms, b_o sits inside the layer's norm
                bias = bias + blk.b_o
            if cfg.has_mlp and 2 * layer + 1 >= stage:
                n = shape.n_src_before_mlp(layer)
                b = bias_before if cfg.parallel_attn_mlp else bias
                x = self._read_unrolled(mask.mlp[layer, :n], online, corrupted.resid, n, b)
                online.append(_mlp(cfg, blk, x))
        x = self._read_unrolled(mask.out, online, corrupted.resid, shape.n_src, bias)
        logits = self._unembed(x, logit_positions)
        if stage != 0:
            return logits, None
        stacked = jnp.stack(online)
        sources = Sources(resid=stacked, q=jnp.stack(qs), k=jnp.stack(ks), v=jnp.stack(vs))
        return logits, sources

    def _unembed(self, x, logit_positions):
        if logit_positions is not None:
            x = x[logit_positions]
        if self.ln_final is not None:
            x = self.ln_final(x)
        logits = x @ self.w_u + self.b_u
        cap = self.cfg.final_softcap
        if cap is not None:
            logits = cap * jnp.tanh(logits / cap)
        return logits.astype(jnp.float32)

    def _forward_scan(
        self, tokens, mask, corrupted, positions, stage, clean, logit_positions, stacked=None,
        first_layer: int = 0, prefix_delta=None, prefix_csum=None,
    ):  # fmt: skip
        """The forward as one layer body under `lax.scan` (see `_forward` for the maths).

        The online outputs live in one buffer of all `n_src` sources; a receiver reads every
        source with its mask row zeroed (`jnp.where`, so also zero gradient) at the sources
        that are not upstream of it. `stage=None`: the whole forward from the embeddings;
        otherwise a traced stage, with `clean` the buffer whose sources before it are read.

        `first_layer > 0` (static; needs `clean` and a stage at or after `2 * first_layer`, and
        no post-norms): the scan runs over the layers from `first_layer` on only. The sources
        before that layer are read straight from `clean` (shared by every candidate a caller
        vmaps over, never copied), and the online buffer holds the later sources only; the
        output receiver mixes only the positions the metric reads."""
        cfg, shape = self.cfg, self.graph_shape
        seq = tokens.shape[0]
        H, E, P, L = cfg.n_heads, shape.n_embed, shape.per_layer, cfg.n_layers
        if positions is None:
            positions = jnp.arange(seq)
        # Sources [0, n0) are the fixed prefix (read from `clean`); the buffer holds the rest.
        n0 = 0 if first_layer == 0 else E + first_layer * P
        if first_layer and (clean is None or cfg.post_norms or not 0 <= first_layer <= L):
            raise ValueError(
                f"first_layer={first_layer} needs the clean buffer, a model without post-norms "
                f"and 0 <= first_layer <= {L}."
            )
        prefix, c_pre, delta, csum = None, None, None, None
        if clean is None:
            emb = jnp.stack(self.embed(tokens, positions))
            rest = jnp.zeros((shape.n_src - E, seq, cfg.d_model), emb.dtype)
            online = jnp.concatenate([emb, rest]).astype(jnp.float32)
        else:
            online = clean[n0:].astype(jnp.float32)
            if n0 and prefix_delta is not None:
                if prefix_delta.shape[0] < n0:
                    raise ValueError(
                        f"prefix_delta must hold at least the {n0} sources before layer "
                        f"{first_layer}, got {prefix_delta.shape[0]}."
                    )
                delta, csum = prefix_delta[:n0].astype(jnp.float32), prefix_csum
            elif n0:
                prefix, c_pre = clean[:n0].astype(jnp.float32), corrupted.resid[:n0]

        def mix_prefix(m, pick=lambda a: a, pick_csum=lambda a: a):
            """The prefix's part of a receiver's input (every prefix source is upstream)."""
            if delta is None:
                return _mix(m, pick(prefix), pick(c_pre))
            return jnp.einsum("...n,nsd->...sd", m, pick(delta)) + pick_csum(csum)

        c_suf = corrupted.resid[n0:]
        blocks = stack_blocks(self) if stacked is None else stacked
        # Biases before each layer's attention, accumulated in the unrolled path's order.
        bias, before = jnp.zeros((cfg.d_model,), jnp.float32), []
        for blk in self.blocks:
            before.append(bias)
            if not cfg.post_norms:
                bias = bias + blk.b_o
        final_bias = bias
        src = jnp.arange(n0, shape.n_src)
        pos_qk, rope = self._pos_qk(positions), self._rope(positions)
        zero_qkv = jnp.zeros((H, seq, cfg.d_head), jnp.float32)
        if cfg.post_norms:
            # Every layer's post-attention norm and b_o, applied per (receiver, layer) below.
            post = jax.tree.map(lambda a: a[:, None, :], blocks.ln_post_attn)
            b_o_all = blocks.b_o.astype(jnp.float32)[:, None, :]

        def read(m, online, n, bias, n_head_layers=None):
            """A receiver's input from the `n` sources upstream of it (the others weigh 0)."""
            m_suf = m[..., n0:]
            valid = src < n
            w_on, w_co = jnp.where(valid, m_suf, 0.0), jnp.where(valid, 1.0 - m_suf, 0.0)
            if not cfg.post_norms:
                x = _mix(w_on, online, c_suf, w_co)
                if n0:  # the prefix is upstream of every receiver in the scan
                    x = mix_prefix(m[..., :n0]) + x
                return x + bias
            c = corrupted.resid
            x = _mix(w_on[..., :E], online[:E], c[:E], w_co[..., :E])
            lay = lambda a: a[..., E:].reshape(a.shape[:-1] + (L, P))
            per = lambda a: a[E:].reshape((L, P) + a.shape[1:])
            on, co, o_l, c_l = lay(w_on), lay(w_co), per(online), per(c)
            part = (
                jnp.einsum("...lh,lhsd->...lsd", on[..., :H], o_l[:, :H])
                + jnp.einsum("...lh,lhsd->...lsd", co[..., :H], c_l[:, :H])
                + b_o_all
            )
            normed = post(part)
            ok = (jnp.arange(L) < n_head_layers)[:, None, None]
            x = x + jnp.where(ok, normed, 0.0).sum(-3)
            if cfg.has_mlp:
                x = x + jnp.einsum("...l,lsd->...sd", on[..., H], o_l[:, H])
                x = x + jnp.einsum("...l,lsd->...sd", co[..., H], c_l[:, H])
            return x

        def attention(online, xs):
            blk, layer, bias, m_qkv, direct, c_q, c_k, c_v, window = xs
            n = E + layer * P
            x = read(m_qkv, online, n, bias, layer)
            result, q, k, v = _heads(cfg, blk, x, direct, c_q, c_k, c_v, pos_qk, rope, window)
            online = jax.lax.dynamic_update_slice_in_dim(online, result, n - n0, axis=0)
            return online, (q, k, v)

        own = 0 if cfg.parallel_attn_mlp else 1  # does the MLP read its own layer's heads?

        def mlp(online, xs):
            blk, layer, bias, m_mlp = xs
            n = E + layer * P + own * H
            out = _mlp(cfg, blk, read(m_mlp, online, n, bias, layer + own))[None]
            return jax.lax.dynamic_update_slice_in_dim(online, out, E + layer * P + H - n0, axis=0)

        def layer_body(online, xs):
            blk, layer, bias = xs["blk"], xs["layer"], xs["bias"]
            m_qkv = jnp.stack([xs["q"], xs["k"], xs["v"]])
            window = xs.get("window")
            a_xs = (blk, layer, bias, m_qkv, xs["direct"], xs["cq"], xs["ck"], xs["cv"], window)
            if stage is None:
                online, qkv = attention(online, a_xs)
            else:
                online, qkv = jax.lax.cond(
                    2 * layer >= stage,
                    attention,
                    lambda o, _: (o, (zero_qkv, zero_qkv, zero_qkv)),
                    online,
                    a_xs,
                )
            if cfg.has_mlp:
                mlp_bias = bias if cfg.parallel_attn_mlp or cfg.post_norms else bias + blk.b_o
                m_xs = (blk, layer, mlp_bias, xs["mlp"])
                if stage is None:
                    online = mlp(online, m_xs)
                else:
                    online = jax.lax.cond(2 * layer + 1 >= stage, mlp, lambda o, _: o, online, m_xs)
            return online, qkv

        xs = {
            "blk": blocks,
            "layer": jnp.arange(cfg.n_layers),
            "bias": jnp.stack(before),
            "q": mask.q,
            "k": mask.k,
            "v": mask.v,
            "direct": mask.direct,
            "cq": corrupted.q,
            "ck": corrupted.k,
            "cv": corrupted.v,
        }
        if cfg.has_mlp:
            xs["mlp"] = mask.mlp
        if cfg.sliding_window is not None:
            xs["window"] = jnp.array(
                [_GLOBAL if w is None else w for w in cfg.windows()], jnp.int32
            )
        if first_layer:
            xs = jax.tree.map(lambda a: a[first_layer:], xs)
        if first_layer < L:
            online, (qs, ks, vs) = jax.lax.scan(layer_body, online, xs)
        if cfg.post_norms:
            x = read(mask.out, online, shape.n_src, final_bias, L)
        elif not n0:  # the output reads every source: no validity mask needed
            x = _mix(mask.out, online, corrupted.resid) + final_bias
        else:  # only the positions the metric reads
            lp = logit_positions
            pick = (lambda a: a) if lp is None else (lambda a: a[:, lp])
            x = mix_prefix(mask.out[:n0], pick, (lambda a: a) if lp is None else (lambda a: a[lp]))
            if n0 < shape.n_src:
                x = x + _mix(mask.out[n0:], pick(online), pick(c_suf))
            x = x + final_bias
            logit_positions = None
        logits = self._unembed(x, logit_positions)
        if stage is not None:
            return logits, None
        return logits, Sources(resid=online, q=qs, k=ks, v=vs)


_GLOBAL = 2**30  # the window of a global-attention layer in the scan's per-layer array


def _kv_proj(cfg, x, w, b):
    """Per query head, its k (or v) from its own input `x` `(head, seq, d_model)` with its
    key/value group's weights `w` `(kv_head, d_model, d_head)`."""
    H, KV = cfg.n_heads, cfg.kv_heads
    if KV == H:
        return jnp.einsum("hsd,hde->hse", x, w) + b[:, None, :]
    G = H // KV
    xg = x.reshape((KV, G) + x.shape[1:])
    out = jnp.einsum("gqsd,gde->gqse", xg, w).reshape((H,) + x.shape[1:-1] + (w.shape[-1],))
    return out + jnp.repeat(b, G, axis=0)[:, None, :]


def _rotate(x, rope):
    """Rotary embedding on the first `rot_dim` dims of `x` `(head, seq, d_head)` (Hugging
    Face's `rotate_half` layout: pairs `(i, i + rot_dim / 2)`)."""
    cos, sin = rope
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    half = r // 2
    turned = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    out = rot * cos + turned * sin
    return jnp.concatenate([out, rest], axis=-1) if rest.shape[-1] else out


def _heads(cfg, blk: Block, x, direct, c_q, c_k, c_v, pos_qk, rope=None, window=None):
    """One layer's heads from their mixed inputs `x` `(3, head, seq, d_model)` (q, k, v):
    norm, projections (k and v per query head, with its key/value group's weights), rotary
    embeddings, the direct edges (`direct` `(head, 3)` against the corrupted `c_q, c_k, c_v`,
    i.e. on the rotated q and k), attention (soft-capped, windowed). Returns each head's result
    `(head, seq, d_model)` (before any post-attention norm) and q, k, v."""
    if blk.ln1 is not None:
        x = blk.ln1(x)
    x_q, x_k, x_v = x[0], x[1], x[2]
    if pos_qk is not None:  # shortformer: positions enter q and k only, outside the graph
        x_q, x_k = x_q + pos_qk, x_k + pos_qk
    q = jnp.einsum("hsd,hde->hse", x_q, blk.w_q) + blk.b_q[:, None, :]
    k = _kv_proj(cfg, x_k, blk.w_k, blk.b_k)
    v = _kv_proj(cfg, x_v, blk.w_v, blk.b_v)
    if rope is not None:
        q, k = _rotate(q, rope), _rotate(k, rope)
    q = _lerp(direct[:, 0], q, c_q)
    k = _lerp(direct[:, 1], k, c_k)
    v = _lerp(direct[:, 2], v, c_v)
    scores = jnp.einsum("hse,hte->hst", q, k).astype(jnp.float32) / cfg.scale
    if cfg.attn_softcap is not None:
        scores = cfg.attn_softcap * jnp.tanh(scores / cfg.attn_softcap)
    if cfg.causal:
        seq = q.shape[1]
        allowed = jnp.tril(jnp.ones((seq, seq), bool))
        if window is not None:
            i, j = jnp.arange(seq)[:, None], jnp.arange(seq)[None, :]
            allowed = allowed & (i - j < window)
        scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    pattern = jax.nn.softmax(scores, axis=-1)
    z = jnp.einsum("hst,hte->hse", pattern, v)
    return jnp.einsum("hse,hed->hsd", z, blk.w_o), q, k, v


def _mlp(cfg, blk: Block, x):
    """A layer's MLP output from its mixed input `x` `(seq, d_model)` (with a post-MLP norm, if
    any, applied: it belongs to the MLP node)."""
    if blk.ln2 is not None:
        x = blk.ln2(x)
    pre = x @ blk.w_in + blk.b_in
    if blk.w_gate is not None:
        hidden = _act(cfg.act_fn, x @ blk.w_gate + blk.b_gate) * pre
    else:
        hidden = _act(cfg.act_fn, pre)
    out = hidden @ blk.w_out + blk.b_out
    if blk.ln_post_mlp is not None:
        out = blk.ln_post_mlp(out)
    return out


def stack_blocks(model: Transformer) -> Block:
    """The blocks' weights stacked over layers (leading axis `layer`), as the scan reads them."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *model.blocks)


def _check_layers(layers) -> None:
    if layers not in ("scan", "unrolled"):
        raise ValueError(f"layers must be 'scan' or 'unrolled', got {layers!r}.")


def _lerp(m: Float[ArrayLike, " head"], online, corrupted):
    m = m[:, None, None]
    return m * online + (1.0 - m) * corrupted


def empty_sources(cfg: TransformerConfig, seq: int, batch: tuple[int, ...] = ()) -> Sources:
    """All-zero [`Sources`][] of the right shape (for a pass whose mask reads none of them)."""
    shape = cfg.graph_shape
    qkv = jnp.zeros(batch + (cfg.n_layers, cfg.n_heads, seq, cfg.d_head), jnp.float32)
    return Sources(
        resid=jnp.zeros(batch + (shape.n_src, seq, cfg.d_model), jnp.float32), q=qkv, k=qkv, v=qkv
    )


@eqx.filter_jit
def clean_run(
    model: Transformer,
    tokens: Int[Array, "batch seq"],
    positions: Int[Array, "batch seq"] | None = None,
) -> tuple[Float[Array, "batch seq d_vocab_out"], Sources]:
    """The unpatched model on a batch: logits and every source's activations."""
    mask = EdgeMask.full(model.graph_shape)
    empty = empty_sources(model.cfg, tokens.shape[1])
    if positions is None:
        return jax.vmap(lambda t: model(t, mask, empty))(tokens)
    return jax.vmap(lambda t, p: model(t, mask, empty, p))(tokens, positions)


def corrupted_sources(
    model: Transformer,
    tokens: Int[Array, "batch seq"],
    positions: Int[Array, "batch seq"] | None = None,
) -> Sources:
    """Corrupted-activation ablation: the clean model's activations on the corrupted batch
    (optionally with permuted positions, as tracr's random ablation does)."""
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"Expected a batch of token ids (batch, seq), got shape {tokens.shape}.")
    model.check_token_batch(tokens, "corrupted tokens")
    return clean_run(model, tokens, positions)[1]


@eqx.filter_jit
def _zero_sources(model: Transformer, seq_tokens: Int[Array, " seq"]) -> Sources:
    shape = model.graph_shape
    # Every additive edge absent and every corrupted residual source zero: each receiver sees
    # only the biases. Direct edges present, so q/k/v are computed from exactly that input -- the
    # values the original implementation caches when it zeroes every residual writer.
    mask = EdgeMask.full(shape, 0.0)
    mask = eqx.tree_at(lambda m: m.direct, mask, jnp.ones_like(mask.direct))
    empty = empty_sources(model.cfg, seq_tokens.shape[0])
    _, src = model(seq_tokens, mask, empty)
    return Sources(resid=jnp.zeros_like(src.resid), q=src.q, k=src.k, v=src.v)


def zero_ablation_sources(model: Transformer, batch: int, seq: int) -> Sources:
    """Zero ablation: every residual writer (embeddings, head results, MLP outputs) is zero,
    biases are kept, and the corrupted q/k/v are what the heads compute from the biases alone.
    Returned with a leading batch axis of size `batch`."""
    one = _zero_sources(model, jnp.zeros((seq,), jnp.int32))
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (batch,) + x.shape), one)


def n_params(model: Transformer) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(eqx.filter(model, eqx.is_array)))
