"""The one masked forward every algorithm shares: ablated activations, and metric of a mask.

- [`ablation_sources`][] builds the [`jacdc.models.Sources`][] a removed edge reads, for one of
  four ablations (the `ablation=` setting every algorithm takes):

    | `ablation` | a removed edge reads |
    | --- | --- |
    | `"corrupted"` | the clean model's activations on `task.corrupted` (default) |
    | `"zero"` | zero (biases kept; `zero_ablation=True` is the same) |
    | `"mean"` | the source's mean over a reference set, at each position |
    | `"mean-positions"` | the source's mean over a reference set and over its positions |

    The reference set is the task's own clean prompts unless an [`Ablation`][] names another
    (`Ablation("mean", reference=tokens, lengths=...)`). Means skip padding: a reference prompt
    of length `n` contributes to positions `< n` only. A position no reference prompt reaches
    (per-position mean) reads the over-positions mean.
- [`metric_of_mask`][] runs the masked model on the clean batch and returns the metric; it
  unembeds only the task's metric positions. It is differentiable in the mask (EAP, SP, HISP) and
  vmappable over a leading axis of masks (the fast ACDC engine).
"""

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jacdc._graph import EdgeMask


ABLATIONS = ("corrupted", "zero", "mean", "mean-positions")


@dataclasses.dataclass(frozen=True)
class Ablation:
    """An ablation setting: what a removed edge reads.

    - `kind`: one of `"corrupted"`, `"zero"`, `"mean"`, `"mean-positions"`.
    - `reference`: mean ablation only: `(n, seq)` token ids to average the activations over
        (default: the task's clean prompts), or a [`jacdc.tasks.Task`][] (its clean prompts and
        lengths).
    - `lengths`: `(n,)` the unpadded length of each reference row (default: all `seq`).
    - `name`: a label for result files (e.g. the reference file's name).
    """

    kind: str = "corrupted"
    reference: Any = None
    lengths: Any = None
    name: str | None = None

    def __post_init__(self):
        if self.kind not in ABLATIONS:
            raise ValueError(
                f"Unknown ablation {self.kind!r}; choose one of {', '.join(ABLATIONS)}."
            )
        if self.reference is not None and not self.kind.startswith("mean"):
            raise ValueError(
                f"A reference set applies to mean ablation only, not to {self.kind!r}."
            )

    @property
    def is_mean(self) -> bool:
        return self.kind.startswith("mean")

    def describe(self) -> dict:
        """JSON-serialisable summary for result files."""
        out: dict = {"kind": self.kind}
        if self.is_mean:
            if self.reference is None:
                out["reference"] = "clean prompts"
            else:
                out["reference"] = self.name or f"{_reference_tokens(self)[0].shape[0]} prompts"
        return out


def resolve_ablation(zero_ablation: bool = False, ablation: "str | Ablation | None" = None):
    """The [`Ablation`][] from the old `zero_ablation=` flag and the `ablation=` setting
    (a name or an [`Ablation`][]); both given and contradicting is an error."""
    if ablation is None:
        return Ablation("zero" if zero_ablation else "corrupted")
    if isinstance(ablation, str):
        ablation = Ablation(ablation)
    if not isinstance(ablation, Ablation):
        raise TypeError(
            f"ablation must be a name ({', '.join(ABLATIONS)}) or a jacdc.Ablation, got "
            f"{type(ablation).__name__}."
        )
    if zero_ablation and ablation.kind != "zero":
        raise ValueError(
            f"zero_ablation=True contradicts ablation={ablation.kind!r}; pass only one of them."
        )
    return ablation


def _reference_tokens(ablation: Ablation, task=None):
    ref = ablation.reference
    lengths = ablation.lengths
    if ref is None:
        ref = task
    if hasattr(ref, "clean") and hasattr(ref, "metrics"):  # a Task
        if lengths is None:
            lengths = getattr(ref, "lengths", None)
        ref = ref.clean
    tokens = jnp.asarray(ref)
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise ValueError(
            f"A mean-ablation reference must be a non-empty (n, seq) array of token ids, got "
            f"shape {tokens.shape}."
        )
    if lengths is None:
        lengths = np.full(tokens.shape[0], tokens.shape[1])
    lengths = np.asarray(lengths).reshape(-1)
    if lengths.shape != (tokens.shape[0],) or lengths.min() < 1 or lengths.max() > tokens.shape[1]:
        raise ValueError(
            f"Reference lengths must be {tokens.shape[0]} values in [1, {tokens.shape[1]}], got "
            f"{lengths.tolist()[:8]}."
        )
    return tokens, jnp.asarray(lengths, jnp.int32)


