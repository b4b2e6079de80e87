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


class VanishingGradientError(ValueError):
    """The metric's gradient vanishes where the method differentiates, so its scores carry no
    information (e.g. EAP with KL or L2 to the model's own outputs, which are minimal, with
    zero gradient, at the full model)."""


# Scores this small next to the metric's total effect (full model vs. everything ablated) are
# float noise: the gradient vanishes. Real attributions are many orders of magnitude larger.
VANISHING_RATIO = 1e-5


def _scores(
    model, task, metric, zero_ablation, alphas, corrupted, check: bool = True, ablation=None
) -> np.ndarray:
    if metric not in task.metrics:
        raise ValueError(f"Unknown metric {metric!r}; the task has {sorted(task.metrics)}.")
    if corrupted is None:
        corrupted = ablation_sources(model, task, zero_ablation, ablation=ablation)
    grads = _mask_grads(model, task, corrupted, jnp.asarray(alphas, jnp.float32), metric)
    scores = np.asarray(graph_of(model.graph_shape).to_vector(grads), np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError(
            f"Some attribution scores are not finite ({int(np.sum(~np.isfinite(scores)))} of "
            f"{scores.size}): the model or data give NaN/inf values. Check the weights and data."
        )
    if check:
        full = EdgeMask.full(model.graph_shape)
        empty = jax.tree.map(jnp.zeros_like, full)
        values = [float(metric_value(model, task, m, corrupted, metric)) for m in (full, empty)]
        if not all(np.isfinite(values)):
            raise ValueError(f"The metric {metric!r} is not finite ({values}); check the data.")
        effect = abs(values[1] - values[0])
        biggest = float(np.max(np.abs(scores))) if scores.size else 0.0
        if biggest == 0.0 or biggest <= VANISHING_RATIO * effect:
            raise VanishingGradientError(
                f"The gradient of {metric!r} vanishes at the points this method differentiates "
                f"(largest |score| {biggest:.3g} against a total effect of {effect:.3g}), so the "
                "scores are noise and the ranking meaningless; KL and L2 to the model's own "
                "outputs are minimal at the full model."
            )
    return scores


def eap_scores(
    model,
    task,
    *,
    metric: str,
    zero_ablation: bool = False,
    corrupted=None,
    ablation=None,
    check: bool = True,
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
    - `check`: raise [`VanishingGradientError`][] when every score is float noise next to the
        metric's total effect (largest `|score|` at most `VANISHING_RATIO` times
        `|metric(empty) - metric(full)|`, or exactly 0): with KL or L2 to the model's own
        outputs, which are minimal at the full model, EAP's gradient vanishes. Use a task
        metric (logit difference, ...) or [`eap_ig_scores`][] instead.

    Non-finite scores are always an error.
    """
    return _scores(model, task, metric, zero_ablation, [1.0], corrupted, check, ablation)


def eap_ig_scores(
    model,
    task,
    *,
    metric: str,
    steps: int = 5,
    zero_ablation: bool = False,
    corrupted=None,
    ablation=None,
    check: bool = True,
) -> np.ndarray:
    """EAP-IG on the mask path with `steps` points `alpha_k = k / steps` (see the module
    docstring); arguments as [`eap_scores`][]."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer, got {steps!r}.")
    alphas = np.arange(1, steps + 1) / steps
    return _scores(model, task, metric, zero_ablation, alphas, corrupted, check, ablation)


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
    if not np.all(np.isfinite(scores)):
        raise ValueError("The scores hold NaN/inf values; a circuit cannot be read off them.")
    importance = np.abs(scores) if absolute else -scores
    if threshold is not None:
        if (
            isinstance(threshold, bool)
            or not np.isfinite(threshold)
            or (absolute and threshold < 0)
        ):
            raise ValueError(
                f"The score threshold must be a finite number >= 0, got {threshold!r} "
                "(importance is |score|, so a negative threshold keeps every edge)."
            )
        return importance > threshold
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
        raise ValueError(f"top_k must be an integer, got {top_k!r}.")
    if not 0 <= top_k <= scores.size:
        raise ValueError(f"top_k must lie in [0, {scores.size}], got {top_k}.")
    order = np.lexsort((np.arange(scores.size), -importance))
    present = np.zeros(scores.size, bool)
    present[order[:top_k]] = True
    return present
