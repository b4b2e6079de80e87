"""ACDC (Conmy et al., 2023): greedy edge pruning by activation patching, exact and fast.

Both engines walk the graph's nodes from the output backwards, in the original implementation's
order: the output (`hook_resid_post`), then per layer from the last: `mlp_out`, `mlp_in`, every
head's `result` (heads H-1 down to 0), `hook_v`, `hook_k`, `hook_q`, `hook_v_input`,
`hook_k_input`, `hook_q_input` (each H-1 down to 0). At a node, each incoming edge is tested in
insertion order (nearest layer first; within a layer the MLP, then heads H-1..0; the embeddings
last, token before position): the edge is tentatively removed, the metric of the resulting circuit
`new` is computed on the clean batch, and the edge is removed for good iff
`new - current < threshold` (strictly; with `abs_value`, `|new - current| < threshold`), where
`current` is the metric of the current circuit (not of the original model). A node with no
present outgoing edge is skipped: its incoming edges are removed unchecked. Placeholder edges
(`q -> result`, `mlp_in -> mlp_out`) are never tested; they are removed when their child node is
skipped, which is how a dead head loses its q/k/v edges.

- The **reference engine** does exactly that with one full forward pass per tested edge, plus
  the original's bookkeeping passes (a refresh per node, per sender group and at the end of a
  step, two per skipped node). It is the oracle.
- The **fast engine** reaches the same decisions with: suffix recomputation (while edges into a
  layer-`l` receiver are tested, every earlier source computes what it computes in the clean run,
  because ACDC has not touched any earlier receiver yet; so the forward starts at that receiver's
  stage from cached clean activations); speculative chains (candidate `j` = the current circuit
  with the next `j` edges all removed; all candidates are one vmapped call; the longest prefix
  that passes is accepted and the first failure is kept); a scan-over-layers forward whose
  stage is a traced integer, so one compilation serves every stage (`layers="unrolled"`: one
  compilation per stage, the reference path); sweeps as one
  lock-step batch of independent ACDC states sharing every call; and unembedding only the
  positions the metric reads.
"""

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import numpy as np

from ._evaluators import TRACE_COUNTS as TRACE_COUNTS, Evaluator
from ._graph import QKV, Graph, GraphShape, graph_of
from ._patching import ablation_sources, metric_of_mask, resolve_ablation


# ---------------------------------------------------------------------------------------------
# The node walk
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Node:
    """One step of the ACDC walk.

    - `kind`: `resid_post`, `mlp_out`, `mlp_in`, `result`, `q`/`k`/`v` (the head's vectors,
      receiving the direct edge) or `q_input`/`k_input`/`v_input`.
    - `incoming`: counted edge ids tested at this node, in test order, grouped by sender hook
      name (`groups`: one tuple per group). Empty for placeholder nodes.
    - `stage`: where the forward must restart to test these edges (see
      `Transformer.run_from`).
    """

    name: str
    kind: str
    layer: int
    head: int
    groups: tuple[tuple[int, ...], ...]
    stage: int

    @property
    def incoming(self) -> tuple[int, ...]:
        return tuple(i for g in self.groups for i in g)


def _sender_groups(graph: Graph, field: str, prefix_index: tuple, n_src: int) -> tuple:
    """Edge ids into one receiver, grouped by sender hook name, nearest layer first."""
    shape = graph.shape
    groups = []
    max_layer = max((shape.src_layer(s) for s in range(n_src)), default=-1)
    for layer in range(max_layer, -1, -1):
        if shape.has_mlp and shape.mlp_src(layer) < n_src:
            groups.append((graph.id_of[_edge(field, prefix_index, shape.mlp_src(layer))],))
        heads = [
            graph.id_of[_edge(field, prefix_index, shape.head_src(layer, h))]
            for h in range(shape.n_heads - 1, -1, -1)
            if shape.head_src(layer, h) < n_src
        ]
        if heads:
            groups.append(tuple(heads))
    # Token embedding before position embedding: each is its own hook name.
    groups.extend((graph.id_of[_edge(field, prefix_index, s)],) for s in range(shape.n_embed))
    return tuple(groups)