def mean_sources(model, reference, lengths, seq: int, over_positions: bool):
    """The mean of the clean model's [`jacdc.models.Sources`][] over the reference rows (one
    sequence of length `seq`, no batch axis). Padding (positions `>= lengths[i]` of row `i`)
    never enters a mean. Per position (`over_positions=False`), positions beyond every
    reference row read the over-positions mean; a reference shorter than `seq` is fine."""
    from jacdc.models import clean_run

    _, src = clean_run(model, jnp.asarray(reference, jnp.int32))
    n, ref_seq = reference.shape
    valid = (jnp.arange(ref_seq)[None, :] < lengths[:, None]).astype(jnp.float32)  # (n, seq)

    def reduce(x):
        # x: (n, ..., ref_seq, d): the position axis is second to last.
        w = valid.reshape((n,) + (1,) * (x.ndim - 3) + (ref_seq, 1))
        total = (x * w).sum(0)  # (..., ref_seq, d)
        count = w.sum(0)  # (..., ref_seq, 1)
        overall = total.sum(-2, keepdims=True) / jnp.maximum(count.sum(-2, keepdims=True), 1.0)
        if over_positions:
            return jnp.broadcast_to(overall, total.shape[:-2] + (seq, total.shape[-1]))
        per_pos = jnp.where(count > 0, total / jnp.maximum(count, 1.0), overall)
        if ref_seq >= seq:
            return per_pos[..., :seq, :]
        pad = jnp.broadcast_to(overall, total.shape[:-2] + (seq - ref_seq, total.shape[-1]))
        return jnp.concatenate([per_pos, pad], axis=-2)

    from jacdc.models import Sources

    return Sources(resid=reduce(src.resid), q=reduce(src.q), k=reduce(src.k), v=reduce(src.v))


def ablation_sources(model, task, zero_ablation: bool = False, *, ablation=None):
    """The sources a removed edge reads for `task` (batched like `task.clean`).

    Corrupted-activation ablation: the clean model run on `task.corrupted` (with
    `task.corrupted_positions` if the task shuffles positions). Zero ablation: every residual
    writer zero, biases kept (see [`jacdc.models.zero_ablation_sources`][]). Mean ablation: the
    mean of every source over the reference set (module docstring), the same for every row.
    `ablation`: a name or an [`Ablation`][]; `zero_ablation=True` is `ablation="zero"`."""
    from jacdc.models import corrupted_sources, zero_ablation_sources

    ab = resolve_ablation(zero_ablation, ablation)
    if ab.kind == "zero":
        return zero_ablation_sources(model, task.batch, task.seq)
    if ab.kind == "corrupted":
        return corrupted_sources(model, task.corrupted, task.corrupted_positions)
    tokens, lengths = _reference_tokens(ab, task)
    model.check_token_batch(tokens, "mean-ablation reference")
    one = mean_sources(model, tokens, lengths, task.seq, ab.kind == "mean-positions")
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (task.batch,) + x.shape), one)


def ablation_record(zero_ablation: bool = False, ablation=None) -> dict:
    """What result files record about the ablation: `{"kind": ..., "reference": ...}`."""
    return resolve_ablation(zero_ablation, ablation).describe()


def masked_logits(model, task, mask: EdgeMask, corrupted) -> Float[Array, "batch pos vocab"]:
    """Logits of the masked model on the clean batch, at the task's metric positions."""
    positions = jnp.arange(task.seq)

    def one(tokens, corr):
        return model.run_from(
            0, tokens, mask, corr, _no_prefix(model, tokens), positions, task.logit_positions
        )

    return jax.vmap(one)(task.clean, corrupted)


def _no_prefix(model, tokens):
    return jnp.zeros((0, tokens.shape[0], model.cfg.d_model), jnp.float32)


def metric_value(model, task, mask: EdgeMask, corrupted, metric: str) -> Float[Array, ""]:
    """The task metric (minimised) of the circuit `mask`. Not jitted: wrap it, or use
    [`metric_of_mask`][]."""
    return task.metrics[metric](masked_logits(model, task, mask, corrupted))


@eqx.filter_jit
def metric_of_mask(model, task, mask: EdgeMask, corrupted, metric: str) -> Float[Array, ""]:
    """Jitted [`metric_value`][]: one compilation per model/task shape and metric name."""
    return metric_value(model, task, mask, corrupted, metric)


@eqx.filter_jit
def metrics_of_masks(model, task, masks: EdgeMask, corrupted) -> dict[str, Float[Array, " m"]]:
    """Every metric of `task` (by name) for each circuit of `masks` (an [`EdgeMask`][] with one
    leading axis): one compilation per model/task shape, one forward per mask for all the
    metrics. What result files record (values equal [`metric_of_mask`][]'s to rounding)."""

    def one(mask):
        logits = masked_logits(model, task, mask, corrupted)
        return {name: fn(logits) for name, fn in task.metrics.items()}

    return jax.vmap(one)(masks)
