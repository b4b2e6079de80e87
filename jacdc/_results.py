"""Result files: one schema-versioned JSON per run, the mask as `.npz`, a Graphviz rendering.

Every file is written atomically (a temporary file in the same folder, then `os.replace`), with
the mode a plain `open` gives (0644 under umask 022), so a killed run never leaves a half-written
result. JSON is strict: NaN and infinities are refused ([`strict_json`][]); a missing value is
`null`. The layout of `result.json` (schema version 2, the same for every algorithm) is
documented in `docs/results.md`.
"""

import dataclasses
import importlib.metadata
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ._draw import circuit_dot as circuit_dot, have_graphviz, render


SCHEMA_VERSION = 2


def file_mode() -> int:
    """0666 minus the process umask (what `open` would give a new file; 0644 under the usual
    umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` via a temporary file in the same folder and `os.replace`. The
    file gets the mode a plain `open` would give it (0644 under umask 022), not `mkstemp`'s
    0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def strict_json(obj: Any, **kwargs) -> str:
    """`json.dumps` that refuses NaN and infinities (`ValueError` naming the offending key):
    every file jacdc writes is standard JSON."""
    bad = _non_finite_path(obj)
    if bad is not None:
        raise ValueError(
            f"Refusing to write a non-finite number at {bad} into JSON (NaN/inf are not JSON); "
            "the computation produced it: check the model weights and the data."
        )
    return json.dumps(obj, allow_nan=False, default=_json_default, **kwargs)


def _non_finite_path(obj: Any, where: str = "$") -> str | None:
    if isinstance(obj, (float, np.floating)):
        return None if np.isfinite(obj) else where
    if isinstance(obj, dict):
        for k, v in obj.items():
            bad = _non_finite_path(v, f"{where}.{k}")
            if bad:
                return bad
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            bad = _non_finite_path(v, f"{where}[{i}]")
            if bad:
                return bad
    elif isinstance(obj, np.ndarray) and obj.dtype.kind == "f" and not np.all(np.isfinite(obj)):
        return where
    return None


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON (no NaN/inf, see [`strict_json`][]) written atomically."""
    atomic_write_bytes(path, (strict_json(obj, indent=1) + "\n").encode())


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    raise TypeError(f"not JSON-serialisable: {type(x)}")