def _edge(field, prefix_index, src):
    from ._graph import Edge

    return Edge(field, tuple(prefix_index) + (src,))


def acdc_nodes(shape: GraphShape) -> list[Node]:
    """The nodes of the walk, in visiting order (embedding nodes, which have nothing to test,
    are left out)."""
    graph = graph_of(shape)
    L, H = shape.n_layers, shape.n_heads
    nodes = [
        Node(
            f"blocks.{L - 1}.hook_resid_post",
            "resid_post",
            L,
            -1,
            _sender_groups(graph, "out", (), shape.n_src),
            2 * L,
        )
    ]
    for layer in range(L - 1, -1, -1):
        if shape.has_mlp:
            nodes.append(
                Node(f"blocks.{layer}.hook_mlp_out", "mlp_out", layer, -1, (), 2 * layer + 1)
            )
            nodes.append(
                Node(
                    f"blocks.{layer}.hook_mlp_in",
                    "mlp_in",
                    layer,
                    -1,
                    _sender_groups(graph, "mlp", (layer,), shape.n_src_before_mlp(layer)),
                    2 * layer + 1,
                )
            )
        for h in range(H - 1, -1, -1):
            nodes.append(
                Node(f"blocks.{layer}.attn.hook_result[{h}]", "result", layer, h, (), 2 * layer)
            )
        for channel in (2, 1, 0):
            c = QKV[channel]
            for h in range(H - 1, -1, -1):
                direct = graph.id_of[_edge("direct", (layer, h), channel)]
                nodes.append(
                    Node(f"blocks.{layer}.attn.hook_{c}[{h}]", c, layer, h, ((direct,),), 2 * layer)
                )
        for channel in (2, 1, 0):
            c = QKV[channel]
            for h in range(H - 1, -1, -1):
                nodes.append(
                    Node(
                        f"blocks.{layer}.hook_{c}_input[{h}]",
                        f"{c}_input",
                        layer,
                        h,
                        _sender_groups(graph, c, (layer, h), shape.n_src_before_layer(layer)),
                        2 * layer,
                    )
                )
    return nodes


