"""ROC curves and AUCs of discovered circuits against a canonical circuit, as in the ACDC paper.

The procedure is the original repository's (`roc_plot_generator.py` and `make_plotly_plots.py`),
reference §6:

- **Edge level**: each circuit is a set of present *counted* edges (ADDITION and DIRECT edges;
  placeholders never count). TPR = TP / (TP + FN), FPR = FP / (FP + TN), over all counted edges.
- **Node level**: a node is present if it touches at least one present counted edge. The node
  universe is the one the original `filter_nodes` leaves: every graph node except the MLP inputs,
  i.e. per head 7 nodes (`hook_{q,k,v}_input`, `attn.hook_{q,k,v}`, `attn.hook_result`; the
  inputs are *not* merged with the q/k/v nodes), per layer `hook_mlp_out`, the embedding node(s)
  and `hook_resid_post` (1,022 nodes for GPT-2 small, 226 for attn-only-4l, 35 for tracr-reverse,
  19 for tracr-proportion). Because only counted edges make a node present:
    - a head's `hook_q` node is present iff its direct edge `q_input -> q` is;
    - its `hook_q_input` node iff that direct edge or any edge into the q input is;
    - its `hook_result` node iff it has a present outgoing edge (q/k/v -> result are
      placeholders);
    - an MLP's `hook_mlp_out` node iff it has a present outgoing edge (mlp_in is dropped, so
      edges *into* an MLP mark nothing);
    - an embedding node iff it has a present outgoing edge; `hook_resid_post` iff it has a present
      incoming edge.
- **Curve**: add (0, 0) and (1, 1); drop every point that another point beats with strictly
  lower FPR *and* strictly higher TPR (Pareto filter); sort by FPR, then TPR.
- **Pessimistic AUC** (the paper's number): the area under the step curve that goes right first,
  then up: `sum_{i>=1} (1 - FPR_i) (TPR_i - TPR_{i-1})`. The **trapezoid AUC** of the same
  filtered curve is reported beside it.
"""

import dataclasses
import functools as ft
from collections.abc import Iterable, Sequence

import numpy as np

from ._graph import QKV, Graph, GraphShape, graph_of


# ---- node universe ------------------------------------------------------------------------


def node_names(shape: GraphShape) -> tuple[str, ...]:
    """The node universe of the node-level ROC (all graph nodes except MLP inputs), in
    topological order: embeddings, then per layer the heads' 7 nodes each and the MLP output,
    then the output node."""
    names = [shape.src_name(s) for s in range(shape.n_embed)]
    for layer in range(shape.n_layers):
        for head in range(shape.n_heads):
            names += [f"blocks.{layer}.hook_{c}_input[{head}]" for c in QKV]
            names += [f"blocks.{layer}.attn.hook_{c}[{head}]" for c in QKV]
            names.append(f"blocks.{layer}.attn.hook_result[{head}]")
        if shape.has_mlp:
            names.append(f"blocks.{layer}.hook_mlp_out")
    names.append(f"blocks.{shape.n_layers - 1}.hook_resid_post")
    return tuple(names)


@dataclasses.dataclass(frozen=True)
class _NodeIndex:
    names: tuple[str, ...]
    # Per edge, the (at most two) universe nodes it touches; -1 where the endpoint is an MLP
    # input (not in the universe).
    endpoints: np.ndarray  # (edge, 2) int
    # Node -> incident edges, flattened and grouped by node, for `np.logical_or.reduceat`.
    incident: np.ndarray
    starts: np.ndarray


@ft.lru_cache(maxsize=64)
def _node_index(shape: GraphShape) -> _NodeIndex:
    graph = graph_of(shape)
    names = node_names(shape)
    node_id = {n: i for i, n in enumerate(names)}
    endpoints = np.full((len(graph), 2), -1, np.int64)
    for i, edge in enumerate(graph.edges):
        endpoints[i, 0] = node_id[graph.sender_name(edge)]
        if edge.field != "mlp":
            endpoints[i, 1] = node_id[graph.receiver_name(edge)]
    pairs = [(n, e) for e in range(len(graph)) for n in endpoints[e] if n >= 0]
    pairs.sort()
    incident = np.array([e for _, e in pairs], np.int64)
    owners = np.array([n for n, _ in pairs], np.int64)
    if set(owners.tolist()) != set(range(len(names))):
        raise AssertionError("internal: a node of the ROC universe touches no counted edge")
    starts = np.searchsorted(owners, np.arange(len(names)))
    return _NodeIndex(names, endpoints, incident, starts)


