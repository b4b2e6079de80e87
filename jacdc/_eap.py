"""Edge Attribution Patching (EAP) and EAP with integrated gradients (EAP-IG).

Reference §9. Both score every counted edge with a gradient of the task metric with respect to
the [`jacdc.EdgeMask`][], through the one masked forward all algorithms share.

- **EAP** (Syed, Rager, Conmy 2023): `score_e = d metric / d m_e` at the all-ones mask. Since a
  receiver's input is `sum_s m_s online_s + (1 - m_s) corrupted_s`, the chain rule gives
  `score_(s -> r) = (online_s - corrupted_s) . d metric / d input_r` (and for a direct edge
  `(q - q_corrupted) . d metric / d q`): the usual EAP formula, obtained here as one `jax.grad`.
  Removing edge `e` changes the metric by about `-score_e` (first order; the metric is
  minimised, so a large *negative* score marks an important edge).
- **EAP-IG** (Hanna, Pezzelle, Belinkov 2024), on the mask path: the mask gradient averaged over
  the `m` points `alpha_k = k / m`, `k = 1..m`, of the straight line from the empty mask (the
  corrupted run) to the full mask (the clean run), vmapped over the points:
  `score_e = (1/m) sum_k d metric / d m_e (alpha_k * 1)`. This is the right Riemann sum of the
  integrated gradient `int_0^1 d metric / d m_e (alpha * 1) d alpha`, so by completeness
  `sum_e score_e -> metric(full) - metric(empty)` as `m` grows (error O(1/m)). With `m = 1` the
  only point is `alpha = 1`, i.e. EAP-IG(1) = EAP exactly. (The original EAP-IG interpolates the
  input embeddings; on the mask path every edge's own mix is interpolated, which is the variant
  this graph supports natively.)

Circuits come from the scores by top-k or by threshold ([`circuit_from_scores`][]): by default
on `|score|`, as EAP papers do; with `absolute=False` on `-score` (edges whose removal would raise
the metric most).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._graph import EdgeMask, graph_of
from ._patching import ablation_sources, metric_value


@eqx.filter_jit
def _mask_grads(model, task, corrupted, alphas: Float[Array, " step"], metric: str) -> EdgeMask:
    full = EdgeMask.full(model.graph_shape)

    def grad_at(alpha):
        mask = jax.tree.map(lambda x: alpha * x, full)
        return jax.grad(lambda m: metric_value(model, task, m, corrupted, metric))(mask)

    return jax.tree.map(lambda g: g.mean(0), jax.vmap(grad_at)(alphas))


def _scores(model, task, metric, zero_ablation, alphas, corrupted, ablation=None) -> np.ndarray:
    if metric not in task.metrics:
        raise ValueError(f"Unknown metric {metric!r}; the task has {sorted(task.metrics)}.")
    if corrupted is None:
        corrupted = ablation_sources(model, task, zero_ablation, ablation=ablation)
    grads = _mask_grads(model, task, corrupted, jnp.asarray(alphas, jnp.float32), metric)
    return np.asarray(graph_of(model.graph_shape).to_vector(grads), np.float64)


def eap_scores(
    model, task, *, metric: str, zero_ablation: bool = False, corrupted=None, ablation=None
) -> np.ndarray:
    """EAP: the gradient of the metric with respect to every edge's mask at the full mask,
    `(edge,)` in edge-id order.

    **Arguments:**

    - `model`, `task`: the [`jacdc.models.Transformer`][] and a [`jacdc.tasks.Task`][] split.
    - `metric`: a key of `task.metrics`.
    - `zero_ablation`: differentiate towards zero ablation instead of the corrupted run.
    - `corrupted`: precomputed [`jacdc.models.Sources`][] (overrides `zero_ablation`).
    - `ablation`: `"corrupted"`, `"zero"`, `"mean"`, `"mean-positions"` or a
        [`jacdc.Ablation`][]: the run the scores differentiate towards.
    """
    return _scores(model, task, metric, zero_ablation, [1.0], corrupted, ablation)


def eap_ig_scores(
    model,
    task,
    *,
    metric: str,
    steps: int = 5,
    zero_ablation: bool = False,
    corrupted=None,
    ablation=None,
) -> np.ndarray:
    """EAP-IG on the mask path with `steps` points `alpha_k = k / steps` (see the module
    docstring); arguments as [`eap_scores`][]."""
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer, got {steps!r}.")
    alphas = np.arange(1, steps + 1) / steps
    return _scores(model, task, metric, zero_ablation, alphas, corrupted, ablation)


def circuit_from_scores(
    scores: np.ndarray,
    *,
    top_k: int | None = None,
    threshold: float | None = None,
    absolute: bool = True,
) -> np.ndarray:
    """The circuit (bool over edge ids) of the `top_k` edges, or of the edges whose importance
    exceeds `threshold` (exactly one of the two). Importance is `|score|` (`absolute=True`) or
    `-score` (the first-order metric increase when the edge is removed). Ties in top-k go to
    the lower edge id."""
    scores = np.asarray(scores, np.float64)
    if (top_k is None) == (threshold is None):
        raise ValueError("Give exactly one of `top_k` and `threshold`.")
    importance = np.abs(scores) if absolute else -scores
    if threshold is not None:
        return importance > threshold
    if not 0 <= top_k <= scores.size:
        raise ValueError(f"top_k must lie in [0, {scores.size}], got {top_k}.")
    order = np.lexsort((np.arange(scores.size), -importance))
    present = np.zeros(scores.size, bool)
    present[order[:top_k]] = True
    return present
