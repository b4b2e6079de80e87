"""Edge Pruning (Bhaskar et al. 2024): hard-concrete masks on *edges*, the edge-level sibling of SP.

Every counted edge gets a `log_alpha` (stored as an [`jacdc.EdgeMask`][]-shaped pytree; entries
of non-edges exist but are never read by the forward and are left out of the penalty, so their
gradient is exactly zero and Adam leaves them where they started). Each step samples a
hard-concrete mask for every edge (SP's constants: `beta = 2/3`, `gamma = -0.1`, `zeta = 1.1`,
initial keep probability 0.9) and minimises

- `metric + lambda * density` (`mode="penalty"`), where `density` is the expected fraction of
  edges kept (the mean expected L0 over valid edges); or
- `metric + l1 (s - t) + l2 (s - t)^2` (`mode="target"`, Bhaskar et al.'s rising sparsity
  target): `s = 1 - density` is the expected sparsity, the target `t` rises linearly from 0 to
  `target` over the first `warmup` fraction of the steps, and the Lagrange multipliers `l1`,
  `l2` (starting at 0) are trained by gradient *ascent* with the same optimiser.

Optimiser: optax Adam. The learning rate, `lambda` (or `target`), `warmup` and the mode are JAX
arrays, so changing them does not recompile; a sweep over `lambda` (or targets) trains as one
vmapped, jit-compiled run. The result's scores are the
trained `log_alpha` per edge; the circuit keeps the edges whose noise-free mask is >= 0.5
(`log_alpha >= 0`), or whose single stochastic sample is (`deterministic=False`).
"""

from collections.abc import Sequence
from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import PRNGKeyArray

from ._graph import EdgeMask, graph_of
from ._patching import ablation_sources, metric_value
from ._sp import (
    INIT_LOG_ALPHA,
    check_histories_finite,
    check_run,
    expected_l0,
    final_masks,
    restore_tree,
    sample_hard_concrete,
    train_in_chunks,
)


class EdgePruningResult(NamedTuple):
    """One edge-pruning run.

    - `lam`: the penalty strength (`mode="penalty"`) or the final sparsity target
        (`mode="target"`).
    - `scores`: trained `log_alpha` per edge (edge-id order).
    - `log_alpha`: the whole trained [`jacdc.EdgeMask`][] of `log_alpha` (NumPy), non-edges
        included (they never move from the initial value).
    - `present`: the circuit, bool over edge ids.
    - `loss`, `metric`, `density`: per-step histories (metric on the sampled masks; density =
        expected fraction of edges kept).
    """

    lam: float
    scores: np.ndarray
    log_alpha: EdgeMask
    present: np.ndarray
    loss: np.ndarray
    metric: np.ndarray
    density: np.ndarray

    @property
    def n_edges(self) -> int:
        return int(self.present.sum())


def _density(log_alpha: EdgeMask, valid: tuple):
    l0 = expected_l0(log_alpha)
    kept = sum(jnp.sum(jnp.where(v, x, 0.0)) for x, v in zip(jax.tree.leaves(l0), valid))
    total = sum(int(np.sum(v)) for v in valid)
    return kept / total


_TRACES = {"train": 0}


def _init_carry(log_alpha, lr):
    """Per lane: (log_alpha, Lagrange multipliers) and the optimiser's state."""
    opt = optax.adam(lr)

    def one(la0):
        params = (la0, jnp.zeros(2, jnp.float32))
        return params, opt.init(params)

    return jax.vmap(one)(log_alpha)


@eqx.filter_jit
def _train(
    carry,
    lams,
    lr,
    keys,
    model,
    task,
    corrupted,
    metric: str,
    n_steps: int,
    target_mode,
    warmup,
    steps,
):
    # Steps `steps` (an int array, a chunk of 0..n_steps-1) of every lane, from `carry`.
    _TRACES["train"] += 1
    valid = tuple(jax.tree.leaves(graph_of(model.graph_shape).validity_mask()))
    opt = optax.adam(lr)

    def lane(carry0, lam, key):
        def loss_fn(params, i):
            la, mult = params
            mask = sample_hard_concrete(la, key=jr.fold_in(key, i))
            value = metric_value(model, task, mask, corrupted, metric)
            density = _density(la, valid)
            penalty = lam * density
            ramp = jnp.minimum(1.0, (i + 1) / jnp.maximum(1.0, warmup * n_steps))
            gap = (1.0 - density) - lam * ramp
            lagrangian = mult[0] * gap + mult[1] * gap * gap
            return value + jnp.where(target_mode, lagrangian, penalty), (value, density)

        def body(carry, i):
            params, opt_state = carry
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, i)
            grads = (grads[0], -grads[1])  # ascent on the multipliers
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), (loss,) + aux

        return jax.lax.scan(body, carry0, steps)

    return jax.vmap(lane)(carry, lams, keys)


