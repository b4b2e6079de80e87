"""The FLOP floor of ACDC: what each edge test needs at minimum, counted analytically.

An edge test evaluates one candidate circuit. While ACDC tests the edges into a receiver of stage
`t` (see [`jacdc.acdc_nodes`][]), every source before `t` computes what it computes in the clean
run, so at minimum a test needs, per example:

- every receiver **from stage `t` on** mixing its **upstream** sources only: one multiply-add per
    upstream source and residual element, `2 n_r d` FLOPs per position (the corrupted part of a
    mix is a constant of the run and can be folded in once);
- the layers from stage `t` on: per attention layer and head the q/k/v projections `3 * 2 d e`,
    the scores and the pattern-weighted values `2 * 2 S e`, the output projection `2 e d` (per
    position, `S` the sequence length); per MLP `2 * 2 d m`;
- the output receiver's mixing and the unembedding **only at the `P` positions the metric
    reads**: `P (2 N d + 2 d V)`.

Only contractions are counted (LayerNorms, softmaxes, activations and the metric are `O(S d)`
per layer, negligible at the shapes where the floor matters). `B` examples multiply everything.
Shapes as in [`jacdc._memory`][]: `B` batch, `S` seq, `d` d_model, `H` heads, `e` d_head, `m`
d_mlp, `V` output vocabulary, `P` metric positions, `N` sources, `n_r` the sources upstream of
receiver `r`.

[`executed_flops`][] counts what the engine's evaluators actually contract instead (both halves
of every mix, the output receiver at every position, and, for the scan evaluator, every source
for every receiver); [`xla_flops`][] asks XLA (`cost_analysis()` of the compiled evaluator).
The tests check, over three model shapes (GPT-2-like, attention-only shortformer, tracr-like)
and every stage, that `floor <= executed <= XLA <= 1.75 executed` and `XLA <= 3.5 floor` for the
unrolled evaluator with one candidate: XLA also counts elementwise work (LayerNorms, softmaxes,
the mixes' `1 - m`, the direct edges' interpolation), most at small `d_model`, and the floor
leaves out the output receiver's positions the metric does not read, which dominate only the
output node's tests of a tiny model (on these shapes XLA / floor is 1.2-2.1 except 3.2 there).
The scan evaluator is not compared: XLA's cost analysis counts a loop body once.
[`run_floor`][] sums the floor over a run's tests, by stage; `benchmarks/floor.py` turns FLOPs
into seconds with this machine's measured float32 matmul rate at the model's shapes.
"""

import collections

import numpy as np

from ._graph import GraphShape


def _n_pos(task) -> int:
    return int(np.asarray(task.logit_positions).size)


def floor_terms(cfg, batch: int, seq: int, n_pos: int, stage: int) -> dict[str, float]:
    """The floor of one edge test at `stage` by kind of contraction: `mixing` (receivers from
    the stage on, upstream sources only; the output at the metric positions), `qkv`
    (projections), `attention` (scores and pattern-weighted values), `out_proj`, `mlp`,
    `unembed`. FLOPs, for the whole batch."""
    shape: GraphShape = cfg.graph_shape
    d, H, e, m, V = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp or 0, cfg.vocab_out
    t = collections.Counter()
    for layer in range(cfg.n_layers):
        if 2 * layer >= stage:
            t["mixing"] += seq * 3 * H * 2 * shape.n_src_before_layer(layer) * d
            t["qkv"] += seq * 3 * H * 2 * d * e
            t["attention"] += seq * H * 2 * 2 * seq * e
            t["out_proj"] += seq * H * 2 * e * d
        if cfg.has_mlp and 2 * layer + 1 >= stage:
            t["mixing"] += seq * 2 * shape.n_src_before_mlp(layer) * d
            t["mlp"] += seq * 2 * 2 * d * m
    t["mixing"] += n_pos * 2 * shape.n_src * d
    t["unembed"] += n_pos * 2 * d * V
    return {k: float(batch * v) for k, v in t.items()}


def stage_floor_flops(model, task, stage: int) -> float:
    """The floor FLOPs of one edge test whose receiver is at `stage` (see the module
    docstring)."""
    return sum(floor_terms(model.cfg, task.batch, task.seq, _n_pos(task), stage).values())


def executed_flops(model, task, stage: int, layers: str = "unrolled") -> float:
    """The contraction FLOPs the fast engine's evaluator executes for one candidate at `stage`:
    every mix is two contractions (online and corrupted sources), the output receiver mixes
    at every position before the metric positions are picked; with `layers="scan"` every
    receiver contracts over all `N` sources (those not upstream weigh zero)."""
    cfg, shape = model.cfg, model.graph_shape
    B, S, P = task.batch, task.seq, _n_pos(task)
    d = cfg.d_model
    t = floor_terms(cfg, B, S, P, stage)
    mixing = 0
    for layer in range(cfg.n_layers):
        if 2 * layer >= stage:
            n = shape.n_src if layers == "scan" else shape.n_src_before_layer(layer)
            mixing += S * 3 * cfg.n_heads * 2 * n * d
        if cfg.has_mlp and 2 * layer + 1 >= stage:
            n = shape.n_src if layers == "scan" else shape.n_src_before_mlp(layer)
            mixing += S * 2 * n * d
    mixing += S * 2 * shape.n_src * d
    t["mixing"] = float(B * 2 * mixing)
    return sum(t.values())


def edge_test_stages(shape: GraphShape) -> dict[int, int]:
    """Edge id -> the stage its test runs at (every counted edge is tested at its receiver's
    node)."""
    from ._acdc import acdc_nodes  # the walk's order lives in the engine

    return {i: node.stage for node in acdc_nodes(shape) for i in node.incoming}


def edge_test_floor_flops(model, task, edge: int) -> float:
    """The floor FLOPs of the test of counted edge `edge`."""
    return stage_floor_flops(model, task, edge_test_stages(model.graph_shape)[edge])


def run_floor(model, task, result) -> dict:
    """The floor of a run ([`jacdc.ACDCResult`][]): the tests of its log (skipped edges cost
    nothing) grouped by stage. **Returns:** `{"flops", "n_tests", "by_stage": {stage: {"n_tests",
    "flops_per_test", "flops"}}}`."""
    stages = edge_test_stages(model.graph_shape)
    counts = collections.Counter(stages[r["edge"]] for r in result.log if not r["skipped"])
    by_stage = {}
    for st in sorted(counts):
        per = stage_floor_flops(model, task, st)
        by_stage[st] = {"n_tests": counts[st], "flops_per_test": per, "flops": per * counts[st]}
    return {
        "flops": sum(v["flops"] for v in by_stage.values()),
        "n_tests": sum(counts.values()),
        "by_stage": by_stage,
    }


def xla_flops(model, task, stage: int, *, metric: str, candidates: int = 1,
              layers: str = "unrolled", zero_ablation: bool = False) -> float:  # fmt: skip
    """XLA's FLOP count (`cost_analysis()["flops"]`) of the fast engine's compiled evaluator of
    `candidates` circuits at `stage`, divided by `candidates`. Compiles it (no call)."""
    from ._evaluators import Evaluator
    from ._patching import ablation_sources

    corrupted = ablation_sources(model, task, zero_ablation)
    ev = Evaluator(model, task, corrupted, metric, candidates, layers=layers)
    cost = ev.lower(stage).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per device program
        cost = cost[0]
    return float(cost["flops"]) / candidates
