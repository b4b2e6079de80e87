"""Subnetwork Probing (SP): hard-concrete masks on nodes, trained with an L0 penalty.

SP (Cao et al. 2021, as adapted by the ACDC paper, reference §5.1) learns one mask per **unit**:
each head's q, k and v output vectors and each layer's MLP output. A unit with mask `m` outputs
`m * x + (1 - m) * cache`, where `cache` is the unit's corrupted activation (corrupted-activation
ablation) or zero (zero ablation).

**Node masks on the edge mask.** Units are expressed through the one masked forward that every
algorithm shares ([`jacdc.metric_value`][]):

- the mask of head `h`'s q unit in layer `l` is the direct edge `q_input -> q` of that head:
  the forward computes `m * q + (1 - m) * q_corrupted`, exactly the unit rule;
- the mask of layer `l`'s MLP unit is written on *every* outgoing edge of that MLP source (all
  receivers' entries for it). Each reader then sees `m * online + (1 - m) * corrupted` of that
  MLP, which is what it would see if the MLP's output itself were `m * x + (1 - m) * cache`.

**Zero ablation.** The original zeroes the q/k/v vectors *including their biases* (the cache is
`None`, so the unit outputs `m * x`). jacdc's ACDC zero ablation instead keeps the q/k/v computed
from the biases alone ([`jacdc.models.zero_ablation_sources`][]). SP and HISP here follow the
original exactly: under zero ablation they use all-zero sources, q/k/v included
([`unit_ablation_sources`][]).

**Hard concrete** (Louizos et al. 2018): `beta = 2/3`, `gamma = -0.1`, `zeta = 1.1`; the
parameter is `log_alpha`, initialised so that the keep probability is 0.9:
`log_alpha = logit((0.9 - gamma) / (zeta - gamma)) ~= 1.609`. Every training step draws a fresh
sample `u ~ U(1e-4, 1 - 1e-4)`, `s = sigmoid((log u - log(1 - u) + log_alpha) / beta)`,
`m = clip(s (zeta - gamma) + gamma, 0, 1)`.

**Loss** = task metric + `lambda` * regulariser, where the regulariser is the mean over hook
points (each layer's `hook_q`, `hook_k`, `hook_v` and MLP) of the per-point mean expected L0
`sigmoid(log_alpha - beta log(-gamma / zeta))`. Attention-only models keep one unused MLP
parameter per layer in this average, as the original's masked transformer does; it dilutes the
penalty by 3/4 and has no other effect. Adam (optax), learning rate 1e-3; only the masks train.

**Final circuit**: a unit is dropped if one stochastic sample of its mask is `< 0.5` (the
original), or, with `deterministic=True`, if its deterministic mask
`clip(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1)` is `< 0.5` (i.e. `log_alpha < 0`).
Units become edges by the original `iterative_correspondence_from_mask` rules
([`circuit_from_units`][]).

**Sweeps**: [`sp_sweep`][] trains all `lambda` values as one vmapped, jit-compiled run (over
`lambda` and over PRNG keys); `lambda` and the learning rate are JAX arrays, so a new sweep of the
same length does not recompile.
"""

from collections.abc import Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ._graph import QKV, EdgeMask, GraphShape, graph_of
from ._patching import ablation_sources, metric_value, resolve_ablation


BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1
INIT_KEEP = 0.9
INIT_LOG_ALPHA = float(np.log((INIT_KEEP - GAMMA) / (ZETA - INIT_KEEP)))


# ---- units --------------------------------------------------------------------------------


