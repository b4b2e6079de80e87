"""How many bytes each algorithm needs, before it runs.

Every algorithm's device work is one compiled step, and XLA reports three figures for a compiled
step (`jax.jit(f).lower(...).compile().memory_analysis()`): the bytes of its **arguments**, of
its **outputs**, and of its **temporaries** (the activations it keeps live, packed by XLA's buffer
assignment). The model here predicts the same three figures from the model config and the task's
shape, and we compare its *total* `arguments + outputs + temp` (minus aliased bytes; none here)
with XLA's: that total is what must fit on one device while the step runs.

**Shapes** (per device: `batch` is divided by the mesh's batch axis, lanes by its lane axis):
`B` batch, `S` seq, `d` d_model, `H` heads, `e` d_head, `m` d_mlp, `V` output vocabulary, `P`
metric positions, `N` sources, `K` lanes (fast-ACDC candidates, SP lambdas, EAP-IG points),
`n_r` the sources a receiver group reads (`n_src_before_layer` / `n_src_before_mlp` / `N`), `f`
bytes per float (4; 2 for bf16 source buffers).

**Arguments** (exact): the weights (replicated), the task's arrays (tokens, metric data such as
KL's clean log-probs `B P V`), the corrupted [`jacdc.models.Sources`][]
`B (N S d + 3 L H S e) f`, and per algorithm: the fast engine's cached clean sources
`B N S d f` and candidate vectors `K edges` (and, for its scan path, the block weights stacked
over layers; jit drops arguments a step never reads, e.g. the embedding tables when the
embeddings come from the clean sources); SP's parameters and Adam state.

**Temporaries** (a sum of the buffers the masked forward materialises, each with a coefficient
calibrated against XLA; `bsd = B S d f`):

- *fast ACDC*, the default scan-over-layers evaluator (one compiled function for every stage):
  `2.2 K bsd N + 2 K bsd 3H + 0.25 K B S m f + 2 logits + 1.35 bsd N` -- each lane's source
  buffer (the scan's carry, with its copies), the heads' mixed q/k/v inputs, the MLP hidden
  units, the logits, and the source buffers converted once for the contractions. The model's
  unstacked weights stay on the device beside the stacked copy (`persistent`).
- *fast ACDC, unrolled* (`layers="unrolled"`), one call at `stage` (only receivers from `stage`
  on run):
  `1.5 stack + 0.75 corrupted_copies + 0.25 corrupted_mix + qkv + 2 logits`, where
  `stack = max_r bsd n_r` (times `K` if receiver `r` reads a source computed in this call),
  `corrupted_copies = bsd sum_r n_r` (XLA lays out each receiver's slice of the corrupted
  sources for its contraction up front), `corrupted_mix = K bsd (3H n_attn + n_mlp + 1)`,
  `qkv = K B S 3H e f n_attn`, `logits = K B P V f`. The engine also keeps the clean run's
  sources `B N S d f` between calls (`persistent`). The run's figure is the worst stage.
- *EAP / EAP-IG* (a gradient: every activation is saved for the backward pass):
  `stacks + 0.75 corrupted_copies + 3.5 mixes + 3 qkv + 2 patterns + hidden` with
  `stacks = K bsd sum_r n_r`, `mixes = K bsd 3H L`, `qkv = K B S 3H e f L`,
  `patterns = K B H S^2 f L`, `hidden = K B S m f L`.
- *SP* (the same gradient inside a `lax.scan` over steps, through the node-to-edge mask):
  `1.4 stacks + 1.2 corrupted_copies + 0.9 mixes + 10 patterns + 4 hidden + 3 K bsd max_r n_r`.

**Accuracy** (XLA:CPU, jaxlib 0.10.2, the compiled total): the scan evaluator within 16% on
all of 24 shapes (1-12 layers, 2-16 heads, d_model 32-128, 1-8 lanes, with and without the
clean sources; median 4%). The unrolled evaluator, over a grid of 30 shapes
(1-12 layers, 2-16 heads, d_model 32-128, batch 2-16, seq 4-16, 1-8 lanes, every kind of
stage) the median error is 12% and 24 of 30 are within 25% (extremes: -35% for a 3-layer
attention-only model with d_head * heads > d_model, +33% for 1-layer models). Gradients are
more regular: 20 EAP shapes within 15% (median 5%), 10 SP shapes within 6% (median 3%).

**Backends.** The coefficients above are XLA:CPU's. XLA:GPU fuses away the per-receiver copies of
the corrupted sources that XLA:CPU keeps (and the larger stack copy), so on accelerators
(`backend="gpu"`, also used for TPUs, uncalibrated there) the fast engine's coefficients are
`(1, 0, 0.25, 1, 2)` for the unrolled evaluator, EAP's drop the copies and use `1.5 mixes`,
SP's drop the copies; the scan evaluator's CPU coefficients are used as they are (no GPU
measurement yet: an over-estimate is the likely error). Set from GPT-2 small on an H100 (JAX
0.11.2, batch 100, 16 tokens): the unrolled fast ACDC with 8 candidates predicted 0.97x XLA's
14.36 GB, EAP 1.02x XLA's 15.33 GB (and XLA's figures matched the device's
`peak_bytes_in_use` to 0.2%); SP's GPU coefficients are unmeasured. `benchmarks/gpu.py` records
prediction and XLA's figure for every run. Use the estimate to size runs and to fail early,
with the margin [`check_fits`][] leaves.
"""

