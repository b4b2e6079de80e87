"""Your own token arrays as a task: [`read_token_dataset`][] reads a `.npz`/`.json` file,
[`from_arrays`][] builds the [`jacdc.tasks.Task`][] (the data behind `jacdc discover
--dataset FILE`).

| key | shape | required | meaning |
| --- | --- | --- | --- |
| `clean` | `(batch, seq)` int | yes | token ids the metric is computed on |
| `corrupted` | `(batch, seq)` int | yes | token ids of the corrupted run |
| `corrupted_positions` | `(seq,)` / `(batch, seq)` int | no | corrupted-run positions |
| `logit_positions` | `(pos,)` int | no | positions the metric reads |
| `weights` | `(batch, pos)` float | no | per-position weights of the KL / L2 metrics (default 1) |

`corrupted_positions` is a permutation of `range(seq)` in every row (tracr's shuffled
positional embedding; default `arange(seq)`). `logit_positions` default to the task's own when
`seq` matches (given `like=`), else the last position. `weights` are finite, non-negative and
not all zero. Token ids are the model's own ids (for tracr models:
`bundle.info["input_encoding"]`). The metrics are rebuilt against the model's outputs on your
clean tokens: `kl_div` always, and `l2` for tasks that have it (same output dimensions).
"""

import json
import os
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ._base import KLMetric, L2Metric, Task, TaskBundle, clean_logits_at, kl_metric


DATASET_KEYS = ("clean", "corrupted", "corrupted_positions", "logit_positions", "weights")


