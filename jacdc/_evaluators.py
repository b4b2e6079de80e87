"""The fast ACDC engine's compiled evaluators: the one module that owns them.

An *evaluator* maps candidate circuits to metric values in one device call: `vecs` `(lanes,
edges)` holds one 0/1 value per counted edge and lane, and the call returns the task's metric of
each lane's circuit on the clean batch, with the forward restarted at `stage` from the clean
run's cached source outputs (every source before `stage` computes what it computes in the clean
run while ACDC tests edges into a stage-`stage` receiver).

- [`evaluate_scan`][]: the scan-over-layers forward with a *traced* `stage` (one compilation
    serves every stage); the default.
- [`evaluate_unrolled`][]: the unrolled forward, `stage` static (one compilation per stage);
    the reference path.
- [`evaluate_suffix`][]: the unrolled forward from a static `stage` with every receiver mixing
    exactly its upstream sources and the prefix shared ([`suffix_prefix`][]); the banded
    engine's evaluator for the last layers' stages.
- [`clean_sources`][], [`stacked_blocks`][]: the cached inputs (the clean run's source outputs,
    the block weights stacked over layers for the scan).
- [`Evaluator`][]: what the engine holds between calls (the cached inputs, the lane sharding, the
    counters), and the interface the memory model ([`jacdc._memory`][]), the floor model
    ([`jacdc._floor`][]) and the benchmarks use: `evaluator(stage, vecs)` for values,
    `evaluator.lower(stage)` for XLA's compiled step (memory and cost analysis).

Both evaluators are compiled without XLA:CPU's YNNPACK fusions on CPU ([`jacdc._xla`][]:
about twice as fast here). [`TRACE_COUNTS`][] counts traces by input shape (tests assert one
compilation per shape).
This module imports no algorithm: [`jacdc._acdc`][] builds on it, not the other way round.
"""

import collections
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._graph import graph_of
from ._mesh import LANE, mesh_shape, place, sources_to_dtype, to_host
from ._xla import backend_jit
from .models import clean_run, stack_blocks


# Traces of the compiled evaluators, by stage/shape (a Python side effect runs only while
# tracing): tests assert one compilation per input shape with it.
TRACE_COUNTS: collections.Counter = collections.Counter()


@backend_jit
def evaluate_unrolled(
    model, task, corrupted, prefix, vecs: Float[Array, "lanes edges"], stage: int, metric: str
) -> Float[Array, " lanes"]:
    """Metric of each candidate circuit (rows of `vecs`, per-edge 0/1 values), running the
    unrolled forward from the static `stage` on with the cached clean `prefix` (at least the
    sources before `stage`; shape `(batch, n, seq, d_model)`, `n = 0` at stage 0). One
    compilation per stage: the reference path of [`evaluate_scan`][]."""
    TRACE_COUNTS[(stage, vecs.shape)] += 1
    graph = graph_of(model.graph_shape)
    masks = graph.from_vector(vecs)

    def one(mask):
        def example(tokens, corr, pre):
            return model.run_from(stage, tokens, mask, corr, pre, None, task.logit_positions)

        logits = jax.vmap(example)(task.clean, corrupted, prefix)
        return task.metrics[metric](logits)

    return jax.vmap(one)(masks)


@backend_jit
def evaluate_scan(
    model, task, corrupted, clean, vecs: Float[Array, "lanes edges"], stage, metric: str, stacked,
    first_layer: int = 0, prefix=None,
) -> Float[Array, " lanes"]:  # fmt: skip
    """[`evaluate_unrolled`][] through the scan-over-layers forward: `stage` is a traced int32
    and `clean` the clean run's whole source buffer `(batch, src, seq, d_model)`, so one
    compilation serves every stage. `stacked`: [`stacked_blocks`][] of the model. With
    `clean=None` every call is a whole forward from the embeddings (no suffix recomputation).
    `first_layer` (static): scan the layers from it on only, reading the earlier sources from
    `clean` without a copy per lane (one compilation per value; see [`band_start`][]);
    `prefix`: `None` or `(delta, csum)` for that band ([`prefix_delta`][], [`prefix_csum`][]):
    the prefix mixed in one contraction."""
    TRACE_COUNTS[("scan", vecs.shape, clean is None, first_layer)] += 1
    graph = graph_of(model.graph_shape)
    masks = graph.from_vector(vecs)
    batch = task.clean.shape[0]

    def one(mask):
        # The mask is broadcast over the examples (a few MB) so that every receiver's mixing is
        # a matmul batched over examples (`brn,bnx->brx`): with the mask shared, XLA contracts
        # the sources of all examples at once and transposes the whole source buffer first,
        # in every layer of every call (twice the time of the mixing itself, measured).
        mask = jax.tree.map(lambda a: jnp.broadcast_to(a, (batch, *a.shape)), mask)
        if clean is None:

            def example(tokens, corr, m):
                logits, _ = model._forward_scan(
                    tokens, m, corr, None, None, None, task.logit_positions, stacked
                )
                return logits

            logits = jax.vmap(example)(task.clean, corrupted, mask)
        else:

            def example(tokens, corr, buf, pre, m):
                delta, csum = (None, None) if pre is None else pre
                return model.run_from_scan(
                    stage, tokens, m, corr, buf, None, task.logit_positions, stacked,
                    first_layer, delta, csum,
                )  # fmt: skip

            logits = jax.vmap(example)(task.clean, corrupted, clean, prefix, mask)
        return task.metrics[metric](logits)

    return jax.vmap(one)(masks)


