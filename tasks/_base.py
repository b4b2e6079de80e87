"""What every task provides: clean/corrupted prompts, the positions a metric reads, and metrics.

A [`Task`][] is a pytree of arrays (one split: validation or test), so it is an ordinary argument
to jitted functions. Strings, prompts and other host-side data live in a [`TaskBundle`][] next to
it, never inside the jitted object.

Every metric is **minimised** (lower is better) and reads the logits only at the task's
`logit_positions`: `(batch, pos, d_vocab_out)`, where `pos = len(logit_positions)`. Reading only
those positions lets the forward pass unembed nothing else.
"""

import abc
import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jacdc.models import Transformer, clean_run


class AbstractMetric(eqx.Module):
    """A scalar, minimised function of the logits at the task's metric positions."""

    @abc.abstractmethod
    def per_example(self, logits: Float[Array, "batch pos vocab"]) -> Float[Array, " batch"]:
        """The metric of each example; `__call__` is their mean unless a subclass says
        otherwise."""

    def __call__(self, logits: Float[Array, "batch pos vocab"]) -> Float[Array, ""]:
        return self.per_example(logits).mean()


def _weighted_mean(values, weights):
    total = weights.sum()
    return jnp.where(total > 0, (values * weights).sum() / jnp.maximum(total, 1e-30), 0.0)


class KLMetric(AbstractMetric):
    """KL(original model || circuit) in nats, at the weighted positions, averaged over all
    weighted (example, position) pairs. `clean_logprobs` are the unpatched model's log-probs on
    the clean batch at the same positions."""

    clean_logprobs: Float[Array, "batch pos vocab"]
    weights: Float[Array, "batch pos"]

    def _kl(self, logits):
        logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        p = jnp.exp(self.clean_logprobs)
        return jnp.sum(p * (self.clean_logprobs - logprobs), axis=-1)  # (batch, pos)

    def per_example(self, logits):
        kl = self._kl(logits)
        return (kl * self.weights).sum(-1) / jnp.maximum(self.weights.sum(-1), 1e-30)

    def __call__(self, logits):
        return _weighted_mean(self._kl(logits), self.weights)


class L2Metric(AbstractMetric):
    """Mean squared error between the circuit's and the original model's outputs over the
    weighted positions and the selected output dimensions (tracr's `l2`)."""

    clean_logits: Float[Array, "batch pos vocab"]
    weights: Float[Array, "batch pos"]
    dims: Int[Array, " dims"]

    def per_example(self, logits):
        diff = logits[..., self.dims] - self.clean_logits[..., self.dims]
        sq = (diff * diff).mean(-1)
        return (sq * self.weights).sum(-1) / jnp.maximum(self.weights.sum(-1), 1e-30)

    def __call__(self, logits):
        diff = logits[..., self.dims] - self.clean_logits[..., self.dims]
        return _weighted_mean((diff * diff).mean(-1), self.weights)


class Task(eqx.Module):
    """One split of a task: what ACDC, SP, HISP and EAP need, as arrays.

    - `clean`: `(batch, seq)` token ids the metric is computed on.
    - `corrupted`: `(batch, seq)` token ids of the corrupted run (for corrupted-activation
        ablation).
    - `corrupted_positions`: `(batch, seq)` position ids for the corrupted run, or `None` for
        `arange(seq)` (tracr's random ablation shuffles the positional embedding).
    - `logit_positions`: `(pos,)` the positions whose logits the metrics read.
    - `metrics`: name -> [`AbstractMetric`][]; all minimised.
    - `lengths`: `(batch,)` each prompt's length before right padding, or `None` when no row
        is padded (mean ablation leaves padding out of its means).
    """

    clean: Int[Array, "batch seq"]
    corrupted: Int[Array, "batch seq"]
    corrupted_positions: Int[Array, "batch seq"] | None
    logit_positions: Int[Array, " pos"]
    metrics: dict[str, AbstractMetric]
    lengths: Int[Array, " batch"] | None = None

    def __check_init__(self):
        if self.clean.ndim != 2 or self.clean.shape[0] == 0:
            raise ValueError(
                f"A task needs a non-empty batch of token ids (batch, seq); got clean shape "
                f"{self.clean.shape}."
            )
        if self.corrupted.shape != self.clean.shape:
            raise ValueError(
                f"Clean and corrupted token arrays must have the same shape, got "
                f"{self.clean.shape} and {self.corrupted.shape}."
            )
        if (
            self.corrupted_positions is not None
            and self.corrupted_positions.shape != self.clean.shape
        ):
            raise ValueError(
                f"corrupted_positions must have shape {self.clean.shape}, got "
                f"{self.corrupted_positions.shape}."
            )
        if self.lengths is not None and self.lengths.shape != (self.clean.shape[0],):
            raise ValueError(
                f"lengths must have shape ({self.clean.shape[0]},), got {self.lengths.shape}."
            )

    @property
    def batch(self) -> int:
        return self.clean.shape[0]

    @property
    def seq(self) -> int:
        return self.clean.shape[1]

    def metric(self, name: str) -> AbstractMetric:
        if name not in self.metrics:
            raise ValueError(
                f"Unknown metric {name!r} for this task; available: {sorted(self.metrics)}."
            )
        return self.metrics[name]