class _Circuit:
    """Host-side state of one ACDC run: counted edges and placeholder edges."""

    def __init__(self, shape: GraphShape, graph: Graph):
        self.shape = shape
        self.present = np.ones(len(graph), bool)
        self.ph_qkv = np.ones((shape.n_layers, shape.n_heads, 3), bool)  # q/k/v -> result
        self.ph_mlp = np.ones((shape.n_layers,), bool)  # mlp_in -> mlp_out
        # Edge ids by sender source, for the "has children" test of result/mlp_out nodes.
        self._out_of_src: list[np.ndarray] = [[] for _ in range(shape.n_src)]  # type: ignore
        for i, e in enumerate(graph.edges):
            if e.field != "direct":
                self._out_of_src[e.index[-1]].append(i)
        self._out_of_src = [np.array(x, np.int64) for x in self._out_of_src]
        self._graph = graph

    def has_children(self, node: Node) -> bool:
        s, k = self.shape, node.kind
        if k == "resid_post":
            return True
        if k == "mlp_out":
            return bool(self.present[self._out_of_src[s.mlp_src(node.layer)]].any())
        if k == "mlp_in":
            return bool(self.ph_mlp[node.layer])
        if k == "result":
            return bool(self.present[self._out_of_src[s.head_src(node.layer, node.head)]].any())
        if k in QKV:
            return bool(self.ph_qkv[node.layer, node.head, QKV.index(k)])
        channel = QKV.index(k[0])
        direct = self._graph.id_of[_edge("direct", (node.layer, node.head), channel)]
        return bool(self.present[direct])

    def skip(self, node: Node) -> list[int]:
        """Removes the node's incoming edges unchecked; returns the counted ids removed."""
        if node.kind == "mlp_out":
            self.ph_mlp[node.layer] = False
        elif node.kind == "result":
            self.ph_qkv[node.layer, node.head, :] = False
        removed = [i for i in node.incoming if self.present[i]]
        self.present[list(node.incoming)] = False
        return removed

    def to_state(self) -> dict:
        return {
            "present": self.present.astype(int).tolist(),
            "ph_qkv": self.ph_qkv.astype(int).tolist(),
            "ph_mlp": self.ph_mlp.astype(int).tolist(),
        }

    def load_state(self, state: dict) -> None:
        self.present = np.array(state["present"], bool)
        self.ph_qkv = np.array(state["ph_qkv"], bool).reshape(self.ph_qkv.shape)
        self.ph_mlp = np.array(state["ph_mlp"], bool).reshape(self.ph_mlp.shape)


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ACDCResult:
    """One ACDC run.

    - `present`: NumPy bools over edge ids: the circuit.
    - `threshold`, `metric_name`, `zero_ablation`, `abs_value`, `engine`: the settings.
    - `metric`: the final circuit's metric on the data it was found on.
    - `initial_metric`: the full model's metric (0 for KL).
    - `n_tests`: edges tested; `n_forward`: forward passes (reference) or candidate
      evaluations (fast); `n_calls`: device calls.
    - `log`: one record per tested or skipped edge, in order: `edge` (id), `name`, `node`,
      `before`, `after` (metric), `delta` (`after - before`, or its absolute value), `removed`,
      `skipped` (removed unchecked because its receiver had no children).
    - `wall_time`: seconds.
    - `ablation`: `"corrupted"`, `"zero"`, `"mean"` or `"mean-positions"`.
    """

    present: np.ndarray
    threshold: float
    metric_name: str
    zero_ablation: bool
    abs_value: bool
    engine: str
    metric: float
    initial_metric: float
    n_tests: int
    n_forward: int
    n_calls: int
    log: list[dict]
    graph_shape: GraphShape
    wall_time: float = 0.0
    ablation: str = "corrupted"

    @property
    def graph(self) -> Graph:
        return graph_of(self.graph_shape)

    @property
    def present_ids(self) -> list[int]:
        return [int(i) for i in np.nonzero(self.present)[0]]

    @property
    def present_names(self) -> list[str]:
        names = self.graph.names
        return [names[i] for i in self.present_ids]

    @property
    def n_edges(self) -> int:
        return int(self.present.sum())

    @property
    def mask(self):
        return self.graph.mask_from_edges(self.present_ids)

    @property
    def decisions(self) -> list[tuple[int, bool, bool]]:
        """(edge id, removed, skipped) per log record: what two engines must agree on."""
        return [(r["edge"], r["removed"], r["skipped"]) for r in self.log]


class MetricNotFiniteError(ValueError):
    pass


def _check_finite(value: float, where: str) -> None:
    if not math.isfinite(value):
        raise MetricNotFiniteError(
            f"The metric is {value} {where}. Check the task's metric and data (e.g. a log of "
            "zero probability), or the model weights."
        )


def check_thresholds(thresholds) -> None:
    """`ValueError` unless `thresholds` is a non-empty list of finite values >= 0."""
    if len(thresholds) == 0:
        raise ValueError("No thresholds given: pass at least one threshold (e.g. 0.01).")
    for t in thresholds:
        if not isinstance(t, (int, float, np.floating)) or not math.isfinite(t) or t < 0:
            raise ValueError(
                f"ACDC thresholds must be finite and >= 0, got {t!r}. (The paper sweeps "
                "10^linspace(-5, -1, 21) for tracr.)"
            )


def _validate(model, task, thresholds, metric):
    check_thresholds(thresholds)
    if metric not in task.metrics:
        raise ValueError(
            f"Unknown metric {metric!r} for this task; available: {sorted(task.metrics)}."
        )
    model.check_token_batch(task.clean, "clean tokens")
    model.check_token_batch(task.corrupted, "corrupted tokens")


# ---------------------------------------------------------------------------------------------
# Reference engine
# ---------------------------------------------------------------------------------------------