class NodeMask(eqx.Module):
    """One value per SP/HISP unit (a mask, a `log_alpha`, a score or a keep flag).

    - `q`, `k`, `v`: `(layer, head)`, each head's q/k/v output vector;
    - `mlp`: `(layer,)`, each layer's MLP output (unused for attention-only models).

    May carry leading batch axes (a sweep, or one mask per example). Inside the forward pass the
    leaves are JAX float arrays; host-side values are NumPy (floats for scores, bools for keep
    flags).
    """

    q: Float[Array | np.ndarray, "*batch layer head"] | Bool[np.ndarray, "*batch layer head"]
    k: Float[Array | np.ndarray, "*batch layer head"] | Bool[np.ndarray, "*batch layer head"]
    v: Float[Array | np.ndarray, "*batch layer head"] | Bool[np.ndarray, "*batch layer head"]
    mlp: Float[Array | np.ndarray, "*batch layer"] | Bool[np.ndarray, "*batch layer"]

    @classmethod
    def full(cls, shape: GraphShape, fill: float = 1.0, batch: tuple[int, ...] = ()):
        heads = jnp.full(batch + (shape.n_layers, shape.n_heads), fill, jnp.float32)
        return cls(q=heads, k=heads, v=heads, mlp=jnp.full(batch + (shape.n_layers,), fill))


def unit_names(shape: GraphShape) -> list[str]:
    """Names of the real units in [`unit_vector`][] order: per layer the q heads, k heads, v
    heads, then the MLP (if the model has MLPs)."""
    names = []
    for layer in range(shape.n_layers):
        for c in QKV:
            names += [f"blocks.{layer}.attn.hook_{c}[{h}]" for h in range(shape.n_heads)]
        if shape.has_mlp:
            names.append(f"blocks.{layer}.hook_mlp_out")
    return names


def unit_vector(shape: GraphShape, node: NodeMask) -> np.ndarray:
    """The real units' values as one vector (order of [`unit_names`][]); leading axes kept."""
    q, k, v, mlp = (np.asarray(x) for x in (node.q, node.k, node.v, node.mlp))
    parts = []
    for layer in range(shape.n_layers):
        parts += [q[..., layer, :], k[..., layer, :], v[..., layer, :]]
        if shape.has_mlp:
            parts.append(mlp[..., layer : layer + 1])
    return np.concatenate(parts, axis=-1)


def units_from_vector(shape: GraphShape, values: np.ndarray, fill=1.0) -> NodeMask:
    """Inverse of [`unit_vector`][] (MLP entries of attention-only models get `fill`)."""
    values = np.asarray(values)
    L, H = shape.n_layers, shape.n_heads
    per = 3 * H + int(shape.has_mlp)
    if values.shape[-1] != L * per:
        raise ValueError(f"Expected {L * per} unit values, got shape {values.shape}.")
    blocks = values.reshape(values.shape[:-1] + (L, per))
    mlp = blocks[..., 3 * H] if shape.has_mlp else np.full(values.shape[:-1] + (L,), fill)
    return NodeMask(
        q=blocks[..., 0:H], k=blocks[..., H : 2 * H], v=blocks[..., 2 * H : 3 * H], mlp=mlp
    )


def node_edge_mask(shape: GraphShape, node: NodeMask) -> EdgeMask:
    """The [`jacdc.EdgeMask`][] that realises unit masks (see the module docstring): q/k/v unit
    masks on the direct edges, each MLP's mask on all of its outgoing edges, 1 elsewhere.
    Leading batch axes of `node` are kept."""
    L, H, n = shape.n_layers, shape.n_heads, shape.n_src
    batch = node.q.shape[:-2]
    dtype = node.q.dtype
    pieces = [jnp.ones(batch + (shape.n_embed,), dtype)]
    for layer in range(L):
        pieces.append(jnp.ones(batch + (H,), dtype))
        if shape.has_mlp:
            pieces.append(node.mlp[..., layer : layer + 1].astype(dtype))
    per_src = jnp.concatenate(pieces, axis=-1)  # (*batch, src)
    heads = jnp.broadcast_to(per_src[..., None, None, :], batch + (L, H, n))
    return EdgeMask(
        q=heads,
        k=heads,
        v=heads,
        mlp=jnp.broadcast_to(per_src[..., None, :], batch + (L, n)),
        out=per_src,
        direct=jnp.stack([node.q, node.k, node.v], axis=-1).astype(dtype),
    )


