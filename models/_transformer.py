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

    - `resid`: `(src, seq, d_model)`, what each source writes to the residual stream;
    - `q`, `k`, `v`: `(layer, head, seq, d_head)`, the vectors the direct edges patch.
    """

    resid: Float[Array, "*batch src seq d_model"]
    q: Float[Array, "*batch layer head seq d_head"]
    k: Float[Array, "*batch layer head seq d_head"]
    v: Float[Array, "*batch layer head seq d_head"]


class LayerNorm(eqx.Module):
    w: Float[Array, " d_model"]
    b: Float[Array, " d_model"]
    eps: float = eqx.field(static=True)

    def __call__(self, x: Float[Array, "... d_model"]) -> Float[Array, "... d_model"]:
        x = x - x.mean(-1, keepdims=True)
        scale = jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + self.eps)
        return x * scale * self.w + self.b


class Block(eqx.Module):
    """One layer's weights, in TransformerLens names and layouts.

    `w_q, w_k, w_v`: `(head, d_model, d_head)`; `w_o`: `(head, d_head, d_model)`;
    `w_in`: `(d_model, d_mlp)`; `w_out`: `(d_mlp, d_model)`.
    """

    ln1: LayerNorm | None
    w_q: Float[Array, "head d_model d_head"]
    b_q: Float[Array, "head d_head"]
    w_k: Float[Array, "head d_model d_head"]
    b_k: Float[Array, "head d_head"]
    w_v: Float[Array, "head d_model d_head"]
    b_v: Float[Array, "head d_head"]
    w_o: Float[Array, "head d_head d_model"]
    b_o: Float[Array, " d_model"]
    ln2: LayerNorm | None
    w_in: Float[Array, "d_model d_mlp"] | None
    b_in: Float[Array, " d_mlp"] | None
    w_out: Float[Array, "d_mlp d_model"] | None
    b_out: Float[Array, " d_model"] | None


def _act(name: str, x):
    if name == "gelu_new":
        return jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
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


class Transformer(eqx.Module):
    """GPT-2-style, attention-only (shortformer) and tracr transformers with edge masks.

    `__call__` works on **one sequence**; batch with
    `jax.vmap(model, in_axes=(0, None, 0))` (one mask for the batch) or `in_axes=(0, 0, 0)`.
    """

    cfg: TransformerConfig = eqx.field(static=True)
    w_e: Float[Array, "d_vocab d_model"]
    w_pos: Float[Array, "n_ctx d_model"]
    blocks: tuple[Block, ...]
    ln_final: LayerNorm | None
    w_u: Float[Array, "d_model d_vocab_out"]
    b_u: Float[Array, " d_vocab_out"]

    def __init__(self, cfg: TransformerConfig, *, key: PRNGKeyArray, init_std: float = 0.02):
        """Random initialisation (normal with `init_std`, biases small and non-zero so that
        tests see them).

        **Arguments:**

        - `cfg`: a [`jacdc.models.TransformerConfig`][].
        - `key`: a JAX PRNG key (keyword-only).
        - `init_std`: standard deviation of the weights.
        """
        self.cfg = cfg
        keys = iter(jr.split(key, 8 + 16 * cfg.n_layers))

        def normal(shape, std=init_std):
            return std * jr.normal(next(keys), shape, jnp.float32)

        d, e, H = cfg.d_model, cfg.d_head, cfg.n_heads
        self.w_e = normal((cfg.d_vocab, d), 1.0 if cfg.normalization == "none" else init_std * 5)
        self.w_pos = normal((cfg.n_ctx, d), init_std * 5)

        def ln():
            if cfg.normalization == "none":
                return None
            return LayerNorm(1.0 + normal((d,), 0.1), normal((d,), 0.1), cfg.ln_eps)

        blocks = []
        for _ in range(cfg.n_layers):
            has = cfg.has_mlp
            blocks.append(
                Block(
                    ln1=ln(),
                    w_q=normal((H, d, e), d**-0.5),
                    b_q=normal((H, e), 0.1),
                    w_k=normal((H, d, e), d**-0.5),
                    b_k=normal((H, e), 0.1),
                    w_v=normal((H, d, e), d**-0.5),
                    b_v=normal((H, e), 0.1),
                    w_o=normal((H, e, d), (H * e) ** -0.5),
                    b_o=normal((d,), 0.1),
                    ln2=ln() if has else None,
                    w_in=normal((d, cfg.d_mlp), d**-0.5) if has else None,
                    b_in=normal((cfg.d_mlp,), 0.1) if has else None,
                    w_out=normal((cfg.d_mlp, d), cfg.d_mlp**-0.5) if has else None,
                    b_out=normal((d,), 0.1) if has else None,
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
        w_pos,
        blocks: list[dict],
        ln_final: tuple | None,
        w_u,
        b_u=None,
    ) -> "Transformer":
        """Builds a model from explicit weights (TransformerLens layouts; see [`Block`][]).

        Each element of `blocks` is a dict with the keys of `Block` (`ln1`/`ln2` as
        `(w, b)` pairs or `None`). Shapes are checked against `cfg`, and every mismatch is
        reported in one message.
        """
        d, e, H, m = cfg.d_model, cfg.d_head, cfg.n_heads, cfg.d_mlp
        f32 = lambda x: None if x is None else jnp.asarray(np.asarray(x, np.float32))
        problems: list[str] = []

        def check(name, x, shape):
            if x is None:
                if shape is not None:
                    problems.append(f"{name}: missing, expected shape {shape}")
                return None
            if shape is None:
                problems.append(f"{name}: given, but this config has no such weight")
                return None
            if tuple(np.shape(x)) != tuple(shape):
                problems.append(f"{name}: shape {tuple(np.shape(x))}, expected {tuple(shape)}")
            return f32(x)

        def make_ln(name, pair):
            if cfg.normalization == "none":
                if pair is not None:
                    problems.append(f"{name}: given, but normalization='none'")
                return None
            if pair is None:
                problems.append(f"{name}: missing LayerNorm weights")
                return None
            return LayerNorm(
                check(f"{name}.w", pair[0], (d,)), check(f"{name}.b", pair[1], (d,)), cfg.ln_eps
            )

        if len(blocks) != cfg.n_layers:
            raise ValueError(f"Expected {cfg.n_layers} blocks of weights, got {len(blocks)}.")
        built = []
        for i, blk in enumerate(blocks):
            p = f"blocks.{i}"
            has = cfg.has_mlp
            unknown = set(blk) - set(Block.__dataclass_fields__)
            if unknown:
                problems.append(f"{p}: unknown weights {sorted(unknown)}")
            built.append(
                Block(
                    ln1=make_ln(f"{p}.ln1", blk.get("ln1")),
                    w_q=check(f"{p}.w_q", blk.get("w_q"), (H, d, e)),
                    b_q=check(f"{p}.b_q", blk.get("b_q"), (H, e)),
                    w_k=check(f"{p}.w_k", blk.get("w_k"), (H, d, e)),
                    b_k=check(f"{p}.b_k", blk.get("b_k"), (H, e)),
                    w_v=check(f"{p}.w_v", blk.get("w_v"), (H, d, e)),
                    b_v=check(f"{p}.b_v", blk.get("b_v"), (H, e)),
                    w_o=check(f"{p}.w_o", blk.get("w_o"), (H, e, d)),
                    b_o=check(f"{p}.b_o", blk.get("b_o"), (d,)),
                    ln2=make_ln(f"{p}.ln2", blk.get("ln2")) if has else None,
                    w_in=check(f"{p}.w_in", blk.get("w_in"), (d, m) if has else None),
                    b_in=check(f"{p}.b_in", blk.get("b_in"), (m,) if has else None),
                    w_out=check(f"{p}.w_out", blk.get("w_out"), (m, d) if has else None),
                    b_out=check(f"{p}.b_out", blk.get("b_out"), (d,) if has else None),
                )
            )
        w_e = check("w_e", w_e, (cfg.d_vocab, d))
        w_pos = check("w_pos", w_pos, (cfg.n_ctx, d))
        lnf = make_ln("ln_final", ln_final)
        w_u = check("w_u", w_u, (d, cfg.vocab_out))
        b_u = check("b_u", np.zeros(cfg.vocab_out) if b_u is None else b_u, (cfg.vocab_out,))
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
        tok = self.w_e[tokens]
        pos = self.w_pos[positions]
        if self.cfg.positional == "standard":
            return [tok + pos]
        if self.cfg.positional == "shortformer":
            return [tok]
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
    ) -> Float[Array, "p d_vocab_out"]:
        """[`run_from`][] with the stage a *traced* integer: one compiled function serves
        every stage. `clean` holds the online outputs of **all** sources (the clean run's);
        those written before `stage` are read, the others are recomputed. Layers before the
        stage are skipped with `lax.cond`, so the work is that of the suffix."""
        shape = self.graph_shape
        if clean.shape[0] != shape.n_src:
            raise ValueError(
                f"`clean` must hold the outputs of all {shape.n_src} sources, got "
                f"{clean.shape[0]}. Pass the clean run's `Sources.resid`."
            )
        stage = jnp.asarray(stage, jnp.int32)
        logits, _ = self._forward_scan(
            tokens, mask, corrupted, positions, stage, clean, logit_positions, stacked
        )
        return logits

    def n_prefix(self, stage: int) -> int:
        shape = self.graph_shape
        L = self.cfg.n_layers
        if not 0 <= stage <= 2 * L:
            raise ValueError(f"stage must lie in [0, {2 * L}], got {stage}.")
        if stage == 0:
            return 0
        if stage == 2 * L:
            return shape.n_src
        layer, part = divmod(stage, 2)
        return shape.n_src_before_layer(layer) if part == 0 else shape.n_src_before_mlp(layer)

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
        bias = jnp.zeros((cfg.d_model,), jnp.float32)
        for layer, blk in enumerate(self.blocks):
            if 2 * layer >= stage:
                n = shape.n_src_before_layer(layer)
                stacked = jnp.stack(online[:n])
                m_qkv = jnp.stack(
                    [mask.q[layer, :, :n], mask.k[layer, :, :n], mask.v[layer, :, :n]]
                )
                x = _mix(m_qkv, stacked, corrupted.resid[:n]) + bias  # (3, head, seq, d_model)
                pos_qk = self.w_pos[positions] if cfg.positional == "shortformer" else None
                c = corrupted
                result, q, k, v = _heads(
                    cfg, blk, x, mask.direct[layer], c.q[layer], c.k[layer], c.v[layer], pos_qk
                )
                qs.append(q), ks.append(k), vs.append(v)
                online.extend(result[h] for h in range(cfg.n_heads))
            bias = bias + blk.b_o
            if cfg.has_mlp and 2 * layer + 1 >= stage:
                n = shape.n_src_before_mlp(layer)
                x = _mix(mask.mlp[layer, :n], jnp.stack(online[:n]), corrupted.resid[:n]) + bias
                online.append(_mlp(cfg, blk, x))
        stacked = jnp.stack(online)
        x = _mix(mask.out, stacked, corrupted.resid) + bias
        if logit_positions is not None:
            x = x[logit_positions]
        if self.ln_final is not None:
            x = self.ln_final(x)
        logits = x @ self.w_u + self.b_u
        if stage != 0:
            return logits, None
        sources = Sources(resid=stacked, q=jnp.stack(qs), k=jnp.stack(ks), v=jnp.stack(vs))
        return logits, sources

    def _forward_scan(
        self, tokens, mask, corrupted, positions, stage, clean, logit_positions, stacked=None
    ):
        """The forward as one layer body under `lax.scan` (see `_forward` for the maths).

        The online outputs live in one buffer of all `n_src` sources; a receiver reads every
        source with its mask row zeroed (`jnp.where`, so also zero gradient) at the sources
        that are not upstream of it. `stage=None`: the whole forward from the embeddings;
        otherwise a traced stage, with `clean` the buffer whose sources before it are read."""
        cfg, shape = self.cfg, self.graph_shape
        seq = tokens.shape[0]
        H, E, P = cfg.n_heads, shape.n_embed, shape.per_layer
        if positions is None:
            positions = jnp.arange(seq)
        if clean is None:
            emb = jnp.stack(self.embed(tokens, positions))
            rest = jnp.zeros((shape.n_src - E, seq, cfg.d_model), emb.dtype)
            online = jnp.concatenate([emb, rest]).astype(jnp.float32)
        else:
            online = clean.astype(jnp.float32)
        blocks = stack_blocks(self) if stacked is None else stacked
        # Biases before each layer's attention, accumulated in the unrolled path's order.
        bias, before = jnp.zeros((cfg.d_model,), jnp.float32), []
        for blk in self.blocks:
            before.append(bias)
            bias = bias + blk.b_o
        final_bias = bias
        src = jnp.arange(shape.n_src)
        pos_qk = self.w_pos[positions] if cfg.positional == "shortformer" else None
        zero_qkv = jnp.zeros((H, seq, cfg.d_head), jnp.float32)

        def read(m, online, n, bias):
            """A receiver's input from the `n` sources upstream of it (the others weigh 0)."""
            valid = src < n
            w_on, w_co = jnp.where(valid, m, 0.0), jnp.where(valid, 1.0 - m, 0.0)
            return _mix(w_on, online, corrupted.resid, w_co) + bias

        def attention(online, xs):
            blk, layer, bias, m_qkv, direct, c_q, c_k, c_v = xs
            n = E + layer * P
            x = read(m_qkv, online, n, bias)
            result, q, k, v = _heads(cfg, blk, x, direct, c_q, c_k, c_v, pos_qk)
            online = jax.lax.dynamic_update_slice_in_dim(online, result, n, axis=0)
            return online, (q, k, v)

        def mlp(online, xs):
            blk, layer, bias, m_mlp = xs
            n = E + layer * P + H
            out = _mlp(cfg, blk, read(m_mlp, online, n, bias))[None]
            return jax.lax.dynamic_update_slice_in_dim(online, out, n, axis=0)

        def layer_body(online, xs):
            blk, layer, bias = xs["blk"], xs["layer"], xs["bias"]
            m_qkv = jnp.stack([xs["q"], xs["k"], xs["v"]])
            a_xs = (blk, layer, bias, m_qkv, xs["direct"], xs["cq"], xs["ck"], xs["cv"])
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
                m_xs = (blk, layer, bias + blk.b_o, xs["mlp"])
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
        online, (qs, ks, vs) = jax.lax.scan(layer_body, online, xs)
        x = _mix(mask.out, online, corrupted.resid) + final_bias
        if logit_positions is not None:
            x = x[logit_positions]
        if self.ln_final is not None:
            x = self.ln_final(x)
        logits = x @ self.w_u + self.b_u
        if stage is not None:
            return logits, None
        return logits, Sources(resid=online, q=qs, k=ks, v=vs)


def _heads(cfg, blk: Block, x, direct, c_q, c_k, c_v, pos_qk):
    """One layer's heads from their mixed inputs `x` `(3, head, seq, d_model)` (q, k, v):
    LayerNorm, projections, the direct edges (`direct` `(head, 3)` against the corrupted
    `c_q, c_k, c_v`), attention. Returns each head's result `(head, seq, d_model)` and q, k, v."""
    if blk.ln1 is not None:
        x = blk.ln1(x)
    x_q, x_k, x_v = x[0], x[1], x[2]
    if pos_qk is not None:  # shortformer: positions enter q and k only, outside the graph
        x_q, x_k = x_q + pos_qk, x_k + pos_qk
    q = jnp.einsum("hsd,hde->hse", x_q, blk.w_q) + blk.b_q[:, None, :]
    k = jnp.einsum("hsd,hde->hse", x_k, blk.w_k) + blk.b_k[:, None, :]
    v = jnp.einsum("hsd,hde->hse", x_v, blk.w_v) + blk.b_v[:, None, :]
    q = _lerp(direct[:, 0], q, c_q)
    k = _lerp(direct[:, 1], k, c_k)
    v = _lerp(direct[:, 2], v, c_v)
    scores = jnp.einsum("hse,hte->hst", q, k).astype(jnp.float32) / cfg.scale
    if cfg.causal:
        seq = q.shape[1]
        causal = jnp.tril(jnp.ones((seq, seq), bool))
        scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
    pattern = jax.nn.softmax(scores, axis=-1)
    z = jnp.einsum("hst,hte->hse", pattern, v)
    return jnp.einsum("hse,hed->hsd", z, blk.w_o), q, k, v


def _mlp(cfg, blk: Block, x):
    """A layer's MLP output from its mixed input `x` `(seq, d_model)`."""
    if blk.ln2 is not None:
        x = blk.ln2(x)
    hidden = _act(cfg.act_fn, x @ blk.w_in + blk.b_in)
    return hidden @ blk.w_out + blk.b_out


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
