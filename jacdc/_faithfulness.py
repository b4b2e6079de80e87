"""Faithfulness curves and MIB's circuit-localisation summaries (CPR and CMD).

Mueller et al. 2025 (MIB), reference §9. For the circuit `C_k` of the `k` highest-scoring edges,

    f(k) = (m(C_k) - m(empty)) / (m(full) - m(empty)),

where `m` is the task metric of the masked model (any sign convention: the ratio does not
change when the metric is negated, so jacdc's minimised metrics are used as they are), `full` is
the all-edges circuit (the clean model) and `empty` the no-edges circuit (the corrupted or
zero-ablated run). The x axis is the fraction of counted edges kept, `k = round(fraction * n)`.

- **CPR** (circuit performance ratio, higher is better) = area under `f` over the fractions;
- **CMD** (circuit-model difference, lower is better) = area under `|1 - f|`.

Both areas use the trapezoid rule over the given fractions (MIB's default fractions, from 0.1%
to 100% of the edges, are the default here), in linear fraction units, so a curve that is 1
everywhere from fraction 0 to 1 has CPR 1 and CMD 0.
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._graph import graph_of
from ._patching import ablation_sources, metric_of_mask


MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class Faithfulness(NamedTuple):
    """A faithfulness curve: `fractions`, circuit sizes `ks`, the metric of each circuit
    (`values`), of the full and the empty circuit, the curve `f`, and its `cpr` and `cmd`."""

    fractions: np.ndarray
    ks: np.ndarray
    values: np.ndarray
    full: float
    empty: float
    f: np.ndarray
    cpr: float
    cmd: float


def _area(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def cpr_cmd(
    fractions: Sequence[float] | np.ndarray, f: Sequence[float] | np.ndarray
) -> tuple[float, float]:
    """CPR (area under `f`) and CMD (area under `|1 - f|`) by the trapezoid rule."""
    x = np.asarray(fractions, np.float64)
    y = np.asarray(f, np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError(
            f"Need matching 1-D fractions and f with >= 2 points, got {x.shape}, {y.shape}."
        )
    if np.any(np.diff(x) <= 0):
        raise ValueError("Fractions must be strictly increasing.")
    return _area(x, y), _area(x, np.abs(1.0 - y))


def faithfulness_curve(
    model,
    task,
    scores: np.ndarray,
    metric: str,
    zero_ablation: bool = False,
    fractions: Sequence[float] | np.ndarray = MIB_FRACTIONS,
    ablation=None,
) -> Faithfulness:
    """The faithfulness curve of the top-k circuits of per-edge `scores` (higher = more
    important; pass `|score|` for signed attributions such as EAP). Ties go to the lower edge
    id. All circuits are evaluated as one vmapped batch of masks.

    **Arguments:**

    - `model`, `task`: the [`jacdc.models.Transformer`][] and the split to evaluate on.
    - `scores`: `(edge,)` importance per counted edge, in edge-id order.
    - `metric`: a key of `task.metrics`.
    - `zero_ablation`: removed edges see zero ablation instead of the corrupted run.
    - `fractions`: increasing fractions of the edge count in `[0, 1]`.
    - `ablation`: what removed edges read (a name or a [`jacdc.Ablation`][]; see
        [`jacdc.ablation_sources`][]); `zero_ablation=True` is `"zero"`.
    """
    graph = graph_of(model.graph_shape)
    scores = np.asarray(scores, np.float64)
    if scores.shape != (len(graph),):
        raise ValueError(f"Expected {len(graph)} scores (one per edge), got {scores.shape}.")
    if metric not in task.metrics:
        raise ValueError(f"Unknown metric {metric!r}; the task has {sorted(task.metrics)}.")
    x = np.asarray(fractions, np.float64)
    if x.ndim != 1 or x.size == 0 or x.min() < 0 or x.max() > 1:
        raise ValueError(f"fractions must be a non-empty list in [0, 1], got {x.tolist()}.")
    n = len(graph)
    ks = np.round(x * n).astype(np.int64)
    order = np.lexsort((np.arange(n), -scores))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    present = np.concatenate(
        [rank[None, :] < ks[:, None], np.ones((1, n), bool), np.zeros((1, n), bool)]
    )
    corrupted = ablation_sources(model, task, zero_ablation, ablation=ablation)
    masks = graph.from_vector(jnp.asarray(present, jnp.float32))
    values = np.asarray(
        jax.vmap(lambda m: metric_of_mask(model, task, m, corrupted, metric))(masks), np.float64
    )
    full, empty = float(values[-2]), float(values[-1])
    values = values[:-2]
    denom = full - empty
    if denom == 0:
        raise ValueError(
            "The full and the empty circuit have the same metric value; faithfulness is "
            "undefined for this task and ablation."
        )
    f = (values - empty) / denom
    cpr, cmd = cpr_cmd(x, f) if x.size > 1 else (float("nan"), float("nan"))
    return Faithfulness(x, ks, values, full, empty, f, cpr, cmd)
