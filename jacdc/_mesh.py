"""Device meshes and data placement: the low layer that the engine and the sharded runners
share (see [`jacdc._sharding`][] for the design). Nothing here imports an algorithm.

- [`make_mesh`][], [`mesh_shape`][], [`split_devices`][]: a 2-D mesh with axes `"batch"`
    ([`BATCH`][]) and `"lane"` ([`LANE`][]).
- [`place`][], [`replicate`][], [`shard_batch`][], [`shard_task`][], [`shard_sources`][],
    [`shard_lanes`][], [`shard`][], [`to_host`][]: arrays onto and off the mesh, multi-host safe.
- [`initialize_distributed`][]: JAX's multi-process runtime.
- [`sources_to_dtype`][]: bf16 source buffers; [`lane_candidates`][]: lanes rounded to the mesh.
"""

import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
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
# Lanes
# ---------------------------------------------------------------------------------------------


def lane_candidates(candidates: int, mesh: Mesh | None) -> int:
    """`candidates` rounded up to a multiple of the mesh's lane-axis size."""
    n_lane = mesh_shape(mesh)[1]
    return int(math.ceil(candidates / n_lane) * n_lane)
