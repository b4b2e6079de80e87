"""Sharded runs: a device mesh over the batch and lane axes, and multi-host start-up.

jacdc shards by *placing data*, never by rewriting an algorithm. Every algorithm is a jitted
function of `(model, task, corrupted sources, ...)`; when those inputs are `jax.Array`s laid out
with a [`jax.sharding.NamedSharding`][] over a mesh, jit's SPMD partitioner splits the compiled
step over the devices, and every array it computes inherits a layout from its inputs. The mesh
has two axes:

- `"batch"` ([`BATCH`][]): the task's examples. Every array with a leading batch axis -- the clean
    and corrupted tokens, the per-example data of the metrics (e.g. KL's clean log-probs), the
    corrupted [`jacdc.models.Sources`][] and the fast ACDC engine's cached clean sources -- is
    split over it. A metric's mean over the batch becomes a cross-device all-reduce.
- `"lane"` ([`LANE`][]): independent copies of the computation. For the fast ACDC engine these
    are the candidate circuits of one device call (the states of a threshold sweep share the
    lanes, so this also shards the threshold axis); for SP the lambda values of a sweep.

[`make_mesh`][] gives the batch axis as many devices as divide the batch and the rest to the lane
axis, e.g. 8 devices and a batch of 100 -> `batch=4, lane=2`. The model's weights are replicated.

Sharding changes the *order* of floating-point reductions over the batch, nothing else: metrics
agree with a one-device run to about 1e-7 relative, so ACDC takes the same decisions unless an
edge's effect lies within that of the threshold (tests check 8 CPU devices against one).

**Multi-host** (a TPU pod slice, several multi-GPU machines): call
[`initialize_distributed`][] first in every process, then build the mesh from `jax.devices()`
(all hosts' devices). Every process runs the same program on the same task (built from the same
seed); [`place`][] builds each global array from the process's own full copy
(`jax.make_array_from_callback`), so no process ever needs another's data. ACDC, SP and EAP
run multi-host (checked with two CPU processes of four devices each); token checks of arrays
spread over hosts read only the process's own shards (`Transformer.check_token_batch`). Recipes:
`docs/scale.md`.

The fast engine takes the mesh (for its candidate lanes) and the source dtype as arguments of
[`jacdc.acdc_sweep`][] (`mesh=`, `source_dtype=`); [`sharded_acdc_sweep`][] places the model and
task on the mesh and passes them on.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import Mesh

from ._mesh import (
    BATCH as BATCH,
    LANE as LANE,
    initialize_distributed as initialize_distributed,
    lane_candidates as lane_candidates,
    make_mesh as make_mesh,
    mesh_shape as mesh_shape,
    place as place,
    replicate as replicate,
    shard as shard,
    shard_batch as shard_batch,
    shard_lanes as shard_lanes,
    shard_sources as shard_sources,
    shard_task as shard_task,
    sources_to_dtype as sources_to_dtype,
    split_devices as split_devices,
    to_host as to_host,
)


# ---------------------------------------------------------------------------------------------
# ACDC
# ---------------------------------------------------------------------------------------------


def sharded_acdc_sweep(
    model,
    task,
    thresholds: Sequence[float],
    *,
    metric: str,
    mesh: Mesh | None = None,
    devices: int | Sequence | None = None,
    source_dtype=None,
    candidates: int | str = "auto",
    check_memory: bool = True,
    on_estimate=None,
    **kwargs,
):
    """[`jacdc.acdc_sweep`][] on a device mesh: the batch split over the `"batch"` axis, the
    fast engine's candidates (and with them a sweep's thresholds) over the `"lane"` axis.

    **Arguments:**

    - `model`, `task`, `thresholds`, `metric`, `**kwargs`: as for `acdc_sweep`.
    - `mesh`: a mesh from [`make_mesh`][]; default `make_mesh(devices, batch=task.batch)`.
    - `devices`: device count or list when `mesh` is not given (default: all devices).
    - `source_dtype`: e.g. `jnp.bfloat16` to store the corrupted sources and cached prefixes in
        bf16 (accelerators only; see [`sources_to_dtype`][]). Fast engine only.
    - `candidates`: lanes per device call; rounded up to a multiple of the lane-axis size.
    - `check_memory`: estimate the per-device bytes first ([`jacdc._memory.acdc_memory`][])
        and raise [`jacdc._memory.MemoryBudgetError`][] if they exceed the device's memory.
    - `on_estimate`: called with that [`jacdc._memory.MemoryEstimate`][] before the check
        (the CLI prints it).

    **Returns:** one [`jacdc.ACDCResult`][] per threshold, as `acdc_sweep`; the same circuits
    as on one device.
    """
    from . import _acdc, _memory

    if mesh is None:
        mesh = make_mesh(devices, batch=task.batch)
    n_batch, n_lane = mesh_shape(mesh)
    engine = kwargs.get("engine", "fast")
    if candidates == "auto":
        candidates = _acdc.auto_candidates(model, task, len(thresholds))
    if engine == "fast":
        candidates = lane_candidates(int(candidates), mesh)
    if check_memory:
        estimate = _memory.acdc_memory(
            model.cfg, task.batch, task.seq, candidates=int(candidates), task=task,
            mesh_shape=(n_batch, n_lane), source_dtype=source_dtype,
            suffix=kwargs.get("suffix", "auto"), layers=kwargs.get("layers", "scan"),
        )  # fmt: skip
        if on_estimate is not None:
            on_estimate(estimate)
        _memory.check_fits(estimate, mesh.devices.flat[0])
    if mesh.size > 1:
        model, task = shard(model, task, mesh)
    import jacdc  # the public name, looked up per call (tests patch it)

    if engine != "fast":
        if source_dtype is not None:
            raise ValueError("source_dtype applies to the fast engine only (engine='fast').")
        return jacdc.acdc_sweep(model, task, thresholds, metric=metric, candidates=candidates,
                                **kwargs)  # fmt: skip
    return jacdc.acdc_sweep(model, task, thresholds, metric=metric, candidates=candidates,
                            mesh=mesh, source_dtype=source_dtype, **kwargs)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# SP and EAP
# ---------------------------------------------------------------------------------------------


def _local_sources(model, task, make):
    """The corrupted sources computed by this process alone, from its full copy of the task.

    With several processes the sharded token arrays span devices this process cannot read, and
    the models' token checks read them on the host; so every process builds the (identical)
    sources itself, on its first device, before they are placed on the mesh."""
    local = jax.local_devices()[0]
    model, task = jax.device_put((model, task), local)
    return to_host(make(model, task))


def sharded_sp_sweep(
    model,
    task,
    lambdas: Sequence[float] | np.ndarray,
    *,
    key,
    metric: str,
    mesh: Mesh | None = None,
    devices: int | Sequence | None = None,
    zero_ablation: bool = False,
    n_steps: int = 3000,
    lr: float = 1e-3,
    deterministic: bool = False,
    check_memory: bool = True,
    on_estimate=None,
    lane_keys=None,
    ablation=None,
    chunk: int | None = None,
    checkpoint=None,
    resume: dict | None = None,
    progress=None,
):
    """[`jacdc.sp_sweep`][] on a device mesh: the batch over the `"batch"` axis, the lambda
    values over the `"lane"` axis (padded with copies of the last lambda to a multiple of the
    lane-axis size; the copies are dropped). Same arguments and results as `sp_sweep` (lane `i`
    uses `jr.split(key, len(lambdas))[i]`, so the results equal the one-device sweep).
    `lane_keys`: one key per lambda instead (`key[None]` for one lambda reproduces
    [`jacdc.subnetwork_probing`][]); `on_estimate`: called with the memory estimate.
    `chunk`, `checkpoint`, `progress`: train in chunks of steps, handing the state to
    `checkpoint(step, state, histories)` after each (see [`jacdc._sp.train_in_chunks`][]);
    `resume`: `{"step", "leaves", "history"}` from such a checkpoint, to continue it."""
    from . import _memory, _sp

    lams = _sp._check_lambdas(lambdas)
    _sp.check_run(task, metric, n_steps)
    if mesh is None:
        mesh = make_mesh(devices, batch=task.batch)
    n_batch, n_lane = mesh_shape(mesh)
    n = lams.size
    padded = n + (-n) % n_lane
    if check_memory:
        estimate = _memory.sp_memory(model.cfg, task.batch, task.seq, n_lambdas=padded,
                                     n_steps=int(n_steps), task=task,
                                     mesh_shape=(n_batch, n_lane))  # fmt: skip
        if on_estimate is not None:
            on_estimate(estimate)
        _memory.check_fits(estimate, mesh.devices.flat[0])
    if lane_keys is not None:
        keys = jnp.asarray(lane_keys)
        if keys.shape[0] != n:
            raise ValueError(f"Expected {n} lane keys (one per lambda), got {keys.shape[0]}.")
    else:
        keys = jr.split(key, n)
    lams_p = np.concatenate([lams, np.full(padded - n, lams[-1])])
    lane_keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], padded - n, axis=0)])
    keys_p = lane_keys
    shape = model.graph_shape
    state = _sp.init_sp_state(shape, padded)
    start, history = 0, None
    if resume is not None:
        state = _sp.restore_tree(state, resume["leaves"])
        start, history = int(resume["step"]), resume["history"]
    lam_arr = jnp.asarray(lams_p, jnp.float32)
    corrupted = None
    if jax.process_count() > 1:  # from this process's full copy (see `_local_sources`)
        corrupted = _local_sources(model, task, lambda m, t: _sp.unit_ablation_sources(
            m, t, zero_ablation, ablation=ablation))  # fmt: skip
    if mesh.size > 1:
        model, task = shard(model, task, mesh)
        state, lam_arr, keys_p = shard_lanes((state, lam_arr, keys_p), mesh)
    if corrupted is None:
        corrupted = _sp.unit_ablation_sources(model, task, zero_ablation, ablation=ablation)
    if mesh.size > 1:
        corrupted = shard_sources(corrupted, mesh)
    lr_arr = jnp.asarray(lr, jnp.float32)
    if chunk is None and checkpoint is None and resume is None and progress is None:
        state, (loss, value, reg) = _sp._sp_train(
            state, lam_arr, lr_arr, keys_p, model, task, corrupted, metric, int(n_steps),
        )  # fmt: skip
        state, loss, value, reg = to_host((state, loss, value, reg))
    else:

        def run_steps(carry, steps):
            return _sp._sp_train_steps(carry, lam_arr, lr_arr, keys_p, model, task, corrupted,
                                       metric, steps)  # fmt: skip

        state, (loss, value, reg) = _sp.train_in_chunks(
            run_steps, state, int(n_steps), chunk=chunk, start=start, history=history,
            checkpoint=checkpoint, progress=progress, to_host=to_host,
        )  # fmt: skip
    results = _sp._finish(shape, lams_p, state, lane_keys, loss, value, reg, n_steps, deterministic)
    return results[:n]


def sharded_eap_scores(
    model,
    task,
    *,
    metric: str,
    mesh: Mesh | None = None,
    devices: int | Sequence | None = None,
    steps: int | None = None,
    zero_ablation: bool = False,
    check_memory: bool = True,
    on_estimate=None,
    ablation=None,
) -> np.ndarray:
    """[`jacdc.eap_scores`][] (or, with `steps`, [`jacdc.eap_ig_scores`][]) with the batch split
    over the mesh (the lane axis only replicates; use a mesh with every device on the batch
    axis). `on_estimate`: called with the memory estimate before the check."""
    from . import _eap, _memory
    from ._patching import ablation_sources

    if mesh is None:
        mesh = make_mesh(devices, batch=task.batch)
    if check_memory:
        estimate = _memory.eap_memory(model.cfg, task.batch, task.seq, steps=steps or 1,
                                      task=task, mesh_shape=mesh_shape(mesh))  # fmt: skip
        if on_estimate is not None:
            on_estimate(estimate)
        _memory.check_fits(estimate, mesh.devices.flat[0])
    corrupted = None
    if jax.process_count() > 1:
        corrupted = _local_sources(
            model, task, lambda m, t: ablation_sources(m, t, zero_ablation, ablation=ablation)
        )
    if mesh.size > 1:
        model, task = shard(model, task, mesh)
    if corrupted is None:
        corrupted = ablation_sources(model, task, zero_ablation, ablation=ablation)
    if mesh.size > 1:
        corrupted = shard_sources(corrupted, mesh)  # zero ablation broadcasts one sequence
    if steps is None:
        return _eap.eap_scores(model, task, metric=metric, corrupted=corrupted)
    return _eap.eap_ig_scores(model, task, metric=metric, steps=steps, corrupted=corrupted)