@dataclasses.dataclass
class TaskBundle:
    """A task ready to run: model, validation and test splits, and host-side metadata.

    - `name`: registry name, e.g. `"tracr-reverse"`.
    - `model`: the [`jacdc.models.Transformer`][].
    - `val`, `test`: [`Task`][]s (discovery uses `val`; reported metrics use `test`).
    - `default_metric`: the metric a discovery run optimises unless told otherwise.
    - `canonical`: the canonical circuit as a list of edge names, or `None` when the task has
        none (Induction).
    - `info`: anything else (prompts, vocabularies, seeds) for reports; JSON-serialisable.
    """

    name: str
    model: Transformer
    val: Task
    test: Task
    default_metric: str
    canonical: list[str] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def canonical_circuit(self) -> list[str]:
        if self.canonical is None:
            raise ValueError(
                f"Task {self.name!r} has no canonical circuit (so no ROC against one)."
            )
        return list(self.canonical)


def clean_logits_at(model: Transformer, tokens, logit_positions) -> Float[Array, "batch pos vocab"]:
    """The unpatched model's logits at the metric positions (for KL and L2 baselines)."""
    logits, _ = clean_run(model, jnp.asarray(tokens))
    return logits[:, jnp.asarray(logit_positions)]


def check_clean_run_memory(model: Transformer, tokens) -> None:
    """Raises `jacdc.MemoryBudgetError` (a `ValueError`) *before* the clean run of `tokens` if
    its logits (every position, float32, about four copies while the metric is built) would
    not fit in the memory free now: a task too large for the machine stops with the numbers
    and the options that shrink it, instead of being killed by the system."""
    from jacdc import _device_memory

    batch, seq = np.shape(tokens)[:2]
    need = 4 * batch * seq * model.cfg.vocab_out * 4
    free, source = _device_memory.device_memory()
    if free is not None and need > 0.9 * free:
        raise _device_memory.MemoryBudgetError(
            f"Building the task's metrics needs about {need / 2**30:.1f} GiB (the clean logits "
            f"of {batch} sequences x {seq} tokens x {model.cfg.vocab_out} vocabulary entries), "
            f"but only {free / 2**30:.1f} GiB is free ({source}). Use fewer or shorter "
            "sequences: --n-val/--n-test (split sizes), --seq-len (induction)."
        )


def kl_metric(model: Transformer, tokens, logit_positions, weights=None) -> KLMetric:
    """A [`KLMetric`][] against `model`'s own clean distribution (weights default to 1). The
    memory of the clean run is checked first ([`check_clean_run_memory`][])."""
    check_clean_run_memory(model, tokens)
    logits = clean_logits_at(model, tokens, logit_positions)
    if weights is None:
        weights = np.ones(logits.shape[:2], np.float32)
    return KLMetric(
        clean_logprobs=jax.nn.log_softmax(logits, axis=-1),
        weights=jnp.asarray(weights, jnp.float32),
    )
