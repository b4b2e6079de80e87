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

import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


BATCH = "batch"
LANE = "lane"


# ---------------------------------------------------------------------------------------------
# The mesh
# ---------------------------------------------------------------------------------------------


def _devices(devices) -> list:
    available = jax.devices()
    if devices is None:
        return list(available)
    if isinstance(devices, (int, np.integer)):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"Asked for {devices} devices, but JAX sees {len(available)} "
                f"({available[0].platform}). Pass --devices between 1 and {len(available)}; on "
                "a CPU-only machine, XLA_FLAGS=--xla_force_host_platform_device_count=N (set "
                "before JAX starts) gives N virtual devices for testing."
            )
        return list(available[: int(devices)])
    devices = list(devices)
    if not devices:
        raise ValueError("An empty list of devices was given; pass at least one device.")
    return devices


def split_devices(n_devices: int, batch: int | None) -> tuple[int, int]:
    """`(n_batch, n_lane)` for `n_devices`: the batch axis gets the largest divisor of
    `n_devices` that also divides `batch` (all devices if `batch` is `None`), the lane axis the
    rest."""
    if batch is None:
        return n_devices, 1
    n_batch = max(k for k in range(1, n_devices + 1) if n_devices % k == 0 and batch % k == 0)
    return n_batch, n_devices // n_batch


def _auto_axes(n: int):
    axis_type = getattr(jax.sharding, "AxisType", None)
    # Auto axes: the SPMD partitioner propagates layouts from the inputs (JAX >= 0.7 makes
    # `jax.make_mesh` axes Explicit by default, which would demand sharding annotations on every
    # gather in the forward pass).
    return None if axis_type is None else (axis_type.Auto,) * n


def make_mesh(
    devices: int | Sequence | None = None,
    *,
    batch: int | None = None,
    lanes: int | None = None,
) -> Mesh:
    """A 2-D device mesh with axes `("batch", "lane")`.

    **Arguments:**

    - `devices`: `None` (all of `jax.devices()`, across hosts after
        [`initialize_distributed`][]), a count `N` (the first `N`), or a list of devices.
    - `batch`: the task's batch size. The batch axis gets the largest divisor of the device
        count that divides it (see [`split_devices`][]); the other devices form the lane axis.
        `None`: every device on the batch axis.
    - `lanes`: force the lane axis to this size instead (the rest goes to the batch axis, which
        must then divide `batch`).

    **Returns:** a [`jax.sharding.Mesh`][] of shape `(n_batch, n_lane)`.
    """
    devs = _devices(devices)
    n = len(devs)
    if lanes is not None:
        if lanes < 1 or n % lanes:
            raise ValueError(f"lanes={lanes} must divide the device count {n}.")
        n_batch, n_lane = n // lanes, lanes
        if batch is not None and batch % n_batch:
            raise ValueError(
                f"The batch ({batch}) does not split evenly over {n_batch} devices; choose "
                f"lanes so that {n} / lanes divides the batch, or change the batch size."
            )
    else:
        n_batch, n_lane = split_devices(n, batch)
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh((n_batch, n_lane), devs)  # topology-aware order
    except Exception:  # not every platform/device subset has a topology-aware layout
        grid = np.array(devs, dtype=object).reshape(n_batch, n_lane)
    axis_types = _auto_axes(2)
    if axis_types is None:
        return Mesh(grid, (BATCH, LANE))
    return Mesh(grid, (BATCH, LANE), axis_types=axis_types)


def mesh_shape(mesh: Mesh | None) -> tuple[int, int]:
    """`(n_batch, n_lane)` of a mesh from [`make_mesh`][] (`(1, 1)` for `None`)."""
    if mesh is None:
        return 1, 1
    return int(mesh.shape.get(BATCH, 1)), int(mesh.shape.get(LANE, 1))


# ---------------------------------------------------------------------------------------------
# Placing data
# ---------------------------------------------------------------------------------------------


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray))


def place(x, sharding: NamedSharding) -> jax.Array:
    """Puts one array on the mesh with `sharding`. With several processes, each builds the
    global array from its own full copy of `x` (every process must hold the same values)."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)  # already global: a resharding
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = place(jax.random.key_data(x), sharding)  # the key's trailing words unsharded
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree, mesh: Mesh):
    """Every array leaf of `tree` replicated on every device of `mesh`."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: place(x, sharding) if _is_array(x) else x, tree)


def _batch_spec(x, batch: int, axis: str, size: int) -> P:
    if x.ndim >= 1 and x.shape[0] == batch and batch % size == 0:
        return P(axis, *([None] * (x.ndim - 1)))
    return P()