def circuit_from_units(shape: GraphShape, keep: NodeMask) -> np.ndarray:
    """Present counted edges (bool over edge ids) of the circuit that keeps the units where
    `keep` is True, by the original `iterative_correspondence_from_mask` rules:

    - a dropped q (k, v) unit removes every edge into that head's q (k, v) input and its direct
      edge;
    - a head whose q, k and v units are all dropped loses its result node: every outgoing edge;
    - a dropped MLP removes every edge into its input and out of its output.

    Leading batch axes of `keep` give a batch of circuits `(*batch, edge)`.
    """
    graph = graph_of(shape)
    q, k, v = (np.asarray(x, bool) for x in (keep.q, keep.k, keep.v))
    mlp = np.asarray(keep.mlp, bool)
    batch = q.shape[:-2]
    L, H = shape.n_layers, shape.n_heads
    # Per source: does it still exist as a sender?
    alive = [np.ones(batch, bool)] * shape.n_embed
    head_alive = q | k | v  # (*batch, L, H)
    for layer in range(L):
        alive += [head_alive[..., layer, h] for h in range(H)]
        if shape.has_mlp:
            alive.append(mlp[..., layer])
    src_alive = np.stack(alive, axis=-1)  # (*batch, src)
    unit = {"q": q, "k": k, "v": v}
    present = np.ones(batch + (len(graph),), bool)
    fields = np.array([e.field for e in graph.edges])
    for name in QKV:
        ids = np.nonzero(fields == name)[0]
        idx = np.array([graph.edges[i].index for i in ids])
        present[..., ids] = unit[name][..., idx[:, 0], idx[:, 1]] & src_alive[..., idx[:, 2]]
    ids = np.nonzero(fields == "direct")[0]
    idx = np.array([graph.edges[i].index for i in ids])
    qkv = np.stack([q, k, v], axis=-1)
    present[..., ids] = qkv[..., idx[:, 0], idx[:, 1], idx[:, 2]]
    ids = np.nonzero(fields == "mlp")[0]
    if ids.size:
        idx = np.array([graph.edges[i].index for i in ids])
        present[..., ids] = mlp[..., idx[:, 0]] & src_alive[..., idx[:, 1]]
    ids = np.nonzero(fields == "out")[0]
    idx = np.array([graph.edges[i].index for i in ids])
    present[..., ids] = src_alive[..., idx[:, 0]]
    return present


def edge_scores_from_units(shape: GraphShape, values: NodeMask) -> np.ndarray:
    """Per-edge scores from per-unit scores (float over edge ids, `inf` where no unit governs
    the edge): [`circuit_from_units`][]'s rules with `min` for "and" and `max` for "or", so
    that for every `t`, `scores >= t` is exactly `circuit_from_units(shape, values >= t)`.
    (An edge's score is the score of the weakest unit it needs.)"""
    graph = graph_of(shape)
    q, k, v = (np.asarray(x, np.float64) for x in (values.q, values.k, values.v))
    mlp = np.asarray(values.mlp, np.float64)
    L, H = shape.n_layers, shape.n_heads
    head = np.maximum(np.maximum(q, k), v)  # a head's result lives while any unit does
    alive = [np.inf] * shape.n_embed
    for layer in range(L):
        alive += [head[layer, h] for h in range(H)]
        if shape.has_mlp:
            alive.append(mlp[layer])
    src = np.asarray(alive, np.float64)
    unit = {"q": q, "k": k, "v": v}
    out = np.full(len(graph), np.inf)
    for i, e in enumerate(graph.edges):
        if e.field in QKV:
            out[i] = min(unit[e.field][e.index[0], e.index[1]], src[e.index[2]])
        elif e.field == "direct":
            out[i] = (q, k, v)[e.index[2]][e.index[0], e.index[1]]
        elif e.field == "mlp":
            out[i] = min(mlp[e.index[0]], src[e.index[1]])
        else:
            out[i] = src[e.index[0]]
    return out