def read_token_dataset(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a `.npz` or `.json` dataset file (keys in this module's docstring),
    checked for missing and unknown keys; a `ValueError` with one line for a bad file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Dataset file {path} does not exist.")
    if path.suffix not in (".npz", ".json"):
        raise ValueError(f"Dataset files must end in .npz or .json, got {path.name!r}.")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes); write the arrays again.")
    if path.suffix == ".npz":
        try:
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
                arrays = {k: np.asarray(f[k]) for k in f.files}
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
            raise ValueError(
                f"{path} is not a readable .npz archive ({type(e).__name__}: {e}); it may be "
                "truncated. Write it again with numpy.savez."
            ) from None
    else:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid UTF-8 JSON: {e}.") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{path} must hold a JSON object with keys 'clean' and 'corrupted'.")
        try:
            arrays = {k: np.asarray(v) for k, v in doc.items()}
        except ValueError as e:
            raise ValueError(f"{path}: ragged arrays ({e}); every row needs one length.") from None
    for key in ("clean", "corrupted"):
        if key not in arrays:
            raise ValueError(
                f"{path}: missing key {key!r}. A dataset file needs 'clean' and 'corrupted' token "
                "arrays of shape (batch, seq) (see `jacdc discover --help`)."
            )
    unknown = set(arrays) - set(DATASET_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: {list(DATASET_KEYS)}.")
    return arrays


def _int_array(arr, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got dtype {arr.dtype}.")
    return arr


def from_arrays(
    model,
    clean,
    corrupted,
    *,
    corrupted_positions=None,
    logit_positions=None,
    weights=None,
    like: Task | None = None,
    source: str = "arrays",
) -> Task:
    """A [`jacdc.tasks.Task`][] from token arrays (rules in this module's docstring).

    **Arguments:**

    - `model`: the [`jacdc.models.Transformer`][] the task runs on.
    - `clean`, `corrupted`: `(batch, seq)` integer token ids.
    - `corrupted_positions`: `(seq,)` or `(batch, seq)`, a permutation of `range(seq)` per row.
    - `logit_positions`: `(pos,)` integer positions the metrics read.
    - `weights`: `(batch, pos)` finite non-negative weights (not all zero) of KL / L2.
    - `like`: a built-in task split whose metric positions (when `seq` matches) and `l2`
        metric the new task copies.
    - `source`: a name for error messages (the file).
    """
    clean, corrupted = np.asarray(clean), np.asarray(corrupted)
    for key, arr in (("clean", clean), ("corrupted", corrupted)):
        if arr.ndim != 2 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"{source}: {key!r} must be a non-empty integer array of shape (batch, seq), got "
                f"dtype {arr.dtype} and shape {arr.shape}."
            )
    if clean.shape != corrupted.shape:
        raise ValueError(
            f"{source}: clean and corrupted shapes differ: {clean.shape} vs {corrupted.shape}."
        )
    model.check_token_batch(clean, f"{source}: clean")
    model.check_token_batch(corrupted, f"{source}: corrupted")
    batch, seq = clean.shape
    cpos = corrupted_positions
    if cpos is not None:
        cpos = _int_array(cpos, f"{source}: corrupted_positions")
        if cpos.ndim == 1:
            cpos = np.broadcast_to(cpos, (batch, seq)) if cpos.shape == (seq,) else cpos
        if cpos.shape != (batch, seq):
            raise ValueError(
                f"{source}: corrupted_positions must have shape ({seq},) or ({batch}, {seq}), got "
                f"{cpos.shape}."
            )
        bad = [i for i in range(batch) if not np.array_equal(np.sort(cpos[i]), np.arange(seq))]
        if bad:
            raise ValueError(
                f"{source}: corrupted_positions row {bad[0]} is not a permutation of "
                f"range({seq}) ({len(bad)} bad rows); every row must hold each position once."
            )
        cpos = jnp.asarray(cpos, jnp.int32)
    if logit_positions is not None:
        lpos = _int_array(logit_positions, f"{source}: logit_positions").reshape(-1)
    elif like is not None and like.seq == seq:
        lpos = np.asarray(like.logit_positions)
    else:
        lpos = np.array([seq - 1])
    if lpos.size == 0 or lpos.min() < 0 or lpos.max() >= seq:
        raise ValueError(f"{source}: logit_positions must lie in [0, {seq}), got {lpos.tolist()}.")
    if weights is not None:
        weights = np.asarray(weights)
        if weights.shape != (batch, lpos.size):
            raise ValueError(
                f"{source}: weights must have shape ({batch}, {lpos.size}), got {weights.shape}."
            )
        if not np.issubdtype(weights.dtype, np.number) or np.issubdtype(
            weights.dtype, np.complexfloating
        ):
            raise ValueError(f"{source}: weights must be real numbers, got dtype {weights.dtype}.")
        weights = weights.astype(np.float32)
        if not np.all(np.isfinite(weights)):
            n_bad = int(np.sum(~np.isfinite(weights)))
            raise ValueError(
                f"{source}: weights hold {n_bad} NaN/inf values of {weights.size}; give finite "
                "weights (0 to skip a position)."
            )
        if weights.min() < 0:
            raise ValueError(
                f"{source}: weights must be >= 0, got min {weights.min():g}; a negative weight "
                "would reward the metric for moving away from the model."
            )
        if weights.sum() == 0:
            raise ValueError(
                f"{source}: every weight is 0, so every metric would be 0 and every edge "
                "removable; weight at least one position."
            )
    clean_j = jnp.asarray(clean, jnp.int32)
    metrics = {"kl_div": kl_metric(model, clean_j, jnp.asarray(lpos), weights)}
    for name, metric in ({} if like is None else like.metrics).items():
        if isinstance(metric, L2Metric):
            w = np.ones((batch, lpos.size), np.float32) if weights is None else weights
            if weights is None and np.array_equal(lpos, np.asarray(like.logit_positions)):
                # Same positions as the task: keep its per-position weights (e.g. skip BOS).
                w = np.broadcast_to(np.asarray(metric.weights[0]), (batch, lpos.size))
            metrics[name] = L2Metric(
                clean_logits=clean_logits_at(model, clean_j, jnp.asarray(lpos)),
                weights=jnp.asarray(w, jnp.float32),
                dims=metric.dims,
            )
        elif isinstance(metric, KLMetric) and name != "kl_div":
            metrics[name] = metrics["kl_div"]
    return Task(
        clean=clean_j,
        corrupted=jnp.asarray(corrupted, jnp.int32),
        corrupted_positions=cpos,
        logit_positions=jnp.asarray(lpos, jnp.int32),
        metrics=metrics,
    )


def task_from_dataset(path: str | os.PathLike, target) -> Task:
    """A [`jacdc.tasks.Task`][] from a dataset file for `target`: a
    [`jacdc.tasks.TaskBundle`][] (its model; its validation split lends metric positions and
    `l2`) or a bare [`jacdc.models.Transformer`][] (`kl_div` only)."""
    arrays = read_token_dataset(path)
    if isinstance(target, TaskBundle):
        model, like = target.model, target.val
    else:
        model, like = target, None
    return from_arrays(
        model,
        arrays["clean"],
        arrays["corrupted"],
        corrupted_positions=arrays.get("corrupted_positions"),
        logit_positions=arrays.get("logit_positions"),
        weights=arrays.get("weights"),
        like=like,
        source=Path(path).name,
    )