import dataclasses
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._device_memory import (
    MemoryBudgetError as MemoryBudgetError,
    device_memory as device_memory,
)
from ._evaluators import auto_bands


_F32 = 4


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Predicted bytes of one algorithm's compiled step, per device.

    - `algorithm`: what was estimated, e.g. `"acdc"`.
    - `arguments`, `outputs`, `temp`: the three figures XLA reports for the compiled step.
    - `persistent`: buffers held between steps outside the step's arguments (the fast engine's
        cached clean sources).
    - `parts`: the named terms (bytes) behind the figures, for the printout.
    - `mesh_shape`: `(n_batch, n_lane)` the estimate is per device of.
    - `detail`: e.g. the worst stage of a fast-ACDC run.
    - `stage`: fast ACDC: the stage the figures are for (the run's worst).
    """

    algorithm: str
    arguments: int
    outputs: int
    temp: int
    persistent: int
    parts: dict
    mesh_shape: tuple[int, int] = (1, 1)
    detail: str = ""
    stage: int | None = None

    @property
    def step(self) -> int:
        """`arguments + outputs + temp`: the figure compared with XLA's."""
        return self.arguments + self.outputs + self.temp

    @property
    def total(self) -> int:
        """Everything that must fit on one device: the step plus the persistent buffers."""
        return self.step + self.persistent

    def __str__(self) -> str:
        devices = self.mesh_shape[0] * self.mesh_shape[1]
        where = "" if devices == 1 else f" per device ({devices} devices)"
        parts = ", ".join(f"{k} {_fmt(v)}" for k, v in self.parts.items() if v)
        detail = f" [{self.detail}]" if self.detail else ""
        return f"{self.algorithm}: ~{_fmt(self.total)}{where}{detail}: {parts}"


def _fmt(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------------------------------------
# Exact argument sizes
# ---------------------------------------------------------------------------------------------


_ATTN_FIELDS = ("ln1", "w_q", "b_q", "w_k", "b_k", "w_v", "b_v", "w_o", "ln_post_attn")
_MLP_FIELDS = ("ln2", "w_in", "b_in", "w_gate", "b_gate", "w_out", "b_out", "ln_post_mlp")


def _nbytes(tree) -> int:
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


@functools.lru_cache(maxsize=64)
def _weight_shapes(cfg):
    """The model's weights as shapes only (`eqx.filter_eval_shape` of the random
    initialisation: nothing is allocated), in the storage dtype of `cfg.weight_dtype`."""
    from jacdc.models import Transformer

    model = eqx.filter_eval_shape(Transformer, cfg, key=jr.PRNGKey(0))
    dtype = jnp.dtype(cfg.weight_dtype)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, dtype if jnp.issubdtype(x.dtype, jnp.floating)
                                       else x.dtype),
        eqx.filter(model, lambda x: isinstance(x, jax.ShapeDtypeStruct)),
    )  # fmt: skip