def library_versions() -> dict[str, str]:
    out = {}
    for name in ("jacdc", "jax", "jaxlib", "equinox", "optax", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_result(
    out_dir: str | os.PathLike,
    *,
    algorithm: str,
    task: str,
    model_config: Any,
    graph,
    present: np.ndarray,
    hyperparameters: dict,
    metrics: dict,
    seed: int | None = None,
    scores: np.ndarray | None = None,
    steps: list | None = None,
    timing: dict | None = None,
    extra: dict | None = None,
    stem: str = "result",
) -> dict[str, Path]:
    """Writes `{stem}.json`, `{stem}.npz` (the 0/1 mask per field and per edge id) and
    `{stem}.dot` (plus `{stem}.svg` when Graphviz's `dot` is on PATH) into `out_dir`. Returns the
    paths written. Every edge record has a `score` (`null` where the algorithm gives none, or
    a non-finite one); `metrics` must be finite (`ValueError` otherwise: nothing is written)."""
    out_dir = Path(out_dir)
    bad = _non_finite_path(metrics, "metrics")
    if bad is not None:
        raise ValueError(
            f"The result's {bad} is not finite: the model or data give NaN/inf values; check "
            "the weights and the dataset. Nothing was written."
        )
    present = np.asarray(present, bool)
    if present.shape != (len(graph),):
        raise ValueError(f"`present` must have shape ({len(graph)},), got {present.shape}.")
    edges = []
    for i, name in enumerate(graph.names):
        rec = {"id": i, "name": name, "present": bool(present[i]), "score": None}
        if scores is not None:
            s = float(scores[i])
            rec["score"] = s if np.isfinite(s) else None
        edges.append(rec)
    doc = {
        "schema_version": SCHEMA_VERSION,
        "jacdc_version": library_versions()["jacdc"],
        "libraries": library_versions(),
        "algorithm": algorithm,
        "task": task,
        "model": dataclasses.asdict(model_config)
        if dataclasses.is_dataclass(model_config)
        else model_config,
        "graph": dataclasses.asdict(graph.shape),
        "hyperparameters": hyperparameters,
        "seed": seed,
        "metrics": metrics,
        "n_edges_total": len(graph),
        "n_edges": int(present.sum()),
        "edges": edges,
        "steps": steps or [],
        "timing": timing or {},
    }
    if extra:
        doc.update(extra)
    paths = {
        "json": out_dir / f"{stem}.json",
        "npz": out_dir / f"{stem}.npz",
        "dot": out_dir / f"{stem}.dot",
    }
    mask = graph.from_vector(present.astype(np.float32))
    import io

    buf = io.BytesIO()
    np.savez(
        buf,
        present=present,
        **{
            f"mask_{f}": np.asarray(getattr(mask, f))
            for f in ("q", "k", "v", "mlp", "out", "direct")
        },
    )
    atomic_write_bytes(paths["npz"], buf.getvalue())
    title = f"{task} · {algorithm} · {int(present.sum())} of {len(graph)} edges"
    dot = circuit_dot(graph, present, scores=scores, title=title)
    atomic_write_bytes(paths["dot"], dot.encode())
    if have_graphviz():
        try:
            svg = render(dot, "svg")
        except RuntimeError:
            pass  # the DOT is written; a Graphviz failure must not lose the run
        else:
            paths["svg"] = out_dir / f"{stem}.svg"
            atomic_write_bytes(paths["svg"], svg)
    atomic_write_json(paths["json"], doc)  # last: its presence means the run is complete
    return paths


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def read_result(path: str | os.PathLike) -> dict:
    """Reads a result JSON (strict JSON: `NaN`/`Infinity` are refused), checking its schema
    version. [`load_result`][] also checks the graph and the edges."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No result file at {path}.")
    try:
        doc = json.loads(path.read_text(), parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); was it written by jacdc?") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path} holds a JSON {type(doc).__name__}, not a jacdc result object.")
    version = doc.get("schema_version")
    if version not in (1, SCHEMA_VERSION):
        raise ValueError(
            f"{path} has schema_version {version!r}; this jacdc reads versions 1 to "
            f"{SCHEMA_VERSION}."
        )
    return doc


def load_result(path: str | os.PathLike) -> dict:
    """Reads and validates a result file: what [`read_result`][] checks, plus a `graph` block
    that describes a valid graph, `n_edges_total` equal to its edge count, and `edges` with ids
    exactly `0..n-1` in order and boolean `present`. Raises `ValueError` (one line, saying
    what is wrong) or `FileNotFoundError`. Returns the document."""
    from ._graph import GraphShape, graph_of

    path = Path(path)
    doc = read_result(path)
    shape_doc = doc.get("graph")
    if not isinstance(shape_doc, dict):
        raise ValueError(
            f"{path} has no `graph` block (the graph's shape), so its edges cannot be placed; "
            "write it with jacdc (result files from jacdc always have one)."
        )
    try:
        graph = graph_of(GraphShape(**shape_doc))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: `graph` {shape_doc} is not a valid graph shape ({e}).") from None
    n = len(graph)
    if doc.get("n_edges_total", n) != n:
        raise ValueError(
            f"{path}: `n_edges_total` is {doc.get('n_edges_total')!r} but the graph has {n} edges."
        )
    edges = doc.get("edges")
    if not isinstance(edges, list) or len(edges) != n:
        got = len(edges) if isinstance(edges, list) else type(edges).__name__
        raise ValueError(f"{path}: `edges` must list all {n} edges of the graph, got {got}.")
    for i, e in enumerate(edges):
        if not isinstance(e, dict) or e.get("id") != i or isinstance(e.get("id"), bool):
            got = e.get("id") if isinstance(e, dict) else e
            raise ValueError(f"{path}: edge {i} has id {got!r}; ids must be 0..{n - 1} in order.")
        if not isinstance(e.get("present"), bool):
            raise ValueError(f"{path}: edge {i} has `present` {e.get('present')!r}, not a boolean.")
        if "name" in e and e["name"] != graph.names[i]:
            raise ValueError(
                f"{path}: edge {i} is named {e['name']!r}, but edge {i} of the graph is "
                f"{graph.names[i]!r}."
            )
    return doc