def present_nodes(shape: GraphShape, present: np.ndarray) -> np.ndarray:
    """Which nodes of [`node_names`][] each circuit touches.

    **Arguments:**

    - `shape`: the graph's [`jacdc.GraphShape`][].
    - `present`: bool `(..., edge)`, present counted edges in edge-id order.

    **Returns:** bool `(..., node)`.
    """
    index = _node_index(shape)
    present = np.asarray(present, bool)
    n_edges = index.endpoints.shape[0]
    if present.shape[-1:] != (n_edges,):
        raise ValueError(
            f"Expected per-edge booleans with last axis {n_edges} (the graph's edge count), got "
            f"shape {present.shape}."
        )
    gathered = present[..., index.incident]
    return np.logical_or.reduceat(gathered, index.starts, axis=-1)


# ---- circuits and statistics --------------------------------------------------------------


def as_edge_vector(graph: Graph, edges: "Iterable[int | str] | np.ndarray") -> np.ndarray:
    """A bool vector over edge ids from edge ids, edge names, or a bool vector."""
    if isinstance(edges, np.ndarray) and edges.dtype == bool:
        if edges.shape != (len(graph),):
            raise ValueError(f"Expected {len(graph)} booleans, got shape {edges.shape}.")
        return edges.copy()
    out = np.zeros(len(graph), bool)
    for e in edges:
        out[e if isinstance(e, (int, np.integer)) else graph.edge_id(e)] = True
    return out


def rates(truth: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of each row of `present` (bool `(..., n)`) against `truth` (bool `(n,)`)."""
    truth = np.asarray(truth, bool)
    present = np.asarray(present, bool)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"The canonical circuit must contain some but not all items; it has {n_pos} of "
            f"{truth.size}."
        )
    tp = (present & truth).sum(-1)
    fp = (present & ~truth).sum(-1)
    return fp / n_neg, tp / n_pos


# ---- curve and AUC ------------------------------------------------------------------------


def roc_curve(
    fpr: Sequence[float] | np.ndarray, tpr: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's ROC curve: the points plus (0, 0) and (1, 1), NaNs dropped, Pareto-filtered
    (a point goes if another has strictly lower FPR and strictly higher TPR), sorted by FPR then
    TPR. Returns `(fpr, tpr)`."""
    fpr = np.concatenate([[0.0, 1.0], np.asarray(fpr, np.float64).ravel()])
    tpr = np.concatenate([[0.0, 1.0], np.asarray(tpr, np.float64).ravel()])
    if fpr.shape != tpr.shape:
        raise ValueError(f"fpr and tpr differ in length: {fpr.size - 2} vs {tpr.size - 2}.")
    ok = ~(np.isnan(fpr) | np.isnan(tpr))
    fpr, tpr = fpr[ok], tpr[ok]
    # Best TPR among points with strictly lower FPR, for every point.
    order = np.lexsort((tpr, fpr))
    fpr, tpr = fpr[order], tpr[order]
    uniq, first = np.unique(fpr, return_index=True)
    group_max = np.maximum.reduceat(tpr, first)
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(group_max)[:-1]])
    group = np.searchsorted(uniq, fpr)
    keep = ~(best_before[group] > tpr)
    return fpr[keep], tpr[keep]


def pessimistic_auc(fpr: Sequence[float] | np.ndarray, tpr: Sequence[float] | np.ndarray) -> float:
    """The paper's AUC: `sum_{i>=1} (1 - FPR_i) (TPR_i - TPR_{i-1})` over [`roc_curve`][]."""
    f, t = roc_curve(fpr, tpr)
    dt = np.diff(t)
    if (dt < 0).any():
        raise AssertionError("internal: TPR not monotone after the Pareto filter")
    return float(np.sum((1.0 - f[1:]) * dt))