def _reference_run(
    model,
    task,
    threshold,
    *,
    metric,
    zero_ablation,
    abs_value,
    corrupted,
    progress,
    max_tests=None,
) -> ACDCResult:
    shape = model.graph_shape
    graph = graph_of(shape)
    start = time.perf_counter()
    circuit = _Circuit(shape, graph)
    counters = {"forward": 0}

    def evaluate(present: np.ndarray) -> float:
        counters["forward"] += 1
        mask = graph.from_vector(present.astype(np.float32))
        return float(metric_of_mask(model, task, mask, corrupted, metric))

    initial = evaluate(circuit.present)
    _check_finite(initial, "for the full model (no edge removed)")
    cur = initial
    log: list[dict] = []
    n_tests = 0
    for node in acdc_nodes(shape):
        cur = evaluate(circuit.present)  # the original refreshes at every step
        if node.kind != "resid_post" and not circuit.has_children(node):
            removed = circuit.skip(node)
            if removed or node.kind in ("mlp_out", "result"):
                after = evaluate(circuit.present)
                evaluate(circuit.present)
                if abs(after - cur) > 3e-3:
                    raise AssertionError(
                        f"Skipping {node.name} changed the metric by {after - cur}: "
                        "a disconnected node must not matter."
                    )
            for i in removed:
                log.append(_record(graph, i, node, cur, cur, 0.0, True, True))
            continue
        for group in node.groups:
            for i in group:
                if max_tests is not None and n_tests >= max_tests:
                    break
                trial = circuit.present.copy()
                trial[i] = False
                new = evaluate(trial)
                n_tests += 1
                _check_finite(new, f"after removing edge {graph.names[i]!r} (test {n_tests})")
                delta = new - cur
                if abs_value:
                    delta = abs(delta)
                removed = bool(delta < threshold)
                log.append(_record(graph, i, node, cur, new, delta, removed, False))
                if removed:
                    circuit.present[i] = False
                    cur = new
                if progress is not None:
                    progress(n_tests, int((~circuit.present).sum()), cur)
            cur = evaluate(circuit.present)  # refresh after each sender hook name
        cur = evaluate(circuit.present)  # end of step
        if max_tests is not None and n_tests >= max_tests:
            break
    return ACDCResult(
        present=circuit.present.copy(),
        threshold=float(threshold),
        metric_name=metric,
        zero_ablation=zero_ablation,
        abs_value=abs_value,
        engine="reference",
        metric=cur,
        initial_metric=initial,
        n_tests=n_tests,
        n_forward=counters["forward"],
        n_calls=counters["forward"],
        log=log,
        graph_shape=shape,
        wall_time=time.perf_counter() - start,
    )


def _record(graph, i, node, before, after, delta, removed, skipped) -> dict:
    return {
        "edge": int(i),
        "name": graph.names[i],
        "node": node.name,
        "before": float(before),
        "after": float(after),
        "delta": float(delta),
        "removed": bool(removed),
        "skipped": bool(skipped),
    }


# ---------------------------------------------------------------------------------------------
# Fast engine
# ---------------------------------------------------------------------------------------------


def forward_flops(model, task) -> float:
    """Approximate FLOPs of one masked forward of the task's clean batch (weights, per-receiver
    mixing of sources, attention, and the unembedding at the metric positions)."""
    cfg, shape = model.cfg, model.graph_shape
    tokens = task.batch * task.seq
    weights = cfg.n_layers * (
        4 * cfg.n_heads * cfg.d_head * cfg.d_model + 2 * (cfg.d_mlp or 0) * cfg.d_model
    )
    mixing = sum(
        3 * cfg.n_heads * shape.n_src_before_layer(layer) * 2 * cfg.d_model
        for layer in range(cfg.n_layers)
    ) + (shape.n_src * 2 * cfg.d_model)
    attention = cfg.n_layers * cfg.n_heads * 2 * task.seq * cfg.d_head
    unembed = task.batch * int(np.asarray(task.logit_positions).size) * cfg.d_model * cfg.vocab_out
    return float(2 * tokens * (weights + mixing + attention) + 2 * unembed)


