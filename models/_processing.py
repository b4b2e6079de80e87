"""Weight processing of loaded checkpoints: TransformerLens's value-bias folding.

The original ACDC implementation loads every pretrained model with TransformerLens's
`HookedTransformer.from_pretrained`, whose default `fold_value_biases=True` rewrites, per layer,

    b_O <- b_O + sum_h b_V[h] @ W_O[h],        b_V <- 0.

Because every attention pattern row sums to 1, a head's output `pattern @ (x W_V + b_V) W_O`
carries the constant `b_V[h] W_O[h]` at every position; folding moves it into `b_O`, which
belongs to no node of the graph. Logits are unchanged, and so is every corrupted-activation patch
(a patched head still contributes its constant, through its clean or corrupted value alike). What
changes is **zero ablation** (a zeroed head result, or a zeroed v vector in SP, no longer removes
the constant) and **HISP** (the v units' attributions no longer include it): those are the
original's numbers only with the folded weights.

The loaders of the paper's models (`load_gpt2`, `load_attn_only_4l`, `load_redwood_attn_2l`,
`from_transformer_lens_state_dict`) fold by default and record it in the config
(`TransformerConfig.fold_value_biases`, which `result.json` holds under `model`); pass
`fold_value_biases=False` for the raw weights, or run loaders inside
[`value_bias_folding`][]`(False)` (the CLI's `--no-fold-value-biases`).

TransformerLens's other defaults (`fold_ln`, `center_writing_weights`, `center_unembed`) are not
applied, because they change no patched result: folding LayerNorm's scale and shift into the next
linear map gives the same function of the (patched) input; every residual reader applies
LayerNorm, which removes the mean, so centring what writers write changes nothing it reads,
patched or not (a zeroed writer is zero either way); and centring the unembedding shifts all
logits of a position by one constant, which no metric sees (KL, log-probs and probabilities are
shift-invariant, logit differences cancel it).
"""

import contextlib
import contextvars
import dataclasses

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._transformer import Transformer


_FOLD_DEFAULT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "jacdc_fold_value_biases", default=True
)


@contextlib.contextmanager
def value_bias_folding(enabled: bool):
    """Sets the default of the loaders' `fold_value_biases` argument inside the block."""
    token = _FOLD_DEFAULT.set(bool(enabled))
    try:
        yield
    finally:
        _FOLD_DEFAULT.reset(token)


def resolve_folding(fold_value_biases: bool | None) -> bool:
    """A loader's `fold_value_biases` argument, `None` meaning the current default."""
    return _FOLD_DEFAULT.get() if fold_value_biases is None else bool(fold_value_biases)


def fold_value_biases(model: Transformer) -> Transformer:
    """TransformerLens's value-bias folding (see the module docstring): per layer
    `b_O += sum_h b_V[kv(h)] @ W_O[h]` (in float64, then the weights' dtype) and `b_V = 0`, where
    `kv(h)` is query head `h`'s key/value head (`h` itself without grouped-query attention). The
    returned model's config has `fold_value_biases=True`; folding a folded model changes nothing.
    Refused for models with a post-attention norm (Gemma-2): there `b_O` would sit inside the
    norm, so the move would change the model."""
    cfg = model.cfg
    if cfg.post_norms:
        raise ValueError(
            "fold_value_biases: this model has post-attention norms (Gemma-2), which act on the "
            "sum of the heads; moving the value biases into b_O would change the model. Load it "
            "without folding."
        )
    group = cfg.n_heads // (cfg.n_kv_heads or cfg.n_heads)
    b_vs, b_os = [], []
    for blk in model.blocks:
        b_v = np.repeat(np.asarray(blk.b_v, np.float64), group, axis=0)  # (head, d_head)
        w_o = np.asarray(blk.w_o, np.float64)
        b_o = np.asarray(blk.b_o, np.float64) + np.einsum("he,hed->d", b_v, w_o)
        b_vs.append(np.zeros(blk.b_v.shape, blk.b_v.dtype))
        b_os.append(b_o.astype(blk.b_o.dtype))
    for i in range(len(model.blocks)):
        model = eqx.tree_at(
            lambda m, i=i: (m.blocks[i].b_v, m.blocks[i].b_o),
            model,
            (jnp.asarray(b_vs[i]), jnp.asarray(b_os[i])),
        )
    folded = object.__new__(Transformer)  # `cfg` is static: copy the fields, then replace it
    for field in dataclasses.fields(model):
        object.__setattr__(folded, field.name, getattr(model, field.name))
    object.__setattr__(folded, "cfg", dataclasses.replace(cfg, fold_value_biases=True))
    return folded