def trapezoid_auc(fpr: Sequence[float] | np.ndarray, tpr: Sequence[float] | np.ndarray) -> float:
    """The trapezoid-rule area under [`roc_curve`][] (always >= the pessimistic AUC)."""
    f, t = roc_curve(fpr, tpr)
    return float(np.sum(np.diff(f) * (t[1:] + t[:-1]) / 2.0))


# ---- putting it together ------------------------------------------------------------------


@dataclasses.dataclass
class ROCResult:
    """Edge- and node-level ROC of a sweep of circuits.

    - `edge_fpr`, `edge_tpr`, `node_fpr`, `node_tpr`: one entry per circuit, in the given order
        (no endpoints, no filtering).
    - `n_edges`, `n_nodes`: the size of each circuit.
    - `edge_auc`, `node_auc`: pessimistic AUCs (the paper's numbers).
    - `edge_auc_trapezoid`, `node_auc_trapezoid`: trapezoid AUCs of the same curves.
    """

    edge_fpr: np.ndarray
    edge_tpr: np.ndarray
    node_fpr: np.ndarray
    node_tpr: np.ndarray
    n_edges: np.ndarray
    n_nodes: np.ndarray
    edge_auc: float
    node_auc: float
    edge_auc_trapezoid: float
    node_auc_trapezoid: float

    def to_json(self) -> dict:
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = value.tolist() if isinstance(value, np.ndarray) else value
        return out


def roc(
    shape: GraphShape,
    canonical: "Iterable[int | str] | np.ndarray",
    circuits: "np.ndarray | Sequence[np.ndarray]",
) -> ROCResult:
    """Edge- and node-level ROC and AUC of a sweep of circuits against a canonical circuit.

    **Arguments:**

    - `shape`: the model's [`jacdc.GraphShape`][].
    - `canonical`: the canonical circuit as edge names, edge ids, or a bool vector over edge ids.
    - `circuits`: bool `(circuit, edge)` (or a list of bool vectors): the present counted edges
        of each circuit of the sweep.

    **Returns:** a [`jacdc.ROCResult`][].
    """
    graph = graph_of(shape)
    truth = as_edge_vector(graph, canonical)
    present = np.asarray(circuits, bool)
    if present.ndim == 1:
        present = present[None]
    if present.ndim != 2 or present.shape[1] != len(graph):
        raise ValueError(
            f"`circuits` must be bool (circuit, {len(graph)}), got shape {present.shape}."
        )
    edge_fpr, edge_tpr = rates(truth, present)
    nodes = present_nodes(shape, present)
    node_fpr, node_tpr = rates(present_nodes(shape, truth), nodes)
    return ROCResult(
        edge_fpr=edge_fpr,
        edge_tpr=edge_tpr,
        node_fpr=node_fpr,
        node_tpr=node_tpr,
        n_edges=present.sum(-1),
        n_nodes=nodes.sum(-1),
        edge_auc=pessimistic_auc(edge_fpr, edge_tpr),
        node_auc=pessimistic_auc(node_fpr, node_tpr),
        edge_auc_trapezoid=trapezoid_auc(edge_fpr, edge_tpr),
        node_auc_trapezoid=trapezoid_auc(node_fpr, node_tpr),
    )


def top_k_circuits(
    scores: np.ndarray, ks: "Sequence[int] | None" = None, *, max_circuits: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k circuits of a per-edge score (higher = more important; ties broken by edge id).

    `ks` defaults to every k in 0..n if n < `max_circuits`, else about `max_circuits` sizes
    spaced geometrically (always including 0 and n). Returns `(ks, present)` with `present`
    bool `(len(ks), n)`.
    """
    scores = np.asarray(scores, np.float64)
    n = scores.size
    if ks is None:
        if n < max_circuits:
            ks = np.arange(n + 1)
        else:
            ks = np.unique(np.round(np.geomspace(1, n, max_circuits - 1)).astype(np.int64))
            ks = np.concatenate([[0], ks])
    ks = np.asarray(ks, np.int64)
    if ks.size and (ks.min() < 0 or ks.max() > n):
        raise ValueError(f"Circuit sizes must lie in [0, {n}], got {ks.min()}..{ks.max()}.")
    rank = np.empty(n, np.int64)
    rank[np.lexsort((np.arange(n), -scores))] = np.arange(n)
    return ks, rank[None, :] < ks[:, None]