def auto_candidates(model, task, n_states: int) -> int:
    """Lanes per device call: enough to fill the device, few enough not to waste compute.

    On CPU a big forward is compute-bound, so speculation can only waste work: one candidate
    per state. (With banded evaluators a call shares the weight reads among its candidates, so
    runs that keep few edges gain from more: GPT-2-small IOI shape, output-node tests 0.076 s
    with 1 candidate, 0.036 s with 4; but a run that keeps most edges throws most speculative
    candidates away: a random induction-shaped model at tau keeping 90% of edges ran 3.7 s per
    test with 4 against about 1.7-2 s per call with 1. Pass `candidates=` to choose.) Small
    models (tracr) are overhead-bound: 16 candidates per state."""
    flops = forward_flops(model, task)
    if jax.default_backend() == "cpu":
        per_state = 1 if flops > 2e8 else (4 if flops > 2e7 else 16)
    else:
        per_state = 8 if flops > 5e10 else 16
    # Identical states share candidates, so a sweep rarely needs a full set per threshold.
    return max(1, per_state * min(n_states, 4))


@dataclasses.dataclass
class _SweepState:
    """Host-side state of a lock-step sweep: one circuit, current metric, log and test count
    per threshold."""

    circuits: list[_Circuit]
    curs: list[float]
    logs: list[list[dict]]
    n_tests: list[int]

    @classmethod
    def start(cls, shape, graph, n: int, initial: float) -> "_SweepState":
        return cls([_Circuit(shape, graph) for _ in range(n)], [initial] * n,
                   [[] for _ in range(n)], [0] * n)  # fmt: skip

    def load(self, resume: dict) -> None:
        for s, saved in enumerate(resume["states"]):
            self.circuits[s].load_state(saved["circuit"])
            self.curs[s], self.logs[s], self.n_tests[s] = (
                saved["cur"],
                saved["log"],
                saved["n_tests"],
            )

    def to_json(self) -> list[dict]:
        return [
            {"circuit": c.to_state(), "cur": cur, "log": log, "n_tests": n}
            for c, cur, log, n in zip(self.circuits, self.curs, self.logs, self.n_tests)
        ]


def _skip_childless(state: _SweepState, node: Node, graph: Graph, pos: list[int]) -> None:
    """States whose receiver has no present outgoing edge drop its incoming edges unchecked."""
    for s, circuit in enumerate(state.circuits):
        if node.kind != "resid_post" and not circuit.has_children(node):
            for i in circuit.skip(node):
                state.logs[s].append(_record(graph, i, node, state.curs[s], state.curs[s], 0.0,
                                             True, True))  # fmt: skip
            pos[s] = len(node.incoming)


def _plan_call(state: _SweepState, node: Node, pos: list[int], n_lanes: int, n_edges: int,
               max_tests: int | None):  # fmt: skip
    """The candidates of one device call: `(vecs, plan, n_used)`, or `None` when every state is
    done with `node`. States at the same point with the same circuit (common in sweeps: many
    thresholds agree) share candidates; each group of states gets a speculative chain, candidate
    `j` = its circuit with the next `j` edges removed. Lanes a short chain cannot use go to the
    longer ones, so a call wastes lanes only when no chain can take them. `plan` holds
    `(states, first lane, chain length)`."""
    incoming = node.incoming
    S = len(state.circuits)
    active = [s for s in range(S) if pos[s] < len(incoming)
              and (max_tests is None or state.n_tests[s] < max_tests)]  # fmt: skip
    if not active:
        return None
    groups: dict[tuple, list[int]] = {}
    for s in active:
        groups.setdefault((pos[s], state.circuits[s].present.tobytes()), []).append(s)
    members = list(groups.values())
    room = []  # the longest useful chain of each group
    for g in members:
        budget = min(len(incoming) if max_tests is None else max_tests - state.n_tests[s]
                     for s in g)  # fmt: skip
        room.append(max(0, min(len(incoming) - pos[g[0]], budget)))
    lengths = [0] * len(members)
    free = n_lanes
    while free > 0:  # round-robin: as even as the chains allow
        grew = False
        for i in range(len(members)):
            if free > 0 and lengths[i] < room[i]:
                lengths[i] += 1
                free -= 1
                grew = True
        if not grew:
            break
    vecs = np.empty((n_lanes, n_edges), np.float32)
    plan, lane = [], 0
    for g, k in zip(members, lengths):
        if k == 0:
            continue
        first = g[0]
        base = state.circuits[first].present.astype(np.float32)
        for j in range(1, k + 1):
            vec = base.copy()
            vec[list(incoming[pos[first] : pos[first] + j])] = 0.0
            vecs[lane + j - 1] = vec
        plan.append((g, lane, k))
        lane += k
    vecs[lane:] = vecs[0] if lane > 0 else 1.0
    return vecs, plan, lane