def _block_part_bytes(cfg) -> tuple[int, int, int]:
    """Bytes of one layer's attention weights (without `b_o`), its MLP weights and its `b_o`."""
    blk = _weight_shapes(cfg).blocks[0]
    attn = sum(_nbytes(getattr(blk, f)) for f in _ATTN_FIELDS)
    mlp = sum(_nbytes(getattr(blk, f)) for f in _MLP_FIELDS)
    return attn, mlp, _nbytes(blk.b_o)


def _weight_parts(cfg) -> dict[str, int]:
    """Bytes of the weights by part: `blocks` (all layers), `embed` (token and position
    tables), `unembed` (final norm and unembedding); counted from the model's own shapes, so
    exact for every family (grouped-query k/v, gated MLPs, post-norms, RMSNorm, no position
    table) and storage dtype."""
    model = _weight_shapes(cfg)
    return {
        "blocks": _nbytes(model.blocks),
        "embed": _nbytes((model.w_e, model.w_pos)),
        "unembed": _nbytes((model.ln_final, model.w_u, model.b_u)),
    }


def weight_bytes(cfg) -> int:
    """Bytes of a [`jacdc.models.Transformer`][]'s float32 weights."""
    return sum(_weight_parts(cfg).values())


def source_bytes(cfg, batch: int, seq: int, itemsize: int = _F32) -> int:
    """Bytes of batched [`jacdc.models.Sources`][]: `B (N S d + 3 L H S e)` floats."""
    shape = cfg.graph_shape
    per = shape.n_src * seq * cfg.d_model + 3 * cfg.n_layers * cfg.n_heads * seq * cfg.d_head
    return batch * per * itemsize


def _array_bytes(tree, batch: int | None = None, per_device_batch: int | None = None) -> int:
    """Bytes of a pytree's arrays; leaves with a leading axis of length `batch` are counted at
    `per_device_batch` rows (their share on one device of a batch-sharded mesh)."""
    total = 0
    for x in jax.tree.leaves(tree):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            continue
        n = math.prod(x.shape) * np.dtype(x.dtype).itemsize
        if batch and per_device_batch and x.ndim and x.shape[0] == batch:
            n = n // batch * per_device_batch
        total += n
    return total


def task_bytes(
    cfg, batch: int, seq: int, n_pos: int = 1, task=None, n_batch: int = 1, *,
    tokens: tuple[str, ...] = ("clean", "corrupted"),
) -> int:  # fmt: skip
    """Bytes of a task's arrays per device. Exact when `task` is given; otherwise the tokens
    and a KL metric (clean log-probs `B P V`, weights `B P`). `tokens`: which token arrays a
    step reads (jit drops the others: the fast ACDC evaluators never read the corrupted
    tokens, and read the clean ones only when they embed)."""
    b = batch // n_batch
    dropped = sum(name not in tokens for name in ("clean", "corrupted"))
    if task is not None:
        return _array_bytes(task, task.batch, task.batch // n_batch) - dropped * _array_bytes(
            task.clean, task.batch, task.batch // n_batch
        )
    return ((2 - dropped) * b * seq + n_pos + b * n_pos * cfg.vocab_out + b * n_pos) * _F32


# ---------------------------------------------------------------------------------------------
# Receivers
# ---------------------------------------------------------------------------------------------


def _n_prefix(shape, stage: int) -> int:
    if stage == 0:
        return 0
    if stage == 2 * shape.n_layers:
        return shape.n_src
    return shape.n_src_before_stage(stage)


def _receiver_groups(shape, stage: int) -> list[tuple[str, int]]:
    """`(kind, n_sources)` of each receiver group that runs when the forward starts at
    `stage` (a layer's 3H q/k/v inputs are one group: they share one stack of sources)."""
    groups = []
    for layer in range(shape.n_layers):
        if 2 * layer >= stage:
            groups.append(("attn", shape.n_src_before_layer(layer)))
        if shape.has_mlp and 2 * layer + 1 >= stage:
            groups.append(("mlp", shape.n_src_before_mlp(layer)))
    groups.append(("out", shape.n_src))
    return groups


def _stages(shape) -> list[int]:
    return [s for s in range(2 * shape.n_layers + 1) if shape.has_mlp or s % 2 == 0 or
            s == 2 * shape.n_layers]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Per-algorithm estimates