@backend_jit
def evaluate_suffix(
    model, task, corrupted, prefix, vecs: Float[Array, "lanes edges"], stage: int, metric: str
) -> Float[Array, " lanes"]:
    """[`evaluate_unrolled`][] through [`jacdc.models.Transformer.run_suffix`][]: `stage`
    static (one compilation per stage), the prefix mixed from `prefix` ([`suffix_prefix`][] of
    that stage: shared by every candidate, never copied) and every receiver contracting exactly
    its upstream sources. The banded engine's evaluator for the last layers' stages."""
    TRACE_COUNTS[("suffix", stage, vecs.shape)] += 1
    graph = graph_of(model.graph_shape)
    masks = graph.from_vector(vecs)
    batch = task.clean.shape[0]

    def one(mask):
        # Broadcast over the examples, as in `evaluate_scan`: every mixing a batched matmul.
        mask = jax.tree.map(lambda a: jnp.broadcast_to(a, (batch, *a.shape)), mask)

        def example(tokens, corr, pre, m):
            return model.run_suffix(stage, tokens, m, corr, pre, None, task.logit_positions)

        logits = jax.vmap(example)(task.clean, corrupted, prefix, mask)
        return task.metrics[metric](logits)

    return jax.vmap(one)(masks)


@eqx.filter_jit
def suffix_prefix(model, stage: int, clean, corrupted_resid, logit_positions):
    """[`jacdc.models.Transformer.suffix_prefix`][] of `stage`, jitted (once per stage and
    run): what [`evaluate_suffix`][] mixes the prefix from."""
    return model.suffix_prefix(stage, clean, corrupted_resid, logit_positions)


@eqx.filter_jit
def stacked_blocks(model):
    """[`jacdc.models.stack_blocks`][], jitted (one device call): the block weights stacked
    over layers, as [`evaluate_scan`][] reads them."""
    return stack_blocks(model)


@eqx.filter_jit
def clean_sources(model, tokens) -> Float[Array, "batch src seq d_model"]:
    """The clean run's source outputs `(batch, src, seq, d_model)` (what every stage restarts
    from)."""
    return clean_run(model, tokens)[1].resid


@eqx.filter_jit
def prefix_delta(clean, corrupted_resid, n0: int) -> Float[Array, "batch n0 seq d_model"]:
    """`clean - corrupted` for the first `n0` sources `(batch, n0, seq, d_model)`: what a
    banded evaluator mixes its prefix from (made once per band, exactly the band's prefix, so
    no call slices it)."""
    corrupted_resid = jnp.broadcast_to(corrupted_resid, clean.shape)[:, :n0]
    return clean[:, :n0].astype(jnp.float32) - corrupted_resid.astype(jnp.float32)


@eqx.filter_jit
def prefix_csum(corrupted_resid, n0: int) -> Float[Array, "batch seq d_model"]:
    """The sum of the corrupted sources before the `n0`-th `(batch, seq, d_model)` (once per
    band)."""
    return corrupted_resid[:, :n0].astype(jnp.float32).sum(1)


def band_start(n_layers: int, stage: int) -> int:
    """The first layer the banded scan evaluator runs for an edge test at `stage`: the stage's
    own layer rounded down so that the band spans 0, 1, 2, 4, 8, ... layers (or all of them).
    A run therefore compiles at most `2 + log2(n_layers)` evaluators, and each call's buffer
    and work are at most twice the suffix's."""
    need = n_layers - stage // 2  # layers from the stage's own layer to the last
    span = 0 if need <= 0 else 1
    while span < need:
        span *= 2
    return max(0, n_layers - span)


# Banded evaluators pay off once the per-call copy of the source buffer is large (below this,
# one compilation for every stage is the better trade).
_BAND_BYTES = 32 * 2**20


# The last layers whose stages get their own unrolled evaluator (`Evaluator(tail=...)`).
_TAIL_LAYERS = 2