def _apply_call(state: _SweepState, node: Node, pos: list[int], plan, values, thresholds,
                abs_value: bool, graph: Graph) -> None:  # fmt: skip
    """Each state takes the longest prefix of its chain that passes and the first failure."""
    incoming = node.incoming
    for members, offset, k in plan:
        for s in members:
            for j in range(k):
                i = incoming[pos[s]]
                new = float(values[offset + j])
                state.n_tests[s] += 1
                _check_finite(new, f"after removing edge {graph.names[i]!r} (test "
                                   f"{state.n_tests[s]}, threshold {thresholds[s]})")  # fmt: skip
                delta = new - state.curs[s]
                if abs_value:
                    delta = abs(delta)
                removed = bool(delta < thresholds[s])
                state.logs[s].append(_record(graph, i, node, state.curs[s], new, delta, removed,
                                             False))  # fmt: skip
                pos[s] += 1
                if removed:
                    state.circuits[s].present[i] = False
                    state.curs[s] = new
                else:
                    break  # later candidates assumed this edge removed: re-plan


def _fast_sweep(
    model,
    task,
    thresholds,
    *,
    metric,
    zero_ablation,
    abs_value,
    corrupted,
    n_lanes,
    progress,
    checkpoint: Callable[[dict], None] | None = None,
    resume: dict | None = None,
    stop_after_nodes: int | None = None,
    suffix: bool = True,
    max_tests: int | None = None,
    layers: str = "scan",
    mesh=None,
    source_dtype=None,
    on_call=None,
    bands="auto",
    tail="auto",
) -> list[ACDCResult]:
    shape = model.graph_shape
    graph = graph_of(shape)
    start = time.perf_counter()
    lanes = Evaluator(
        model, task, corrupted, metric, n_lanes, layers=layers, suffix=suffix, mesh=mesh,
        source_dtype=source_dtype, on_call=on_call, bands=bands, tail=tail,
    )  # fmt: skip
    # The full model's metric, through the same compiled evaluator the run uses.
    initial = float(lanes.evaluate(2 * shape.n_layers, np.ones((n_lanes, len(graph))), 1)[0])
    lanes.n_calls, lanes.n_evals = 0, 0
    _check_finite(initial, "for the full model (no edge removed)")
    state = _SweepState.start(shape, graph, len(thresholds), initial)
    first_node = 0
    if resume is not None:
        first_node = resume["next_node"]
        state.load(resume)
        lanes.n_calls, lanes.n_evals = resume["n_calls"], resume["n_evals"]
    nodes = acdc_nodes(shape)
    done_nodes = 0
    for node_index in range(first_node, len(nodes)):
        node = nodes[node_index]
        if max_tests is not None and min(state.n_tests) >= max_tests:
            break
        pos = [0] * len(thresholds)  # each state's next edge into `node`
        _skip_childless(state, node, graph, pos)
        while call := _plan_call(state, node, pos, lanes.n_lanes, len(graph), max_tests):
            vecs, plan, n_used = call
            if not plan:
                break
            values = lanes.evaluate(node.stage, vecs, n_used)
            _apply_call(state, node, pos, plan, values, thresholds, abs_value, graph)
            if progress is not None:
                removed = sum(int((~c.present).sum()) for c in state.circuits)
                progress(sum(state.n_tests), removed, state.curs[0])
        done_nodes += 1
        if checkpoint is not None:
            checkpoint({"next_node": node_index + 1, "states": state.to_json(),
                        "n_calls": lanes.n_calls, "n_evals": lanes.n_evals})  # fmt: skip
        if stop_after_nodes is not None and done_nodes >= stop_after_nodes:
            raise KeyboardInterrupt(f"stopped after {done_nodes} nodes (stop_after_nodes)")
    wall = time.perf_counter() - start
    return [
        ACDCResult(
            present=state.circuits[s].present.copy(),
            threshold=float(thresholds[s]),
            metric_name=metric,
            zero_ablation=zero_ablation,
            abs_value=abs_value,
            engine="fast",
            metric=state.curs[s],
            initial_metric=initial,
            n_tests=state.n_tests[s],
            n_forward=lanes.n_evals,
            n_calls=lanes.n_calls,
            log=state.logs[s],
            graph_shape=shape,
            wall_time=wall,
        )
        for s in range(len(thresholds))
    ]


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def acdc_sweep(
    model,
    task,
    thresholds: Sequence[float],
    *,
    metric: str,
    zero_ablation: bool = False,
    abs_value: bool = False,
    engine: Literal["fast", "reference"] = "fast",
    candidates: int | Literal["auto"] = "auto",
    suffix: bool | Literal["auto"] = "auto",
    progress: Callable[[int, int, float], None] | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    resume: dict | None = None,
    stop_after_nodes: int | None = None,
    max_tests: int | None = None,
    layers: Literal["scan", "unrolled"] = "scan",
    mesh=None,
    source_dtype=None,
    on_call: Callable[[int, float, int], None] | None = None,
    ablation=None,
    bands: bool | Literal["auto"] = "auto",
    tail: int | Literal["auto"] = "auto",
) -> list[ACDCResult]:
    """ACDC at several thresholds. The fast engine runs them as one lock-step batch sharing
    every device call; the reference engine runs them one after another.

    **Arguments:**

    - `model`: a [`jacdc.models.Transformer`][].
    - `task`: a [`jacdc.tasks.Task`][] (use the validation split).
    - `thresholds`: values of tau, each >= 0.
    - `metric`: name of one of `task.metrics` (minimised).
    - `zero_ablation`: zero the residual writers instead of patching corrupted activations.
    - `ablation`: `"corrupted"` (default), `"zero"`, `"mean"`, `"mean-positions"` or a
      [`jacdc.Ablation`][] (see [`jacdc.ablation_sources`][]); `zero_ablation=True` is
      `ablation="zero"`.
    - `abs_value`: compare `|new - current|` with the threshold.
    - `engine`: `"fast"` or `"reference"`.
    - `candidates`: device lanes per call for the fast engine (`"auto"` by backend and size).
    - `suffix`: fast engine: restart the forward at the tested receiver's stage from the cached
      clean sources. `"auto"`: on with `layers="scan"`; with `"unrolled"` (one compiled
      function per stage) off for models so small that compiling costs more than it saves.
      The decisions are the same either way.
    - `layers`: fast engine: `"scan"` (default; the forward as one layer body under
      `lax.scan`, so one compilation serves every stage) or `"unrolled"` (a Python loop over
      layers, one compilation per stage; the reference path).
    - `mesh`: fast engine: split the candidates over this mesh's `"lane"` axis (see
      [`jacdc._sharding.sharded_acdc_sweep`][], which also places the batch).
    - `source_dtype`: fast engine: store source buffers in this dtype (bf16 on accelerators).
    - `bands`: fast engine with `layers="scan"`: run each call's scan from the stage's band of
      layers on, reading earlier sources from the shared clean buffer instead of a copy per
      candidate (at most `2 + log2(n_layers)` compilations; see
      [`jacdc.engine.band_start`][]). `"auto"`: on when the copies would exceed 32 MiB.
    - `tail`: with bands, the stages of the last `tail` layers each get their own small
      unrolled evaluator ([`jacdc.engine.evaluate_suffix`][]: every receiver mixes exactly its
      upstream sources). `"auto"`: 2. The decisions are the same for every value.
    - `on_call`: fast engine: called after every device call as
      `on_call(stage, seconds, candidates_used)` (for profiling; the benchmarks use it).
    - `progress`: called as `progress(tested, removed, current_metric)`.
    - `checkpoint`: called with a JSON-serialisable state after every node (fast engine);
      pass it back as `resume` to continue a killed run.
    - `max_tests`: stop each run after this many edge tests (a fixed prefix of the run, for
      benchmarks); the result then covers only that prefix.

    **Returns:** one [`jacdc.ACDCResult`][] per threshold, in order.
    """
    thresholds = [float(t) if isinstance(t, (int, float, np.floating)) else t for t in thresholds]
    _validate(model, task, thresholds, metric)
    ab = resolve_ablation(zero_ablation, ablation)
    zero_ablation = ab.kind == "zero"
    corrupted = ablation_sources(model, task, ablation=ab)
    results = _acdc_engines(model, task, thresholds, metric, zero_ablation, abs_value, engine,
                            candidates, suffix, progress, checkpoint, resume, stop_after_nodes,
                            max_tests, layers, mesh, source_dtype, on_call, corrupted,
                            bands, tail)  # fmt: skip
    for r in results:
        r.ablation = ab.kind
    return results


