"""HISP ("Are Sixteen Heads Really Better than One?", Michel et al. 2019), as in the ACDC paper.

Reference §5.2. The units are SP's (each head's q, k, v outputs and each MLP output, see
[`jacdc.NodeMask`][]):

1. Every unit gets a multiplicative mask fixed at 1 and no cache (its output is `m * x`), so
   `d metric / d m = sum over positions and dimensions of activation x gradient`: an attribution
   against a *zero* baseline, whatever the ablation used later.
2. The score of unit `u` is `sum_e |d metric_e / d m_u|` over the metric's **elements** `e`, the
   values the original's `metric(..., return_one_element=False)` returns ([`metric_elements`][]):
   one per example for IOI, Greater-Than and Docstring, one per (row, scored position) for
   Induction's KL and NLL, one per (example, position, output dimension) for tracr's `l2`. Each
   example has its own copy of the unit masks; one backward pass per element index (a single
   one when each example has one element). For `l2` and `kl_div` the reference (the model's own
   clean output) is recomputed in the same compiled program as the gradient, as the original's
   was by the same forward: L2's gradient at the clean model is then exactly 0 (the original's
   tracr HISP scores are all 0), not float noise.
3. Scores are normalised within each layer by the L2 norm of that layer's concatenated q, k, v
   and MLP scores, clamped below at `1e-6` as in the original (`norm.clamp(min=1e-6)`): a layer
   whose scores are all tiny is divided by `1e-6`, not scaled up to norm 1.
4. Units are pruned in ascending order of normalised score; the circuit after pruning the first
   `j` units is one point of the ROC (`j = 0..n_units`), scored by the cumulative prune score.

**NaN on CPU (fixed).** XLA:CPU's YNNPACK library fusions (on by default in jaxlib 0.10)
returned NaN for every unit of GPT-2-architecture models at batch 100 under `jit`. The model
and its maths have no NaN source (no log of 0, no 0 x inf: the run without `jit` is finite),
and the compiled HLO was identical between runs, yet whether the result was NaN changed from
process to process (with the Python hash seed, i.e. the heap layout) and never within one: a
kernel reading memory it did not write. Narrowed down on a 2-layer, d_model 8 model with GPT-2's
vocabulary at batch 100, sequence 15 (1 layer or batch 1 stayed finite): with only YNNPACK's
*reduce* fusions enabled (`xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE`)
every run was NaN; with only its dot or only its elementwise fusions, or none, every run was
finite. HISP's gradient is therefore compiled without YNNPACK fusions on the CPU backend
(`xla_cpu_experimental_ynn_fusion_type=""`; tests
`tests/test_hisp.py::test_finite_on_gpt2_shaped_model_at_batch_100` and
`::test_cpu_compilation_has_no_ynn_fusion`).

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
from jaxtyping import Array, Float

from ._sp import (
    NodeMask,
    circuit_from_units,
    node_edge_mask,
    unit_names,
    unit_vector,
    units_from_vector,
)
from ._xla import CPU_OPTIONS


NORM_CLAMP = 1e-6
"""The original's lower bound on each layer's score norm (`norm.clamp(min=1e-6)`)."""

# XLA:CPU compile option that turns the YNNPACK fusions off (see the module docstring); for
# correctness here, so it ignores `JACDC_CPU_YNN`.
_CPU_OPTIONS = CPU_OPTIONS


def metric_elements(metric, logits: Float[Array, "batch pos vocab"]) -> Float[Array, "batch elem"]:
    """The values the original's `metric(..., return_one_element=False)` returns, per example:
    `(batch, n_elements)`.

    - [`jacdc.tasks.L2Metric`][]: every squared difference, per position and output dimension
        (weighted by the position weight);
    - [`jacdc.tasks.KLMetric`][], `NLLMetric`: one value per (example, position), times the
        position weight (0 at unscored positions, so those contribute nothing);
    - any other metric: its `per_example` value (one element per example). A metric may define
        its own `elements(logits)` method instead.
    """
    from jacdc.tasks import KLMetric, L2Metric
    from jacdc.tasks._common import NLLMetric

    if hasattr(metric, "elements"):
        out = metric.elements(logits)
    elif isinstance(metric, L2Metric):
        diff = logits[..., metric.dims] - metric.clean_logits[..., metric.dims]
        out = diff * diff * metric.weights[..., None]
    elif isinstance(metric, KLMetric):
        out = metric._kl(logits) * metric.weights
    elif isinstance(metric, NLLMetric):
        out = metric._nll(logits) * metric.weights
    else:
        out = metric.per_example(logits)
    return out.reshape(out.shape[0], -1)


def _abs_element_grads(model, task, metric: str, corrupted) -> NodeMask:
    """Per example, `sum_e |d metric_e / d m_u|` over that example's elements (leading batch
    axis on every leaf), against the baseline `corrupted` (zeros, or a mean ablation)."""
    shape = model.graph_shape
    units = NodeMask.full(shape, 1.0, (task.batch,))
    positions = jnp.arange(task.seq)
    prefix = jnp.zeros((0, task.seq, model.cfg.d_model), jnp.float32)

    def logits_of(units):
        def one(tokens, corr, unit):
            mask = node_edge_mask(shape, unit)
            return model.run_from(0, tokens, mask, corr, prefix, positions, task.logit_positions)

        return jax.vmap(one)(task.clean, corrupted, units)

    # L2 and KL measure the distance to the model's own clean outputs. The original computed
    # that reference with the very forward it differentiated, so L2's gradient at the clean
    # model is exactly 0 (all tracr HISP scores are 0 in its stored runs). The reference is
    # therefore recomputed here, in the same compiled program, from the same all-ones masks.
    from jacdc.tasks import KLMetric, L2Metric

    m = task.metrics[metric]
    if isinstance(m, (L2Metric, KLMetric)):
        ref = jax.lax.stop_gradient(logits_of(units))
        if isinstance(m, L2Metric):
            m = eqx.tree_at(lambda x: x.clean_logits, m, ref)
        else:
            m = eqx.tree_at(lambda x: x.clean_logprobs, m, jax.nn.log_softmax(ref, axis=-1))

    def elements(units):
        return metric_elements(m, logits_of(units))

    values, pullback = jax.vjp(elements, units)
    n_elem = values.shape[1]

    def one_element(e):
        # Example i's element e depends on example i's masks only, so one pullback of the
        # e-th element of every example gives all their gradients at once.
        (grad,) = pullback(jnp.zeros_like(values).at[:, e].set(1.0))
        return jax.tree.map(jnp.abs, grad)

    if n_elem == 1:
        return one_element(0)
    return jax.tree.map(lambda g: g.sum(0), jax.lax.map(one_element, jnp.arange(n_elem)))


def _compiled_grads(model, task, metric: str, corrupted):
    params, static = eqx.partition((model, task, corrupted), eqx.is_array)
    static_leaves, static_def = jax.tree.flatten(static)
    shapes = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(params))
    precision = jax.config.jax_default_matmul_precision  # part of the compiled program
    key = (static_def, tuple(static_leaves), jax.tree.structure(params), shapes, metric, precision)
    compiled = _COMPILED.get(key)
    if compiled is None:

        def run(params):
            model, task, corrupted = eqx.combine(params, static)
            return _abs_element_grads(model, task, metric, corrupted)

        options = _CPU_OPTIONS if jax.default_backend() == "cpu" else None
        compiled = jax.jit(run).lower(params).compile(options)
        _COMPILED[key] = compiled
    return compiled(params)


_COMPILED: dict = {}


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


def hisp_scores(model, task, *, metric: str, ablation=None) -> tuple[np.ndarray, np.ndarray]:
    """Raw and per-layer-normalised HISP scores, one per unit (order of
    [`jacdc.unit_names`][]). `ablation`: the baseline the unit gradients are taken against:
    zero (the original's, and the default for `None`, `"zero"` and `"corrupted"`, see the
    module docstring) or, for `"mean"` / `"mean-positions"` (or a mean [`jacdc.Ablation`][]),
    the reference mean of [`jacdc.ablation_sources`][]."""
    from jacdc.models import empty_sources

    from ._patching import ablation_sources, resolve_ablation

    if metric not in task.metrics:
        raise ValueError(f"Unknown metric {metric!r}; the task has {sorted(task.metrics)}.")
    shape = model.graph_shape
    ab = resolve_ablation(False, ablation)
    if ab.is_mean:
        corrupted = ablation_sources(model, task, ablation=ab)
    else:
        corrupted = empty_sources(model.cfg, task.seq, (task.batch,))
    grads = _compiled_grads(model, task, metric, corrupted)
    raw = np.abs(unit_vector(shape, jax.tree.map(np.asarray, grads))).sum(0).astype(np.float64)
    if not np.all(np.isfinite(raw)):
        raise ValueError(
            f"HISP: {int(np.sum(~np.isfinite(raw)))} unit scores are not finite; the model or "
            "data give NaN/inf values. Check the weights and the dataset."
        )
    per_layer = raw.reshape(shape.n_layers, -1)
    norms = np.linalg.norm(per_layer, axis=1, keepdims=True)
    normed = per_layer / np.maximum(norms, NORM_CLAMP)
    return raw, normed.reshape(-1)


def hisp(model, task, *, metric: str, ablation=None) -> HISPResult:
    """Runs HISP on `task` (the validation split): scores every unit and returns the nested
    circuits of the ascending pruning order. See the module docstring; `ablation` as in
    [`hisp_scores`][]."""
    shape = model.graph_shape
    raw, scores = hisp_scores(model, task, metric=metric, ablation=ablation)
    order = np.argsort(scores, kind="stable")
    n = scores.size
    # keep[j, u]: is unit u still kept after pruning j units?
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    keep = rank[None, :] >= np.arange(n + 1)[:, None]
    circuits = circuit_from_units(shape, units_from_vector(shape, keep, fill=True))
    cumulative = np.concatenate([[0.0], np.cumsum(scores[order])])
    return HISPResult(unit_names(shape), raw, scores, order, cumulative, circuits)
