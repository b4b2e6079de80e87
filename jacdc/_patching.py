"""The one masked forward every algorithm shares: corrupted activations, and metric of a mask.

- [`ablation_sources`][] builds the corrupted [`jacdc.models.Sources`][] of a task split, for
  corrupted-activation ("random") ablation or zero ablation.
- [`metric_of_mask`][] runs the masked model on the clean batch and returns the metric; it
  unembeds only the task's metric positions. It is differentiable in the mask (EAP, SP, HISP) and
  vmappable over a leading axis of masks (the fast ACDC engine).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jacdc._graph import EdgeMask


def ablation_sources(model, task, zero_ablation: bool):
    """Corrupted sources for `task` (batched like `task.clean`).

    Corrupted-activation ablation: the clean model run on `task.corrupted` (with
    `task.corrupted_positions` if the task shuffles positions). Zero ablation: every residual
    writer zero, biases kept (see [`jacdc.models.zero_ablation_sources`][])."""
    from jacdc.models import corrupted_sources, zero_ablation_sources

    if zero_ablation:
        return zero_ablation_sources(model, task.batch, task.seq)
    return corrupted_sources(model, task.corrupted, task.corrupted_positions)


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