def unit_ablation_sources(model, task, zero_ablation: bool = False, *, ablation=None):
    """The cache a unit is ablated to: the clean model's activations on the corrupted batch,
    (zero ablation, as in the original SP/HISP) all zeros, q/k/v biases included, or (mean
    ablation) the reference mean of [`jacdc.ablation_sources`][]. The corrupted run uses the
    ordinary positions even where the task shuffles them for ACDC (`task.corrupted_positions`,
    tracr's `positions="shuffled"`): the original's SP cache never shuffles positions."""
    from jacdc.models import corrupted_sources, empty_sources

    ab = resolve_ablation(zero_ablation, ablation)
    if ab.kind == "zero":
        return empty_sources(model.cfg, task.seq, (task.batch,))
    if ab.kind == "corrupted":
        return corrupted_sources(model, task.corrupted)
    return ablation_sources(model, task, ablation=ab)


# ---- hard concrete ------------------------------------------------------------------------


def sample_hard_concrete(log_alpha, *, key: PRNGKeyArray):
    """A hard-concrete sample for every leaf entry of the pytree `log_alpha`."""
    leaves, treedef = jax.tree.flatten(log_alpha)
    keys = jr.split(key, len(leaves))
    out = []
    for leaf, k in zip(leaves, keys):
        u = jr.uniform(k, leaf.shape, leaf.dtype, minval=1e-4, maxval=1 - 1e-4)
        s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + leaf) / BETA)
        out.append(jnp.clip(s * (ZETA - GAMMA) + GAMMA, 0.0, 1.0))
    return jax.tree.unflatten(treedef, out)


def deterministic_hard_concrete(log_alpha):
    """The noise-free hard-concrete mask `clip(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1)`."""
    return jax.tree.map(
        lambda la: jnp.clip(jax.nn.sigmoid(la) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0), log_alpha
    )


def expected_l0(log_alpha):
    """Probability that each hard-concrete mask is non-zero (same pytree structure)."""
    shift = BETA * float(np.log(-GAMMA / ZETA))
    return jax.tree.map(lambda la: jax.nn.sigmoid(la - shift), log_alpha)


def sp_regulariser(log_alpha: NodeMask) -> Float[Array, ""]:
    """Mean over hook points (per layer: hook_q, hook_k, hook_v, MLP) of the per-point mean
    expected L0."""
    l0 = expected_l0(log_alpha)
    points = jnp.concatenate(
        [l0.q.mean(-1), l0.k.mean(-1), l0.v.mean(-1), l0.mlp], axis=-1
    )  # (*batch, 4 * layer)
    return points.mean(-1)


# ---- training -----------------------------------------------------------------------------


class SPState(NamedTuple):
    """Explicit training state of one SP run (or of a sweep, with a leading lane axis)."""

    log_alpha: NodeMask
    opt_state: optax.OptState


class SPResult(NamedTuple):
    """One SP run.

    - `lam`: the regularisation strength (the ROC "score" of this circuit).
    - `log_alpha`: the trained [`NodeMask`][] parameters (NumPy).
    - `keep`: the kept units ([`NodeMask`][] of NumPy bools).
    - `present`: the circuit's present counted edges, bool over edge ids.
    - `loss`, `metric`, `reg`: per-step histories (NumPy), the metric on the sampled masks.
    """

    lam: float
    log_alpha: NodeMask
    keep: NodeMask
    present: np.ndarray
    loss: np.ndarray
    metric: np.ndarray
    reg: np.ndarray

    @property
    def n_edges(self) -> int:
        return int(self.present.sum())


def _sp_loss(log_alpha, lam, key, model, task, corrupted, metric):
    shape = model.graph_shape
    mask = node_edge_mask(shape, sample_hard_concrete(log_alpha, key=key))
    value = metric_value(model, task, mask, corrupted, metric)
    reg = sp_regulariser(log_alpha)
    return value + lam * reg, (value, reg)


def _sp_step_one(state: SPState, lam, lr, key, model, task, corrupted, metric):
    grad_fn = jax.value_and_grad(_sp_loss, has_aux=True)
    (loss, (value, reg)), grads = grad_fn(state.log_alpha, lam, key, model, task, corrupted, metric)
    updates, opt_state = optax.adam(lr).update(grads, state.opt_state, state.log_alpha)
    return SPState(optax.apply_updates(state.log_alpha, updates), opt_state), (loss, value, reg)


