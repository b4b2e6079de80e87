"""HISP ("Are Sixteen Heads Really Better than One?", Michel et al. 2019), as in the ACDC paper.

Reference §5.2. The units are SP's (each head's q, k, v outputs and each MLP output, see
[`jacdc.NodeMask`][]):

1. Every unit gets a multiplicative mask fixed at 1 and no cache (its output is `m * x`), so
   `d metric / d m = sum over positions and dimensions of activation x gradient`: an attribution
   against a *zero* baseline, whatever the ablation used later.
2. For each validation example `i` separately, the score of unit `u` is
   `sum_i |d metric_i / d m_u|` (`metric_i` the task metric's `per_example` value). All examples
   are differentiated in one backward pass, each with its own copy of the unit masks.
3. Scores are normalised within each layer by the L2 norm of that layer's concatenated q, k, v
   and MLP scores.
4. Units are pruned in ascending order of normalised score; the circuit after pruning the first
   `j` units is one point of the ROC (`j = 0..n_units`), scored by the cumulative prune score.

So the ordering, and the ROC, are identical for zero and corrupted ablation (the ablation only
changes what a pruned unit outputs, which the ROC does not look at). Attention-only models have no
MLP units here (the original keeps inert MLP masks, which add ROC points identical to their
neighbours).
"""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._sp import (
    NodeMask,
    circuit_from_units,
    node_edge_mask,
    unit_names,
    unit_vector,
    units_from_vector,
)


@eqx.filter_jit
def _per_example_grads(model, task, metric: str):
    from jacdc.models import empty_sources

    shape = model.graph_shape
    corrupted = empty_sources(model.cfg, task.seq, (task.batch,))
    units = NodeMask.full(shape, 1.0, (task.batch,))
    positions = jnp.arange(task.seq)
    prefix = jnp.zeros((0, task.seq, model.cfg.d_model), jnp.float32)

    def total(units):
        def one(tokens, corr, unit):
            mask = node_edge_mask(shape, unit)
            return model.run_from(0, tokens, mask, corr, prefix, positions, task.logit_positions)

        logits = jax.vmap(one)(task.clean, corrupted, units)
        return task.metrics[metric].per_example(logits).sum()

    return jax.grad(total)(units)


class HISPResult(NamedTuple):
    """A HISP run.

    - `units`: unit names (see [`jacdc.unit_names`][]).
    - `raw_scores`, `scores`: per unit, before and after the per-layer normalisation.
    - `order`: unit indices in pruning order (ascending score; ties by unit order).
    - `cumulative`: `(n_units + 1,)` the cumulative prune score of each circuit (0 first).
    - `circuits`: bool `(n_units + 1, edge)`; circuit `j` has the first `j` units of `order`
        pruned (circuit 0 is the full graph, the last one is empty).
    """

    units: list[str]
    raw_scores: np.ndarray
    scores: np.ndarray
    order: np.ndarray
    cumulative: np.ndarray
    circuits: np.ndarray


def hisp_scores(model, task, *, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw and per-layer-normalised HISP scores, one per unit (order of
    [`jacdc.unit_names`][])."""
    if metric not in task.metrics:
        raise ValueError(f"Unknown metric {metric!r}; the task has {sorted(task.metrics)}.")
    shape = model.graph_shape
    grads = _per_example_grads(model, task, metric)
    raw = np.abs(unit_vector(shape, jax.tree.map(np.asarray, grads))).sum(0).astype(np.float64)
    if not np.all(np.isfinite(raw)):
        raise ValueError(
            f"HISP: {int(np.sum(~np.isfinite(raw)))} unit scores are not finite; the model or "
            "data give NaN/inf values. Check the weights and the dataset."
        )
    per_layer = raw.reshape(shape.n_layers, -1)
    norms = np.linalg.norm(per_layer, axis=1, keepdims=True)
    normed = np.where(norms > 0, per_layer / np.where(norms > 0, norms, 1.0), 0.0)
    return raw, normed.reshape(-1)


def hisp(model, task, *, metric: str) -> HISPResult:
    """Runs HISP on `task` (the validation split): scores every unit and returns the nested
    circuits of the ascending pruning order. See the module docstring."""
    shape = model.graph_shape
    raw, scores = hisp_scores(model, task, metric=metric)
    order = np.argsort(scores, kind="stable")
    n = scores.size
    # keep[j, u]: is unit u still kept after pruning j units?
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    keep = rank[None, :] >= np.arange(n + 1)[:, None]
    circuits = circuit_from_units(shape, units_from_vector(shape, keep, fill=True))
    cumulative = np.concatenate([[0.0], np.cumsum(scores[order])])
    return HISPResult(unit_names(shape), raw, scores, order, cumulative, circuits)