# ---------------------------------------------------------------------------------------------


def _per_device(batch: int, lanes: int, mesh_shape) -> tuple[int, int]:
    n_batch, n_lane = mesh_shape
    return max(1, batch // n_batch), max(1, math.ceil(lanes / n_lane))


def _itemsize(dtype) -> int:
    return _F32 if dtype is None else np.dtype(dtype).itemsize


def acdc_memory(
    cfg,
    batch: int,
    seq: int,
    *,
    candidates: int,
    n_pos: int = 1,
    task=None,
    mesh_shape: tuple[int, int] = (1, 1),
    source_dtype=None,
    stage: int | None = None,
    suffix: bool | str = True,
    backend: str | None = None,
    layers: str = "scan",
) -> MemoryEstimate:
    """Bytes of the fast ACDC engine, per device.

    **Arguments:**

    - `cfg`: the [`jacdc.models.TransformerConfig`][].
    - `batch`, `seq`: the task's shape; `n_pos`: metric positions (`len(logit_positions)`).
    - `candidates`: lanes per device call (`acdc_sweep(candidates=...)`).
    - `task`: the task itself, to count its arrays exactly (else: tokens + a KL metric).
    - `mesh_shape`: `(n_batch, n_lane)` from [`jacdc._mesh.make_mesh`][].
    - `source_dtype`: dtype of the stored source buffers (`jnp.bfloat16` halves them).
    - `stage`: one call starting at this stage; `None`: the run's worst stage.
    - `suffix`: the engine's suffix recomputation (`False`: every call starts at stage 0 and
        no clean sources are cached; `"auto"` counts as `True`, the larger).
    - `backend`: `"cpu"` or `"gpu"` (XLA lays out memory differently); default: JAX's default
        backend. TPUs get the GPU coefficients.
    - `layers`: the engine's forward, `"scan"` (default; one function for every stage) or
        `"unrolled"` (one per stage; `stage` applies).

    **Returns:** a [`MemoryEstimate`][].
    """
    if task is not None:
        n_pos = int(np.size(task.logit_positions))
    shape = cfg.graph_shape
    B, K = _per_device(batch, candidates, mesh_shape)
    fs = _itemsize(source_dtype)
    n_edges = shape.n_edges()
    if layers == "scan":
        return _acdc_scan_memory(cfg, B, K, seq, n_pos, task, batch, mesh_shape, fs, suffix,
                                 n_edges)  # fmt: skip
    fixed = {"candidate masks": K * n_edges * _F32}
    buffer = B * shape.n_src * seq * cfg.d_model * fs
    stages = [0] if not suffix else (_stages(shape) if stage is None else [stage])
    best = None
    for s in stages:
        prefix = buffer if s > 0 else 0  # the engine passes the whole clean buffer
        weights = _unrolled_weight_args(cfg, s)
        embeds = s == 0 or cfg.positional == "shortformer"
        reads = {
            "task": task_bytes(cfg, batch, seq, n_pos, task, mesh_shape[0],
                               tokens=("clean",) if embeds else ()),
            # the corrupted q/k/v are read while some attention layer runs
            "corrupted sources": source_bytes(cfg, B, seq, fs) if s <= 2 * (cfg.n_layers - 1)
            else B * shape.n_src * seq * cfg.d_model * fs,
        }  # fmt: skip
        temp = _acdc_temp(cfg, B, seq, K, n_pos, s, _ACDC_COEF[_backend(backend)])
        step = sum(fixed.values()) + sum(reads.values()) + weights + prefix + K * _F32 + temp
        if best is None or step > best[0]:
            best = (step, s, prefix, temp, weights, reads)
    _, s, prefix, temp, weights, reads = best
    fixed = dict(reads, **fixed)
    # held between calls, not an argument of this stage's step: the clean sources at stage 0,
    # the weights of the layers before the stage (jit drops arguments a step never reads)
    persistent = (buffer - prefix if suffix else 0) + weight_bytes(cfg) - weights
    parts = dict(fixed, **{"weights": weights, "clean sources": prefix, "activations": temp,
                           "held between calls": persistent})  # fmt: skip
    return MemoryEstimate(
        "acdc", sum(fixed.values()) + weights + prefix, K * _F32, temp, persistent, parts,
        tuple(mesh_shape), f"{K} candidates, stage {s}", s,
    )  # fmt: skip


def _unrolled_weight_args(cfg, stage: int) -> int:
    """The weights the unrolled evaluator of `stage` reads (jit drops the others): all of them
    at stage 0; later, not the embedding tables (the position table stays for shortformer
    models, which add it to q and k), nor the norm and q/k/v/o weights of the attention
    layers before the stage, nor the MLPs before it. Every layer's `b_o` is read (the biases
    accumulate)."""
    if stage == 0:
        return weight_bytes(cfg)
    attn, mlp, _ = _block_part_bytes(cfg)
    model = _weight_shapes(cfg)
    skipped_attn = (stage + 1) // 2  # layers whose attention runs before `stage`
    skipped_mlp = stage // 2
    dropped = _nbytes(model.w_e)
    if cfg.positional != "shortformer":
        dropped += _nbytes(model.w_pos)
    dropped += skipped_attn * attn + skipped_mlp * mlp
    return weight_bytes(cfg) - dropped


def _acdc_scan_memory(cfg, B, K, seq, n_pos, task, batch, mesh_shape, fs, suffix, n_edges):
    """The scan-over-layers evaluator: one compiled function for every stage, whose arguments
    are the stacked block weights, the clean run's whole source buffer (with suffix
    recomputation) and the rest; jit drops the arguments the function never reads (the token
    and position tables when the embeddings come from the clean buffer)."""
    shape = cfg.graph_shape
    suffix = bool(suffix)
    w = _weight_parts(cfg)
    embed_read = not suffix or cfg.positional == "shortformer"
    pos_table = _nbytes(_weight_shapes(cfg).w_pos)
    embed_args = w["embed"] if not suffix else (pos_table if embed_read else 0)
    clean = B * shape.n_src * seq * cfg.d_model * fs if suffix else 0
    # Banded evaluators (jacdc._evaluators.auto_bands) also hold `clean - corrupted`.
    banded = suffix and auto_bands(cfg, K * mesh_shape[1], batch, seq)
    fixed = {
        "weights": w["blocks"] + w["unembed"] + embed_args,
        "task": task_bytes(
            cfg, batch, seq, n_pos, task, mesh_shape[0], tokens=("clean",) if embed_read else ()
        ),  # fmt: skip
        "corrupted sources": source_bytes(cfg, B, seq, fs),
        "clean sources": clean,
        "clean - corrupted (banded)": clean if banded else 0,
        "candidate masks": K * n_edges * _F32,
        "stage": 4,
    }
    bsd = B * seq * cfg.d_model * _F32
    N, H = shape.n_src, cfg.n_heads
    terms = (
        K * bsd * N,  # each lane's source buffer (the scan's carry), and its copies
        K * bsd * 3 * H,  # every head's mixed q/k/v input
        K * B * seq * (cfg.d_mlp or 0) * _F32,  # MLP hidden units
        K * B * n_pos * cfg.vocab_out * _F32,  # logits and log-probabilities
        bsd * N,  # the clean / corrupted buffers converted for the contraction
    )
    temp = int(sum(c * t for c, t in zip(_ACDC_SCAN_COEF, terms)))
    # Held between calls but not read by the step: the unstacked blocks of the model and the
    # tables jit dropped.
    persistent = w["blocks"] + w["embed"] - embed_args
    parts = dict(fixed, **{"activations": temp, "held between calls": persistent})
    return MemoryEstimate(
        "acdc", sum(fixed.values()), K * _F32, temp, persistent, parts, tuple(mesh_shape),
        f"{K} candidates, every stage (scan)", None,
    )  # fmt: skip


# Coefficients of the scan evaluator's terms (lane buffers, q/k/v inputs, MLP hidden, logits,
# buffer conversions), fitted to XLA:CPU (jaxlib 0.10.2) over 24 shapes: the total within 16%
# of XLA's on all of them. Uncalibrated on GPUs and TPUs (used as they are).
_ACDC_SCAN_COEF = (2.2, 2.0, 0.25, 2.0, 1.35)


# Coefficients of the fast engine's terms (stack, corrupted_copies, corrupted_mix, qkv, logits),
# per XLA backend; see the module docstring for where they come from.
_ACDC_COEF = {"cpu": (1.5, 0.75, 0.25, 1.0, 2.0), "gpu": (1.0, 0.0, 0.25, 1.0, 2.0)}


def _backend(backend: str | None) -> str:
    backend = jax.default_backend() if backend is None else backend
    return "cpu" if backend == "cpu" else "gpu"  # TPUs: the GPU figures, uncalibrated


def _acdc_temp(cfg, B, S, K, P, stage, coef) -> int:
    shape = cfg.graph_shape
    H, e, V = cfg.n_heads, cfg.d_head, cfg.vocab_out
    bsd = B * S * cfg.d_model * _F32  # the forward's temporaries are float32
    n_pre = _n_prefix(shape, stage)
    groups = _receiver_groups(shape, stage)
    n_attn = sum(kind == "attn" for kind, _ in groups)
    n_mlp = sum(kind == "mlp" for kind, _ in groups)
    stack = max((K if n > n_pre else 1) * bsd * n for _, n in groups)
    corrupted_copies = bsd * sum(n for _, n in groups)
    corrupted_mix = K * bsd * (3 * H * n_attn + n_mlp + 1)
    qkv = K * B * S * 3 * H * e * _F32 * n_attn
    logits = K * B * P * V * _F32
    terms = (stack, corrupted_copies, corrupted_mix, qkv, logits)
    return int(sum(c * t for c, t in zip(coef, terms)))


# Coefficients of the gradient terms, calibrated against XLA (see the module docstring):
# (stacks, corrupted_copies, mixes, qkv, patterns, hidden, largest stack).
_EAP_COEF = {
    "cpu": (1.0, 0.75, 3.5, 3.0, 2.0, 1.0, 0.0),
    "gpu": (1.0, 0.0, 1.5, 3.0, 2.0, 1.0, 0.0),
}
_SP_COEF = {
    "cpu": (1.4, 1.2, 0.9, 0.0, 10.0, 4.0, 3.0),
    "gpu": (1.4, 0.0, 0.9, 0.0, 10.0, 4.0, 3.0),
}


def _grad_temp(cfg, B, S, K, coef) -> int:
    shape = cfg.graph_shape
    H, e, L = cfg.n_heads, cfg.d_head, cfg.n_layers
    bsd = B * S * cfg.d_model * _F32
    reads = [n for _, n in _receiver_groups(shape, 0)]
    terms = (
        K * bsd * sum(reads),  # every receiver's stack of sources, saved for the backward
        bsd * sum(reads),  # the corrupted sources laid out per receiver
        K * bsd * 3 * H * L,  # mixed q/k/v inputs (and their LayerNorm)
        K * B * S * 3 * H * e * _F32 * L,  # q, k, v
        K * B * H * S * S * _F32 * L,  # attention scores and patterns
        K * B * S * (cfg.d_mlp or 0) * _F32 * L,  # MLP hidden units
        K * bsd * max(reads),  # the backward's largest stack gradient
    )
    return int(sum(c * t for c, t in zip(coef, terms)))


def _mask_bytes(shape) -> int:
    L, H, n = shape.n_layers, shape.n_heads, shape.n_src
    return (3 * L * H * n + L * n + n + 3 * L * H) * _F32


def eap_memory(
    cfg,
    batch: int,
    seq: int,
    *,
    steps: int = 1,
    n_pos: int = 1,
    task=None,
    mesh_shape: tuple[int, int] = (1, 1),
    backend: str | None = None,
) -> MemoryEstimate:
    """Bytes of EAP (`steps=1`) or EAP-IG with `steps` points (vmapped), per device. Arguments
    as [`acdc_memory`][]; the batch is sharded, the points are not."""
    if task is not None:
        n_pos = int(np.size(task.logit_positions))
    B = max(1, batch // mesh_shape[0])
    K = steps
    args = {
        "weights": weight_bytes(cfg),
        "task": task_bytes(cfg, batch, seq, n_pos, task, mesh_shape[0]),
        "corrupted sources": source_bytes(cfg, B, seq),
    }
    out = _mask_bytes(cfg.graph_shape)
    temp = _grad_temp(cfg, B, seq, K, _EAP_COEF[_backend(backend)])
    parts = dict(args, **{"activations (saved for backward)": temp, "gradients": out})
    return MemoryEstimate("eap", sum(args.values()), out, temp, 0, parts, tuple(mesh_shape),
                          f"{K} point{'s' if K > 1 else ''}")  # fmt: skip


def sp_memory(
    cfg,
    batch: int,
    seq: int,
    *,
    n_lambdas: int,
    n_steps: int = 3000,
    n_pos: int = 1,
    task=None,
    mesh_shape: tuple[int, int] = (1, 1),
    backend: str | None = None,
) -> MemoryEstimate:
    """Bytes of an SP sweep over `n_lambdas` values trained together, per device (lambdas are
    split over the lane axis). Arguments as [`acdc_memory`][]."""
    if task is not None:
        n_pos = int(np.size(task.logit_positions))
    B, K = _per_device(batch, n_lambdas, mesh_shape)
    L, H = cfg.n_layers, cfg.n_heads
    units = L * (3 * H + 1)
    state = K * units * 3 * _F32 + K * 4  # log_alpha, Adam mu and nu, step count
    args = {
        "weights": weight_bytes(cfg),
        "task": task_bytes(cfg, batch, seq, n_pos, task, mesh_shape[0]),
        "corrupted sources": source_bytes(cfg, B, seq),
        "SP state": state + K * 12,  # + lambdas and keys
    }
    out = state + 3 * K * n_steps * _F32  # final state + loss/metric/reg histories
    temp = _grad_temp(cfg, B, seq, K, _SP_COEF[_backend(backend)])
    parts = dict(args, **{"activations (saved for backward)": temp, "outputs": out})
    return MemoryEstimate("sp", sum(args.values()), out, temp, 0, parts, tuple(mesh_shape),
                          f"{K} lambdas, {n_steps} steps")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# XLA's own figure
# ---------------------------------------------------------------------------------------------


def _sds(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


def _is_leaf_array(x) -> bool:
    return isinstance(x, (jax.Array, jax.ShapeDtypeStruct, np.ndarray))


def _abstract(tree):
    return jax.tree.map(lambda x: _sds(x.shape, x.dtype) if _is_leaf_array(x) else x, tree)


def _abstract_inputs(cfg, batch, seq, n_pos, task):
    from jacdc.models import Sources, Transformer
    from jacdc.tasks import KLMetric, Task

    model = jax.eval_shape(lambda: Transformer(cfg, key=jr.key(0)))
    if task is None:  # built under eval_shape: its fields are typed arrays, never allocated

        def build():
            tokens = jnp.zeros((batch, seq), jnp.int32)
            return Task(
                clean=tokens, corrupted=tokens, corrupted_positions=None,
                logit_positions=jnp.zeros((n_pos,), jnp.int32),
                metrics={"kl_div": KLMetric(clean_logprobs=jnp.zeros((batch, n_pos, cfg.vocab_out)),
                                            weights=jnp.ones((batch, n_pos)))},
            )  # fmt: skip

        task = jax.eval_shape(build)
    task = _abstract(task)
    L, H = cfg.n_layers, cfg.n_heads

    def build_sources():
        qkv = jnp.zeros((batch, L, H, seq, cfg.d_head))
        return Sources(
            resid=jnp.zeros((batch, cfg.graph_shape.n_src, seq, cfg.d_model)), q=qkv, k=qkv, v=qkv
        )

    return model, task, jax.eval_shape(build_sources)


def _compiled_memory(fn, *args, options=None) -> dict[str, int]:
    args = _abstract(args)
    dynamic, static = eqx.partition(args, _is_leaf_array)
    lowered = jax.jit(lambda dyn: fn(*eqx.combine(dyn, static))).lower(dynamic)
    compiled = lowered.compile(options)
    stats = compiled.memory_analysis()
    out = {
        "arguments": int(stats.argument_size_in_bytes),
        "outputs": int(stats.output_size_in_bytes),
        "temp": int(stats.temp_size_in_bytes),
        "alias": int(stats.alias_size_in_bytes),
    }
    out["total"] = out["arguments"] + out["outputs"] + out["temp"] - out["alias"]
    return out


def xla_memory(
    algorithm: str,
    cfg,
    batch: int,
    seq: int,
    *,
    n_pos: int = 1,
    task=None,
    metric: str = "kl_div",
    candidates: int = 1,
    stage: int = 0,
    steps: int = 1,
    n_lambdas: int = 1,
    n_steps: int = 10,
    layers: str = "scan",
    suffix: bool = True,
) -> dict[str, int]:
    """XLA's own figures for one compiled step on one device, from abstract inputs (nothing is
    allocated; the step is compiled for the default backend): `arguments`, `outputs`, `temp`,
    `alias` and `total = arguments + outputs + temp - alias`.

    `algorithm`: `"acdc"` (the fast engine's evaluator of `candidates` circuits: with
    `layers="scan"` the one compiled function for every stage, given the clean sources when
    `suffix`; with `"unrolled"` the function of `stage`),
    `"eap"` (the mask gradient at `steps` points) or `"sp"` (`n_steps` steps of `n_lambdas`
    lanes). `task`: a task (or its abstract shape) to use instead of tokens + a KL metric."""
    from . import _eap, _evaluators, _sp
    from ._graph import graph_of
    from ._xla import compile_options

    model, task, sources = _abstract_inputs(cfg, batch, seq, n_pos, task)
    if algorithm == "acdc" and layers == "scan":
        from jacdc.models import stack_blocks

        clean = _sds((batch, cfg.graph_shape.n_src, seq, cfg.d_model)) if suffix else None
        vecs = _sds((candidates, len(graph_of(cfg.graph_shape))))
        stacked = jax.eval_shape(stack_blocks, model)
        # The evaluators' undecorated functions, compiled with the engine's options (a nested
        # jit may not carry compile options).
        scan = _evaluators.evaluate_scan.__wrapped__
        return _compiled_memory(
            lambda m, t, c, p, v, st, b: scan(m, t, c, p, v, st, metric, b),
            model, task, sources, clean, vecs, _sds((), jnp.int32), stacked,
            options=compile_options(),
        )  # fmt: skip
    if algorithm == "acdc":
        n = cfg.graph_shape.n_src if stage > 0 else 0  # the engine passes the whole buffer
        prefix = _sds((batch, n, seq, cfg.d_model))
        vecs = _sds((candidates, len(graph_of(cfg.graph_shape))))
        unrolled = _evaluators.evaluate_unrolled.__wrapped__
        return _compiled_memory(
            lambda m, t, c, p, v: unrolled(m, t, c, p, v, stage, metric),
            model, task, sources, prefix, vecs, options=compile_options(),
        )  # fmt: skip
    if algorithm == "eap":
        return _compiled_memory(
            lambda m, t, c, a: _eap._mask_grads(m, t, c, a, metric),
            model, task, sources, _sds((steps,)),
        )  # fmt: skip
    if algorithm == "sp":
        state = jax.eval_shape(lambda: _sp.init_sp_state(cfg.graph_shape, n_lambdas))
        keys = jax.eval_shape(lambda: jr.split(jr.key(0), n_lambdas))
        return _compiled_memory(
            lambda s, lam, lr, k, m, t, c: _sp._sp_train(s, lam, lr, k, m, t, c, metric,
                                                         n_steps),
            state, _sds((n_lambdas,)), _sds(()), keys, model, task, sources,
        )  # fmt: skip
    raise ValueError(f"Unknown algorithm {algorithm!r}; use 'acdc', 'eap' or 'sp'.")


# ---------------------------------------------------------------------------------------------
# Does it fit?
# ---------------------------------------------------------------------------------------------


def check_fits(estimate: MemoryEstimate, device=None, *, fraction: float = 0.9) -> None:
    """Raises [`MemoryBudgetError`][] if `estimate.total` exceeds `fraction` of the memory
    free on `device` (default: the first device). Does nothing when the free memory is
    unknown."""
    free, source = device_memory(device)
    if free is None or estimate.total <= fraction * free:
        return
    raise MemoryBudgetError(
        f"Not enough memory: {estimate} needs about {_fmt(estimate.total)} per device, but only "
        f"{_fmt(free)} is free ({source}). Reduce the batch (--n-val, --seq-len), the "
        "candidates/lambdas per call (--candidates), or shard over more devices (--devices); "
        "on accelerators, bf16 source "
        "buffers halve the source terms."
    )