@eqx.filter_jit
def sp_step(
    state: SPState,
    lambdas: Float[Array, " lane"],
    lr: Float[Array, ""],
    keys: PRNGKeyArray,
    model,
    task,
    corrupted,
    metric: str,
):
    """One Adam step of every lane of a sweep (leading lane axis on `state`, `lambdas` and
    `keys`). Returns the new state and `(loss, metric, reg)` per lane. [`sp_sweep`][] runs
    the same step in a `lax.scan`."""
    step = lambda s, lam, k: _sp_step_one(s, lam, lr, k, model, task, corrupted, metric)
    return jax.vmap(step)(state, lambdas, keys)


_TRACES = {"sp_train": 0}


def _sp_scan(state, lambdas, lr, keys, model, task, corrupted, metric: str, steps):
    def lane(state, lam, key):
        def body(s, i):
            return _sp_step_one(s, lam, lr, jr.fold_in(key, i), model, task, corrupted, metric)

        return jax.lax.scan(body, state, steps)

    return jax.vmap(lane)(state, lambdas, keys)


@eqx.filter_jit
def _sp_train(state, lambdas, lr, keys, model, task, corrupted, metric: str, n_steps: int):
    _TRACES["sp_train"] += 1
    return _sp_scan(state, lambdas, lr, keys, model, task, corrupted, metric, jnp.arange(n_steps))


@eqx.filter_jit
def _sp_train_steps(state, lambdas, lr, keys, model, task, corrupted, metric: str, steps):
    # `_sp_train` over the given step indices (an int array): one chunk of a resumable run.
    _TRACES["sp_train"] += 1
    return _sp_scan(state, lambdas, lr, keys, model, task, corrupted, metric, steps)


def restore_tree(template, leaves: list, what: str = "checkpoint"):
    """`template`'s structure with `leaves` (NumPy arrays) put back, each checked against the
    template leaf's shape and dtype (`ValueError` otherwise)."""
    flat, treedef = jax.tree.flatten(template)
    if len(leaves) != len(flat):
        raise ValueError(
            f"The {what} holds {len(leaves)} arrays; this run's state has {len(flat)}."
        )
    out = []
    for i, (old, new) in enumerate(zip(flat, leaves)):
        new = np.asarray(new)
        if new.shape != tuple(old.shape) or new.dtype != old.dtype:
            raise ValueError(
                f"The {what}'s array {i} has shape {new.shape} {new.dtype}; this run's state "
                f"needs {tuple(old.shape)} {old.dtype}."
            )
        if new.dtype.kind == "f" and not np.all(np.isfinite(new)):
            raise ValueError(f"The {what}'s array {i} holds non-finite values.")
        out.append(jnp.asarray(new))
    return jax.tree.unflatten(treedef, out)


def train_in_chunks(
    run_steps,
    carry,
    n_steps: int,
    *,
    chunk: int | None = None,
    start: int = 0,
    history=None,
    checkpoint=None,
    progress=None,
    to_host=None,
):
    """Runs `run_steps(carry, steps) -> (carry, histories)` over steps `start..n_steps - 1` in
    chunks of `chunk` steps (all at once when `None`). After every chunk: `checkpoint(step,
    carry, histories)` (host copies; the histories so far, each `(lane, step)`), then
    `progress(step, mean loss of the chunk's last step)` (the first history is the loss).
    `history`: the histories of steps `0..start - 1` (a resumed run). Returns the final carry
    and the full histories. Chunking does not change a step's computation: a run resumed from
    any chunk boundary takes the same steps as one that never stopped."""
    from ._runs import interruption_point

    host = to_host or (lambda tree: jax.tree.map(np.asarray, tree))
    pieces = [] if history is None else [tuple(np.asarray(h) for h in history)]
    if start > n_steps or start < 0:
        raise ValueError(f"Cannot resume at step {start} of a {n_steps}-step run.")
    size = n_steps if chunk is None else max(1, int(chunk))
    step = start
    while step < n_steps:
        stop = min(n_steps, step + size)
        carry, hist = run_steps(carry, jnp.arange(step, stop))
        pieces.append(tuple(np.asarray(h) for h in host(hist)))
        step = stop
        if checkpoint is not None:
            joined = tuple(
                np.concatenate([p[i] for p in pieces], axis=1) for i in range(len(pieces[0]))
            )
            pieces = [joined]
            checkpoint(step, host(carry), joined)
        if progress is not None:
            progress(step, float(np.mean(pieces[-1][0][:, -1])))
        interruption_point("train-chunk")
    if not pieces:
        raise ValueError("Nothing to train: the run has no steps.")
    hist = tuple(np.concatenate([p[i] for p in pieces], axis=1) for i in range(len(pieces[0])))
    return carry, hist