def shard_batch(tree, mesh: Mesh, batch: int, *, skip: Sequence[str] = ()):
    """Array leaves of `tree` whose leading axis has length `batch` split over the mesh's batch
    axis; all other array leaves replicated. Leaves whose attribute name is in `skip` stay
    replicated (for an axis that only happens to have length `batch`). Non-array leaves are
    kept."""
    n_batch = mesh_shape(mesh)[0]

    def one(path, x):
        if not _is_array(x):
            return x
        name = getattr(path[-1], "name", None) if path else None
        spec = P() if name in skip else _batch_spec(x, batch, BATCH, n_batch)
        return place(x, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map_with_path(one, tree)


def shard_task(task, mesh: Mesh):
    """A [`jacdc.tasks.Task`][] with its per-example arrays split over the batch axis: the
    tokens, corrupted positions and every metric leaf with a leading batch axis. The metric
    positions (`logit_positions`) are replicated."""
    return shard_batch(task, mesh, task.batch, skip=("logit_positions",))


def shard_sources(sources, mesh: Mesh):
    """Batched [`jacdc.models.Sources`][] (leading batch axis) split over the batch axis."""
    return shard_batch(sources, mesh, sources.resid.shape[0])


def shard_lanes(tree, mesh: Mesh):
    """Every array leaf of `tree` split over the mesh's lane axis along its leading axis (the
    leading axis must be a multiple of the lane-axis size), replicated over the batch axis."""
    n_lane = mesh_shape(mesh)[1]

    def one(x):
        if not _is_array(x):
            return x
        if x.ndim == 0 or x.shape[0] % n_lane:
            raise ValueError(
                f"A lane axis of length {x.shape[0] if x.ndim else 0} does not split over "
                f"{n_lane} devices; pad it to a multiple of {n_lane}."
            )
        return place(x, NamedSharding(mesh, P(LANE, *([None] * (x.ndim - 1)))))

    return jax.tree.map(one, tree)


def shard(model, task, mesh: Mesh):
    """`(model, task)` placed on `mesh`: weights replicated, the task split over the batch
    axis. Any algorithm called with them runs sharded: `jacdc.acdc_sweep`,
    `jacdc.eap_scores`, `jacdc.sp_sweep`, ... (the lane axis is used only by
    [`sharded_acdc_sweep`][] and [`sharded_sp_sweep`][])."""
    return replicate(model, mesh), shard_task(task, mesh)


def to_host(tree):
    """Every array leaf as a NumPy array, gathering shards from other processes if needed."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x) if isinstance(x, jax.Array) else x

    return jax.tree.map(one, tree)


# ---------------------------------------------------------------------------------------------
# Multi-host
# ---------------------------------------------------------------------------------------------


_DISTRIBUTED = {"initialized": False}


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | None = None,
    **kwargs,
) -> dict[str, Any]:
    """Starts JAX's multi-process runtime ([`jax.distributed.initialize`][]); call it once per
    process before any other JAX call. Safe to call twice.

    With no arguments JAX detects the cluster itself (Cloud TPU pod slices, SLURM, Open MPI,
    Kubernetes JobSets). Elsewhere (several GPU machines reached over the network) pass
    `coordinator_address="host0:1234"`, `num_processes` and this process's `process_id`.
    Extra keyword arguments go to `jax.distributed.initialize` unchanged.

    **Returns:** `{"process_index", "process_count", "local_devices", "global_devices"}`.
    """
    if not _DISTRIBUTED["initialized"]:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
            **kwargs,
        )
        _DISTRIBUTED["initialized"] = True
    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "global_devices": jax.device_count(),
    }


# ---------------------------------------------------------------------------------------------
# Source buffers in bf16
# ---------------------------------------------------------------------------------------------


def sources_to_dtype(sources, dtype=jnp.bfloat16):
    """[`jacdc.models.Sources`][] (or a prefix array) stored in `dtype` (default bf16), for
    accelerators where the source buffers -- `batch x src x seq x d_model` -- dominate memory.

    **Accelerator-only, and approximate.** The forward pass promotes them back to float32 when
    it mixes them (the core's float32 defaults are unchanged), so compute stays float32 but every
    stored activation is rounded to bf16's 8-bit mantissa (relative error ~4e-3). ACDC decisions
    at thresholds near that scale can change. It halves the bytes of the corrupted sources and
    the fast engine's cached clean prefixes; the forward's temporaries stay float32. On CPU it
    saves memory but costs conversions: keep float32 there.
    """
    return jax.tree.map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, sources)


# ---------------------------------------------------------------------------------------------
# ACDC
# ---------------------------------------------------------------------------------------------


def lane_candidates(candidates: int, mesh: Mesh | None) -> int:
    """`candidates` rounded up to a multiple of the mesh's lane-axis size."""
    n_lane = mesh_shape(mesh)[1]
    return int(math.ceil(candidates / n_lane) * n_lane)


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
            m, t, zero_ablation))  # fmt: skip
    if mesh.size > 1:
        model, task = shard(model, task, mesh)
        state, lam_arr, keys_p = shard_lanes((state, lam_arr, keys_p), mesh)
    if corrupted is None:
        corrupted = _sp.unit_ablation_sources(model, task, zero_ablation)
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
        corrupted = _local_sources(model, task, lambda m, t: ablation_sources(m, t, zero_ablation))
    if mesh.size > 1:
        model, task = shard(model, task, mesh)
    if corrupted is None:
        corrupted = ablation_sources(model, task, zero_ablation)
    if mesh.size > 1:
        corrupted = shard_sources(corrupted, mesh)  # zero ablation broadcasts one sequence
    if steps is None:
        return _eap.eap_scores(model, task, metric=metric, corrupted=corrupted)
    return _eap.eap_ig_scores(model, task, metric=metric, steps=steps, corrupted=corrupted)