def auto_bands(cfg, n_lanes: int, batch: int, seq: int) -> bool:
    """`bands="auto"`'s choice: banded evaluators when the lanes' copies of the source buffer
    would exceed 32 MiB, for models without post-attention norms."""
    buffer = n_lanes * batch * cfg.graph_shape.n_src * seq * cfg.d_model * 4
    return buffer > _BAND_BYTES and not cfg.post_norms


class Evaluator:
    """The fast engine's device side: the cached clean sources and the compiled evaluator.

    **Arguments:**

    - `model`, `task`, `corrupted`, `metric`: what every call evaluates (`corrupted`: the
        ablation's [`jacdc.models.Sources`][]).
    - `n_lanes`: candidate circuits per call (the rows of `vecs`).
    - `layers`: `"scan"` ([`evaluate_scan`][], one compilation for every stage) or
        `"unrolled"` ([`evaluate_unrolled`][], one per stage; the reference path).
    - `suffix`: restart at the stage asked for (`False`: every call runs from the embeddings).
    - `mesh`: a device mesh ([`jacdc._mesh.make_mesh`][]); candidates are split over its
        `"lane"` axis (the task and model are expected to be placed on it already).
    - `source_dtype`: store the corrupted sources and the cached clean sources in this dtype
        (e.g. bf16 on accelerators; see [`jacdc._mesh.sources_to_dtype`][]).
    - `bands`: with `layers="scan"`, run each call's scan from [`band_start`][] of its stage
        on, reading the earlier sources from the shared clean buffer (no copy per lane; the
        output receiver mixes only the metric's positions). `"auto"`: on when the lanes'
        source buffers would exceed 32 MiB and the model has no post-attention norms.
    - `tail`: with bands, the stages of the last `tail` layers (and the output) use
        [`evaluate_suffix`][] instead: one small unrolled evaluator per stage, each receiver
        mixing exactly its upstream sources (the scan's first band layer mixes its own layer's
        sources at weight zero, and copies the band's weights and sources per call). `"auto"`:
        2 layers (5 more compilations for models with MLPs, each of at most two layers); 0:
        none.
    - `on_call`: called after every [`evaluate`][] as `on_call(stage, seconds, n_used)`.

    `evaluator(stage, vecs)` returns the metric of each row as float64 NumPy;
    [`evaluate`][] does the same and counts the call (`n_calls`, `n_evals`); [`lower`][] gives
    JAX's lowered step for the same arguments (`.compile().cost_analysis()`, `.memory_analysis()`).
    """

    def __init__(
        self, model, task, corrupted, metric: str, n_lanes: int, *, layers: str = "scan",
        suffix: bool = True, mesh=None, source_dtype=None,
        on_call: Callable[[int, float, int], None] | None = None, bands: bool | str = "auto",
        tail: int | str = "auto",
    ):  # fmt: skip
        if layers not in ("scan", "unrolled"):
            raise ValueError(f"layers must be 'scan' or 'unrolled', got {layers!r}.")
        if bands not in ("auto", True, False):
            raise ValueError(f"bands must be True, False or 'auto', got {bands!r}.")
        cfg = model.cfg
        if bands is True and cfg.post_norms and layers == "scan" and suffix:
            raise ValueError(
                "bands=True needs a model without post-attention norms (Gemma-2 mixes each "
                "layer's heads through its norm); use bands=False or 'auto'."
            )
        if bands == "auto":
            bands = auto_bands(cfg, n_lanes, task.batch, task.seq)
        self.bands = bool(bands) and layers == "scan" and suffix
        if tail == "auto":
            tail = min(_TAIL_LAYERS, cfg.n_layers)
        if isinstance(tail, bool) or not isinstance(tail, int) or not 0 <= tail <= cfg.n_layers:
            raise ValueError(
                f"tail must be 'auto' or a layer count in [0, {cfg.n_layers}], got {tail!r}."
            )
        # The first stage served by `evaluate_suffix` (none past the output without bands).
        self.tail_from = 2 * (cfg.n_layers - tail) if self.bands and tail else 2 * cfg.n_layers + 1
        if source_dtype is not None:
            corrupted = sources_to_dtype(corrupted, source_dtype)
        self.model, self.task, self.corrupted, self.metric = model, task, corrupted, metric
        self.n_lanes, self.layers, self.suffix = n_lanes, layers, suffix
        self.n_edges = len(graph_of(model.graph_shape))
        self.source_dtype = source_dtype
        self.on_call = on_call
        self._clean = None
        self._band = None  # (key, prefix) of the latest band or suffix stage
        self._stacked = stacked_blocks(model) if layers == "scan" else None
        self._stages: dict[int, jax.Array] = {}
        self._lane_sharding = None
        if mesh is not None and mesh_shape(mesh)[1] > 1:
            from jax.sharding import NamedSharding, PartitionSpec

            self._lane_sharding = NamedSharding(mesh, PartitionSpec(LANE, None))
        self.n_calls = 0
        self.n_evals = 0

    def clean(self):
        """The clean run's sources `(batch, src, seq, d_model)`, computed on first use."""
        if self._clean is None:
            clean = clean_sources(self.model, self.task.clean)
            if self.source_dtype is not None:
                clean = sources_to_dtype(clean, self.source_dtype)
            self._clean = clean
        return self._clean

    def _prefix(self, first: int):
        """`(delta, csum)` of the band starting at layer `first` (`None` for the first band,
        which has no prefix). Only the latest band's is kept: ACDC walks the stages from the
        output down, so a run enters each band once (a sweep's next run starts again at the
        output), and holding one band's prefix costs at most one source buffer."""
        if first == 0:
            return None
        if self._band is None or self._band[0] != ("band", first):
            self._band = None  # free the previous band's buffer before making this one
            n0 = self.model.graph_shape.n_src_before_layer(first)
            delta = prefix_delta(self.clean(), self.corrupted.resid, n0)
            if self.source_dtype is not None:
                delta = sources_to_dtype(delta, self.source_dtype)
            self._band = (("band", first), (delta, prefix_csum(self.corrupted.resid, n0)))
        return self._band[1]

    def _suffix_prefix(self, stage: int):
        """The [`jacdc.models.SuffixPrefix`][] of `stage` for [`evaluate_suffix`][] (the latest
        one kept, like a band's prefix)."""
        if self._band is None or self._band[0] != ("suffix", stage):
            self._band = None
            pre = suffix_prefix(
                self.model, stage, self.clean(), self.corrupted.resid, self.task.logit_positions
            )
            if self.source_dtype is not None:
                pre = sources_to_dtype(pre, self.source_dtype)
            self._band = (("suffix", stage), pre)
        return self._band[1]

    def _vecs(self, vecs):
        if isinstance(vecs, jax.Array) and self._lane_sharding is None:
            return vecs
        vecs = np.asarray(vecs, np.float32)
        if self._lane_sharding is None:
            return jnp.asarray(vecs)
        return place(vecs, self._lane_sharding)

    def _stage(self, stage: int) -> jax.Array:
        # One device scalar per stage, made once (not a host-to-device copy per call).
        if stage not in self._stages:
            self._stages[stage] = jnp.asarray(stage, jnp.int32)
        return self._stages[stage]

    def arguments(self, stage: int, vecs=None) -> tuple[Callable, tuple]:
        """`(function, arguments)` of the call at `stage` (all-ones `vecs` by default):
        `function(*arguments)` is the call, `function.lower(*arguments)` its lowering."""
        if vecs is None:
            vecs = np.ones((self.n_lanes, self.n_edges), np.float32)
        model, task = self.model, self.task
        if not self.suffix:
            stage = 0
        if self.layers == "scan" and stage >= self.tail_from:
            args = (model, task, self.corrupted, self._suffix_prefix(stage), self._vecs(vecs),
                    stage, self.metric)  # fmt: skip
            return evaluate_suffix, args
        if self.layers == "scan":
            clean = self.clean() if self.suffix else None
            args = (model, task, self.corrupted, clean, self._vecs(vecs), self._stage(stage),
                    self.metric, self._stacked)  # fmt: skip
            if self.bands:
                first = band_start(model.cfg.n_layers, stage)
                args = args + (first, self._prefix(first))
            return evaluate_scan, args
        if stage == 0:  # nothing precedes the embeddings: no clean run needed
            prefix = jnp.zeros((task.batch, 0, task.seq, model.cfg.d_model), jnp.float32)
        else:
            prefix = self.clean()
        args = (model, task, self.corrupted, prefix, self._vecs(vecs), stage, self.metric)
        return evaluate_unrolled, args

    def lower(self, stage: int = 0, vecs=None):
        """JAX's lowered step at `stage` (a [`jax.stages.Lowered`][]): `.compile()` gives XLA's
        `cost_analysis()` and `memory_analysis()` of exactly what [`evaluate`][] runs."""
        fn, args = self.arguments(stage, vecs)
        lowered = fn.lower(*args)
        return getattr(lowered, "lowered", lowered)  # Equinox wraps JAX's `Lowered`

    def __call__(self, stage: int, vecs) -> np.ndarray:
        fn, args = self.arguments(stage, vecs)
        return np.asarray(to_host(fn(*args)), np.float64)  # waits for the device

    def evaluate(self, stage: int, vecs, n_used: int) -> np.ndarray:
        """`self(stage, vecs)`, counted: `n_used` of the lanes hold real candidates."""
        start = time.perf_counter()
        self.n_calls += 1
        self.n_evals += n_used
        values = self(stage, vecs)
        if self.on_call is not None:
            self.on_call(stage if self.suffix else 0, time.perf_counter() - start, n_used)
        return values