def check_histories_finite(loss, what: str) -> None:
    """`ValueError` if a training loss history holds NaN/inf (non-finite weights or data)."""
    loss = np.asarray(loss)
    if not np.all(np.isfinite(loss)):
        first = int(np.argmax(~np.isfinite(loss).reshape(loss.shape[0], -1).all(0)))
        raise ValueError(
            f"{what}: the loss is not finite (first at step {first}); the model or data give "
            "NaN/inf values. Check the weights and the dataset."
        )


def init_sp_state(shape: GraphShape, n_lanes: int) -> SPState:
    """All `log_alpha` at the keep-probability-0.9 init, and fresh Adam state, per lane."""
    log_alpha = NodeMask.full(shape, INIT_LOG_ALPHA, (n_lanes,))
    opt_state = jax.vmap(optax.adam(1e-3).init)(log_alpha)
    return SPState(log_alpha, opt_state)


def _check_lambdas(lambdas) -> np.ndarray:
    lams = np.asarray(lambdas, np.float64).reshape(-1)
    if lams.size == 0:
        raise ValueError("The lambda sweep is empty; give at least one regularisation strength.")
    if not np.all(np.isfinite(lams)) or np.any(lams < 0):
        raise ValueError(
            f"Every lambda must be a finite number >= 0, got {lams.tolist()}. (lambda < 0 "
            "would reward keeping units; lambda = 0 trains without the penalty, which the "
            "paper's grid did for its smallest values, see `jacdc.paper_lambdas`.)"
        )
    return lams


def sp_sweep(
    model,
    task,
    lambdas: Sequence[float] | np.ndarray,
    *,
    key: PRNGKeyArray,
    metric: str,
    zero_ablation: bool = False,
    n_steps: int = 3000,
    lr: float = 1e-3,
    deterministic: bool = False,
    ablation=None,
) -> list[SPResult]:
    """Subnetwork Probing for several regularisation strengths, as one compiled run.

    **Arguments:**

    - `model`: a [`jacdc.models.Transformer`][].
    - `task`: the [`jacdc.tasks.Task`][] split to train on (the validation split).
    - `lambdas`: the regularisation strengths (positive).
    - `key`: PRNG key; lane `i` uses `jr.split(key, len(lambdas))[i]` for its per-step samples
        (`jr.fold_in(lane_key, step)`) and its final sample (`fold_in(lane_key, n_steps)`), so it
        equals [`subnetwork_probing`][] with that key.
    - `metric`: the task metric to minimise (a key of `task.metrics`).
    - `zero_ablation`: unit ablation to zero (the original's, q/k/v biases included) instead of
        corrupted activations.
    - `ablation`: `"corrupted"`, `"zero"`, `"mean"`, `"mean-positions"` or a
        [`jacdc.Ablation`][] (see [`unit_ablation_sources`][]).
    - `n_steps`: full-batch Adam steps (the paper's sweep used 10,000; its CLI default 3,000).
    - `lr`: Adam learning rate.
    - `deterministic`: threshold the noise-free mask instead of one sample (see module doc).

    **Returns:** one [`SPResult`][] per lambda, in order.
    """
    lams = _check_lambdas(lambdas)
    keys = jr.split(key, lams.size)
    return _sweep_with_keys(
        model, task, lams, keys, metric, zero_ablation, n_steps, lr, deterministic, ablation
    )