def _acdc_engines(model, task, thresholds, metric, zero_ablation, abs_value, engine, candidates,
                  suffix, progress, checkpoint, resume, stop_after_nodes, max_tests, layers, mesh,
                  source_dtype, on_call, corrupted, bands="auto", tail="auto"):  # fmt: skip
    if engine == "reference":
        if resume is not None or checkpoint is not None:
            raise ValueError("Checkpoints are supported by the fast engine only.")
        return [
            _reference_run(
                model,
                task,
                t,
                metric=metric,
                zero_ablation=zero_ablation,
                abs_value=abs_value,
                corrupted=corrupted,
                progress=progress,
                max_tests=max_tests,
            )
            for t in thresholds
        ]
    if engine != "fast":
        raise ValueError(f"Unknown ACDC engine {engine!r}; use 'fast' or 'reference'.")
    n_lanes = auto_candidates(model, task, len(thresholds)) if candidates == "auto" else candidates
    if not isinstance(n_lanes, int) or n_lanes < 1:
        raise ValueError(f"candidates must be a positive int or 'auto', got {candidates!r}.")
    if suffix == "auto":
        suffix = layers == "scan" or forward_flops(model, task) > 5e7
    return _fast_sweep(
        model,
        task,
        thresholds,
        metric=metric,
        zero_ablation=zero_ablation,
        abs_value=abs_value,
        corrupted=corrupted,
        n_lanes=n_lanes,
        progress=progress,
        checkpoint=checkpoint,
        resume=resume,
        stop_after_nodes=stop_after_nodes,
        suffix=bool(suffix),
        max_tests=max_tests,
        layers=layers,
        mesh=mesh,
        source_dtype=source_dtype,
        on_call=on_call,
        bands=bands,
        tail=tail,
    )