def edge_pruning_sweep(
    model,
    task,
    lambdas: Sequence[float] | np.ndarray,
    *,
    key: PRNGKeyArray,
    metric: str,
    zero_ablation: bool = False,
    n_steps: int = 2000,
    lr: float = 0.05,
    mode: Literal["penalty", "target"] = "penalty",
    warmup: float = 0.5,
    deterministic: bool = True,
    ablation=None,
    chunk: int | None = None,
    checkpoint=None,
    resume: dict | None = None,
    progress=None,
) -> list[EdgePruningResult]:
    """Edge Pruning for several penalty strengths (or sparsity targets) as one compiled run.

    **Arguments:**

    - `model`, `task`: the [`jacdc.models.Transformer`][] and the split to train on.
    - `lambdas`: penalty strengths (`mode="penalty"`, positive) or final sparsity targets in
        `(0, 1]` (`mode="target"`).
    - `key`: PRNG key, split into one key per lane (`jr.split(key, len(lambdas))`).
    - `metric`: a key of `task.metrics` (the paper uses KL; tracr uses `l2`).
    - `zero_ablation`: ablate edges to zero ablation instead of the corrupted run.
    - `ablation`: `"corrupted"`, `"zero"`, `"mean"`, `"mean-positions"` or a
        [`jacdc.Ablation`][] (overrides nothing: `zero_ablation=True` is `"zero"`).
    - `n_steps`, `lr`: Adam steps and learning rate.
    - `mode`, `warmup`: see the module docstring.
    - `deterministic`: threshold the noise-free mask (default) instead of one sample.
    - `chunk`, `checkpoint`, `resume`, `progress`: train in chunks of `chunk` steps, calling
        `checkpoint(step, carry, histories)` and `progress(step, loss)` after each, and continue
        from `resume = {"step", "leaves", "history"}` (see [`jacdc._sp.train_in_chunks`][]);
        the steps taken are the same as in one uninterrupted run.

    **Returns:** one [`EdgePruningResult`][] per lambda.
    """
    lams = np.asarray(lambdas, np.float64).reshape(-1)
    if lams.size == 0:
        raise ValueError("The sweep is empty; give at least one lambda (or target).")
    if not np.all(np.isfinite(lams)) or np.any(lams <= 0):
        raise ValueError(f"Every lambda/target must be finite and positive, got {lams.tolist()}.")
    if mode not in ("penalty", "target"):
        raise ValueError(f"mode must be 'penalty' or 'target', got {mode!r}.")
    if mode == "target" and np.any(lams > 1):
        raise ValueError(f"Sparsity targets must lie in (0, 1], got {lams.tolist()}.")
    check_run(task, metric, n_steps)
    shape = model.graph_shape
    graph = graph_of(shape)
    keys = jr.split(key, lams.size)
    corrupted = ablation_sources(model, task, zero_ablation, ablation=ablation)
    log_alpha0 = EdgeMask.full(shape, INIT_LOG_ALPHA)
    log_alpha0 = jax.tree.map(lambda x: jnp.broadcast_to(x, (lams.size,) + x.shape), log_alpha0)
    lr_arr = jnp.asarray(lr, jnp.float32)
    carry = _init_carry(log_alpha0, lr_arr)
    start, history = 0, None
    if resume is not None:
        carry = restore_tree(carry, resume["leaves"])
        start, history = int(resume["step"]), resume["history"]
    lam_arr = jnp.asarray(lams, jnp.float32)
    target_mode, warmup_arr = jnp.asarray(mode == "target"), jnp.asarray(warmup, jnp.float32)

    def run_steps(carry, steps):
        return _train(carry, lam_arr, lr_arr, keys, model, task, corrupted, metric, int(n_steps),
                      target_mode, warmup_arr, steps)  # fmt: skip

    carry, (loss, value, density) = train_in_chunks(
        run_steps, carry, int(n_steps), chunk=chunk, start=start, history=history,
        checkpoint=checkpoint, progress=progress,
    )  # fmt: skip
    check_histories_finite(loss, "Edge pruning")
    log_alpha = carry[0][0]
    final = final_masks(log_alpha, keys, n_steps, deterministic)
    present = np.asarray(graph.to_vector(final)) >= 0.5
    scores = np.asarray(graph.to_vector(log_alpha), np.float64)
    log_alpha = jax.tree.map(np.asarray, log_alpha)
    return [
        EdgePruningResult(
            lam=float(lams[i]),
            scores=scores[i],
            log_alpha=jax.tree.map(lambda x: x[i], log_alpha),
            present=present[i],
            loss=np.asarray(loss[i]),
            metric=np.asarray(value[i]),
            density=np.asarray(density[i]),
        )
        for i in range(lams.size)
    ]


def edge_pruning(model, task, lam: float, *, key: PRNGKeyArray, metric: str, **options):
    """[`edge_pruning_sweep`][] with one `lam`; the run uses `jr.split(key, 1)[0]`."""
    return edge_pruning_sweep(model, task, [lam], key=key, metric=metric, **options)[0]