def subnetwork_probing(
    model,
    task,
    lam: float,
    *,
    key: PRNGKeyArray,
    metric: str,
    zero_ablation: bool = False,
    n_steps: int = 3000,
    lr: float = 1e-3,
    deterministic: bool = False,
    ablation=None,
) -> SPResult:
    """Subnetwork Probing with one regularisation strength `lam`; `key` is used as the lane
    key directly. See [`sp_sweep`][] for the arguments."""
    _check_lambdas([lam])
    results = _sweep_with_keys(
        model, task, [lam], key[None], metric, zero_ablation, n_steps, lr, deterministic, ablation
    )
    return results[0]


def check_run(task, metric: str, n_steps: int) -> None:
    """The checks every trained mask (SP, edge pruning) makes before it trains."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}.")
    if metric not in task.metrics:
        raise ValueError(f"Unknown metric {metric!r}; the task has {sorted(task.metrics)}.")


def final_masks(log_alpha, keys, n_steps: int, deterministic: bool):
    """The hard-concrete masks a finished run reports, per lane: the noise-free mask, or one
    sample with each lane's key folded with `n_steps` (a key no training step used)."""
    if deterministic:
        return deterministic_hard_concrete(log_alpha)
    return jax.vmap(lambda la, k: sample_hard_concrete(la, key=jr.fold_in(k, n_steps)))(
        log_alpha, keys
    )


def _sweep_with_keys(
    model, task, lams, keys, metric, zero_ablation, n_steps, lr, deterministic, ablation=None
):
    # `sp_sweep` with explicit lane keys (it splits its key; a single run uses the key as is).
    lams = _check_lambdas(lams)
    check_run(task, metric, n_steps)
    shape = model.graph_shape
    corrupted = unit_ablation_sources(model, task, zero_ablation, ablation=ablation)
    state = init_sp_state(shape, lams.size)
    state, (loss, value, reg) = _sp_train(
        state,
        jnp.asarray(lams, jnp.float32),
        jnp.asarray(lr, jnp.float32),
        keys,
        model,
        task,
        corrupted,
        metric,
        int(n_steps),
    )
    return _finish(shape, lams, state, keys, loss, value, reg, n_steps, deterministic)


def _finish(shape, lams, state, keys, loss, value, reg, n_steps, deterministic):
    check_histories_finite(loss, "Subnetwork probing")
    log_alpha = state.log_alpha
    final = final_masks(log_alpha, keys, n_steps, deterministic)
    keep = jax.tree.map(lambda m: np.asarray(m) >= 0.5, final)
    present = circuit_from_units(shape, keep)
    log_alpha = jax.tree.map(np.asarray, log_alpha)
    return [
        SPResult(
            lam=float(lams[i]),
            log_alpha=jax.tree.map(lambda x: x[i], log_alpha),
            keep=jax.tree.map(lambda x: x[i], keep),
            present=present[i],
            loss=np.asarray(loss[i]),
            metric=np.asarray(value[i]),
            reg=np.asarray(reg[i]),
        )
        for i in range(lams.size)
    ]


# ---- default sweeps -----------------------------------------------------------------------


def sp_lambdas(task_name: str, metric: str) -> np.ndarray:
    """The paper's SP lambda grid for a task and metric (reference §5.1):
    tracr `10^linspace(-3, 0, 11)`; KL (and induction NLL) the 21-point "base" grid 0.01..250;
    task-specific metrics (logit difference, greater-than, docstring) `10^linspace(-4, 2, 21)`."""
    if task_name.startswith("tracr"):
        return np.logspace(-3, 0, 11)
    if metric in ("kl_div", "nll"):
        base = np.concatenate(
            [np.logspace(-2, 0, 11), np.linspace(1, 10, 10)[1:], np.linspace(10, 250, 13)[1:]]
        )
        return base
    return np.logspace(-4, 2, 21)