def acdc(
    model,
    task,
    threshold: float,
    *,
    metric: str,
    zero_ablation: bool = False,
    abs_value: bool = False,
    engine: Literal["fast", "reference"] = "fast",
    **kwargs,
) -> ACDCResult:
    """Greedy edge pruning by activation patching (ACDC) at one threshold.

    ??? cite

        [Towards Automated Circuit Discovery for Mechanistic Interpretability](https://arxiv.org/abs/2304.14997)

    See [`jacdc.acdc_sweep`][] for the arguments; returns one [`jacdc.ACDCResult`][].
    """
    return acdc_sweep(
        model,
        task,
        [threshold],
        metric=metric,
        zero_ablation=zero_ablation,
        abs_value=abs_value,
        engine=engine,
        **kwargs,
    )[0]


def result_to_json(result: ACDCResult) -> dict:
    return {
        "threshold": result.threshold,
        "metric_name": result.metric_name,
        "zero_ablation": result.zero_ablation,
        "ablation": result.ablation,
        "abs_value": result.abs_value,
        "engine": result.engine,
        "metric": result.metric,
        "initial_metric": result.initial_metric,
        "n_tests": result.n_tests,
        "n_forward": result.n_forward,
        "n_calls": result.n_calls,
        "wall_time": result.wall_time,
        "n_edges": result.n_edges,
    }
