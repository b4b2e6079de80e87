"""Run folders: settings hashes, a lock against concurrent writers, the guard that keeps a run from
clobbering a different finished one, and append-only checkpoints.

Every CLI run writes into one output folder. Before anything is computed the folder is

1. **locked** ([`RunLock`][]: `fcntl.flock` on `.jacdc.lock`, non-blocking): a second jacdc
   process writing into the same folder stops at once with an error naming the holder's pid;
2. **guarded** ([`guard_folder`][]): a finished run in the folder (a `result.json`,
   `sweep.json` or ROC report) whose settings hash differs from this run's is refused unless
   `overwrite=True` (an unfinished one, a checkpoint, unless `fresh=True`); just before the new
   results are written, [`clear_outputs`][] removes the earlier run's files, so no stale file is
   left beside the new ones (and a run that fails removes nothing).

**Settings hash.** [`settings_hash`][] is the SHA-256 of the canonical JSON of every setting that
changes a run's result (task, algorithm, thresholds, metric, ablation, weights, the dataset's
SHA-256, split sizes, ...). Result files and checkpoints carry it; a checkpoint is only resumed by
a run with the same hash.

**ACDC checkpoints** ([`AcdcCheckpoint`][]) are a JSON-lines log, `checkpoint.jsonl`: a header
line (kind, version, settings hash, graph size, number of thresholds), then one line per finished
node holding only what that node added (its log records, the current metric, test counts, the
placeholder edges it switched off). Nothing is rewritten; a line torn by a kill is dropped on
resume. On resume every line is validated against the graph and the run's settings (node
order, edge ids in range and incoming to their node, no edge removed twice, finite metrics, each
decision consistent with its metric change and the threshold); a log that does not validate is
refused, never resumed into a wrong circuit.

**Test hook.** [`interruption_point`][] raises `KeyboardInterrupt` at the N-th call of a given
kind when the environment variable `JACDC_TEST_INTERRUPT` is `"kind:N"`, so tests can kill a run
at a deterministic point (no timers).
"""

import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np


LOCK_NAME = ".jacdc.lock"
ACDC_CHECKPOINT = "checkpoint.jsonl"
CHECKPOINT_VERSION = 2

# Files a jacdc run writes into its folder (removed when a run replaces an earlier one).
_OUTPUT_GLOBS = (
    "result.json",
    "result.npz",
    "result.dot",
    "result.svg",
    "result.png",
    "tau*.json",
    "tau*.npz",
    "tau*.dot",
    "tau*.svg",
    "tau*.png",
    "sweep.json",
    "roc-*.json",
    "roc-*.md",
    "roc-*.png",
    "roc-*.svg",
    "checkpoint.json",
    "checkpoint.jsonl",
    "train-checkpoint.npz",
)
_OUTPUT_DIRS = ("roc-parts",)
# Files whose presence means "a finished run lives here".
_FINISHED_GLOBS = ("result.json", "sweep.json", "roc-*.json")


class RunFolderError(ValueError):
    """The output folder is in use, or holds a different finished run."""


class CheckpointError(ValueError):
    """A checkpoint that belongs to other settings or does not validate."""


# ---- settings -----------------------------------------------------------------------------


def canonical_json(obj: Any) -> str:
    """Sorted-key, compact, strict JSON (no NaN): the text a settings hash is taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def settings_hash(settings: dict) -> str:
    """SHA-256 (hex) of `canonical_json(settings)`."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- test hook ----------------------------------------------------------------------------

_HOOK_COUNTS: dict[str, int] = {}


def interruption_point(kind: str) -> None:
    """Raises `KeyboardInterrupt` at the N-th call with this `kind` when the environment
    variable `JACDC_TEST_INTERRUPT` is `"kind:N"` (a deterministic kill for tests)."""
    spec = os.environ.get("JACDC_TEST_INTERRUPT", "")
    if not spec:
        return
    want, _, n = spec.partition(":")
    if want != kind:
        return
    _HOOK_COUNTS[kind] = _HOOK_COUNTS.get(kind, 0) + 1
    if _HOOK_COUNTS[kind] >= int(n or 1):
        _HOOK_COUNTS[kind] = 0
        raise KeyboardInterrupt(f"JACDC_TEST_INTERRUPT={spec}")


# ---- lock and guard -----------------------------------------------------------------------


class RunLock:
    """An exclusive, non-blocking `fcntl.flock` on `folder/.jacdc.lock` for the life of a run
    (a context manager). The lock goes with the process: a killed run never leaves the folder
    locked."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = ""
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            except OSError:
                pass
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                who = f" (pid {holder})" if holder else ""
                raise RunFolderError(
                    f"{self.folder} is in use by another jacdc run{who}; wait for it to finish "
                    "or choose another --out folder."
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        hold = os.environ.get("JACDC_TEST_HOLD_LOCK")
        if hold:  # test hook: report the lock, then wait for a line on stdin
            print(f"jacdc-test: locked {self.folder}", flush=True)
            input()
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _finished_runs(folder: Path) -> list[Path]:
    found: list[Path] = []
    for pattern in _FINISHED_GLOBS:
        found.extend(sorted(folder.glob(pattern)))
    return found


def _hash_of(path: Path) -> str | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    h = doc.get("settings_sha256")
    return h if isinstance(h, str) else None


_CHECKPOINTS = ("checkpoint.jsonl", "checkpoint.json", "train-checkpoint.npz")


def _checkpoint_file_hash(path: Path) -> str | None:
    if path.name == ACDC_CHECKPOINT:
        return checkpoint_hash(path)
    if path.suffix == ".npz":
        return _npz_hash(path)
    return _hash_of(path)


def guard_folder(
    folder: str | os.PathLike, run_hash: str, *, overwrite: bool, fresh: bool = False
) -> None:
    """Refuses (`RunFolderError`) a folder holding a finished run with other settings, unless
    `overwrite`, or an unfinished one (a checkpoint) with other settings, unless `overwrite` or
    `fresh`. Removes nothing (see [`clear_outputs`][]); call it with the folder locked."""
    folder = Path(folder)
    if not folder.exists():
        return
    others = [p for p in _finished_runs(folder) if _hash_of(p) != run_hash]
    if others and not overwrite:
        raise RunFolderError(
            f"{folder} holds a finished run with other settings ({others[0].name}); pass "
            "--overwrite to replace it, or choose another --out folder."
        )
    unfinished = [folder / n for n in _CHECKPOINTS if (folder / n).exists()]
    parts = folder / "roc-parts"
    if parts.is_dir():
        unfinished += sorted(parts.glob("*.json"))
    unfinished = [p for p in unfinished if _checkpoint_file_hash(p) != run_hash]
    if unfinished and not (overwrite or fresh):
        raise RunFolderError(
            f"{folder} holds an unfinished run with other settings ({unfinished[0].name}); pass "
            "--fresh to discard it and start over, or choose another --out folder."
        )


def clear_outputs(folder: str | os.PathLike, keep: tuple[str, ...] = ()) -> None:
    """Removes every file an earlier jacdc run wrote into `folder` (results, sweep and ROC
    files, checkpoints, `roc-parts/`), except the names in `keep`: called just before a run
    writes its results, so that no stale file of an earlier run is left beside them."""
    folder = Path(folder)
    for pattern in _OUTPUT_GLOBS:
        for p in folder.glob(pattern):
            if p.name not in keep and p.is_file():
                p.unlink()
    for name in _OUTPUT_DIRS:
        d = folder / name
        if name not in keep and d.is_dir():
            shutil.rmtree(d)


def _npz_hash(path: Path) -> str | None:
    try:
        with np.load(path) as z:
            return str(z["settings_sha256"])
    except Exception:  # noqa: BLE001 - any unreadable file is simply "not this run's"
        return None


def default_folder(parts: list[str], run_hash: str, root: str = "runs") -> Path:
    """`runs/<parts joined by '-'>-<first 8 hex digits of the settings hash>`: readable, and
    distinct for every distinct setting."""
    name = "-".join(p.replace(os.sep, "_") for p in parts if p)
    return Path(root) / f"{name}-{run_hash[:8]}"


# ---- ACDC checkpoint (JSON lines) ---------------------------------------------------------


def checkpoint_hash(path: str | os.PathLike) -> str | None:
    """The settings hash in a checkpoint's header line (`None` if unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            head = json.loads(f.readline())
        return head.get("settings_sha256") if isinstance(head, dict) else None
    except (OSError, ValueError):
        return None


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class AcdcCheckpoint:
    """The append-only checkpoint of one ACDC run (one or several thresholds).

    `writer(resume_state)` gives the `checkpoint` callback for [`jacdc.acdc_sweep`][]; `load()`
    reads and validates the log and returns the `resume` state (or `None` if there is none).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        run_hash: str,
        shape,
        thresholds,
        abs_value: bool = False,
    ):
        from ._acdc import acdc_nodes
        from ._graph import graph_of

        self.path = Path(path)
        self.run_hash = run_hash
        self.shape = shape
        self.thresholds = [float(t) for t in thresholds]
        self.abs_value = bool(abs_value)
        self.n_states = len(self.thresholds)
        self.nodes = acdc_nodes(shape)
        self.n_edges = len(graph_of(shape))
        self._prev: dict | None = None

    def header(self) -> dict:
        return {
            "kind": "jacdc-acdc-checkpoint",
            "version": CHECKPOINT_VERSION,
            "settings_sha256": self.run_hash,
            "n_edges": self.n_edges,
            "n_nodes": len(self.nodes),
            "n_states": self.n_states,
        }

    # -- reading --

    def load(self) -> dict | None:
        """The validated resume state, or `None` when there is no checkpoint (or it holds no
        finished node). Raises [`CheckpointError`][] for one that belongs to other settings or
        does not validate."""
        if not self.path.exists():
            return None
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        torn = lines[-1] != b""  # a last line without newline was cut by a kill
        lines = lines[:-1]
        where = f"checkpoint {self.path}"
        if not lines:
            return None
        try:
            head = json.loads(lines[0])
        except ValueError:
            raise CheckpointError(f"{where} has an unreadable header; pass --fresh.") from None
        if not isinstance(head, dict) or head.get("kind") != "jacdc-acdc-checkpoint":
            raise CheckpointError(f"{where} is not a jacdc ACDC checkpoint; pass --fresh.")
        if head.get("settings_sha256") != self.run_hash:
            raise CheckpointError(
                f"{where} belongs to a run with other settings; pass --fresh to start over or "
                "choose another --out folder."
            )
        if head != self.header():
            raise CheckpointError(f"{where} has header {head}, expected {self.header()}.")
        state = self._empty()
        good = len(lines[0]) + 1
        for n, line in enumerate(lines[1:], start=1):
            try:
                rec = json.loads(line)
            except ValueError:
                raise CheckpointError(f"{where}: line {n + 1} is not JSON; pass --fresh.") from None
            problem = self._apply(state, rec)
            if problem:
                raise CheckpointError(
                    f"{where}: line {n + 1} does not validate ({problem}); pass --fresh to "
                    "start over."
                )
            good += len(line) + 1
        if torn:  # drop the torn line so that appends continue a valid log
            with open(self.path, "r+b") as f:
                f.truncate(good)
        if state["next_node"] == 0:
            return None
        self._prev = _marks(state)
        return state

    def _empty(self) -> dict:
        s = self.shape
        return {
            "next_node": 0,
            "states": [
                {
                    "circuit": {
                        "present": [1] * self.n_edges,
                        "ph_qkv": np.ones((s.n_layers, s.n_heads, 3), int).tolist(),
                        "ph_mlp": [1] * s.n_layers,
                    },
                    "cur": None,
                    "log": [],
                    "n_tests": 0,
                }
                for _ in range(self.n_states)
            ],
            "n_calls": 0,
            "n_evals": 0,
        }

    def _apply(self, state: dict, rec) -> str | None:
        """Applies one node record to `state`; returns what is wrong with it, if anything."""
        if not isinstance(rec, dict):
            return "not an object"
        node_index = rec.get("node")
        if node_index != state["next_node"]:
            return f"node {node_index!r}, expected {state['next_node']}"
        if node_index >= len(self.nodes):
            return f"node {node_index} out of range (the graph has {len(self.nodes)} nodes)"
        incoming = set(self.nodes[node_index].incoming)
        per_state = rec.get("states")
        if not isinstance(per_state, list) or len(per_state) != self.n_states:
            return f"expected {self.n_states} states"
        for s, (st, r) in enumerate(zip(state["states"], per_state)):
            if not isinstance(r, dict) or not isinstance(r.get("log"), list):
                return f"state {s}: no log"
            present = st["circuit"]["present"]
            for entry in r["log"]:
                if not isinstance(entry, dict):
                    return f"state {s}: a log entry is not an object"
                e = entry.get("edge")
                if not isinstance(e, int) or isinstance(e, bool) or not 0 <= e < self.n_edges:
                    return f"state {s}: edge id {e!r} out of range [0, {self.n_edges})"
                if e not in incoming:
                    return f"state {s}: edge {e} is not an input of node {node_index}"
                removed = entry.get("removed")
                if not isinstance(removed, bool) or not isinstance(entry.get("skipped"), bool):
                    return f"state {s}: edge {e}: `removed`/`skipped` must be booleans"
                for key in ("before", "after", "delta"):
                    if not _finite(entry.get(key)):
                        return f"state {s}: edge {e}: `{key}` is not a finite number"
                # The decision must follow from the numbers (ACDC's rule).
                if entry["skipped"]:
                    if not removed or entry["delta"] != 0.0:
                        return f"state {s}: edge {e}: a skipped edge must be removed with delta 0"
                else:
                    delta = entry["after"] - entry["before"]
                    delta = abs(delta) if self.abs_value else delta
                    if abs(delta - entry["delta"]) > 1e-6 * max(1.0, abs(delta)):
                        return f"state {s}: edge {e}: `delta` is not `after - before`"
                    if removed != (entry["delta"] < self.thresholds[s]):
                        return (
                            f"state {s}: edge {e}: `removed` {removed} contradicts delta "
                            f"{entry['delta']!r} and threshold {self.thresholds[s]!r}"
                        )
                if removed:
                    if not present[e]:
                        return f"state {s}: edge {e} removed twice"
                    present[e] = 0
                st["log"].append(entry)
            cur, n_tests = r.get("cur"), r.get("n_tests")
            if not _finite(cur):
                return f"state {s}: `cur` is not a finite number"
            if not isinstance(n_tests, int) or n_tests < st["n_tests"]:
                return f"state {s}: bad `n_tests` {n_tests!r}"
            for off in r.get("ph_qkv_off", []):
                ok = isinstance(off, list) and len(off) == 3
                if not ok or not all(isinstance(i, int) and i >= 0 for i in off):
                    return f"state {s}: bad placeholder {off!r}"
                if off[0] >= self.shape.n_layers or off[1] >= self.shape.n_heads or off[2] > 2:
                    return f"state {s}: placeholder {off} out of range"
                st["circuit"]["ph_qkv"][off[0]][off[1]][off[2]] = 0
            for off in r.get("ph_mlp_off", []):
                if not isinstance(off, int) or not 0 <= off < self.shape.n_layers:
                    return f"state {s}: bad MLP placeholder {off!r}"
                st["circuit"]["ph_mlp"][off] = 0
            st["cur"], st["n_tests"] = float(cur), n_tests
        for key in ("n_calls", "n_evals"):
            if not isinstance(rec.get(key), int) or rec[key] < state[key]:
                return f"bad `{key}`"
            state[key] = rec[key]
        state["next_node"] = node_index + 1
        return None

    # -- writing --

    def start(self) -> None:
        """A new log (header line only), replacing any earlier file."""
        from ._results import atomic_write_bytes

        atomic_write_bytes(self.path, (canonical_json(self.header()) + "\n").encode())
        self._prev = None

    def __call__(self, state: dict) -> None:
        """The `checkpoint` callback: appends one line with what the node added."""
        if not self.path.exists():
            self.start()
        prev = self._prev or _marks(self._empty())
        rec_states = []
        for s, st in enumerate(state["states"]):
            rec: dict[str, Any] = {
                "log": st["log"][prev["log_len"][s] :],
                "cur": float(st["cur"]),
                "n_tests": int(st["n_tests"]),
            }
            new_q = np.asarray(st["circuit"]["ph_qkv"], bool)
            off = np.argwhere(prev["ph_qkv"][s] & ~new_q)
            if off.size:
                rec["ph_qkv_off"] = off.tolist()
            new_m = np.asarray(st["circuit"]["ph_mlp"], bool)
            off_m = np.nonzero(prev["ph_mlp"][s] & ~new_m)[0]
            if off_m.size:
                rec["ph_mlp_off"] = off_m.tolist()
            rec_states.append(rec)
        line = {
            "node": int(state["next_node"]) - 1,
            "states": rec_states,
            "n_calls": int(state["n_calls"]),
            "n_evals": int(state["n_evals"]),
        }
        data = (canonical_json(line) + "\n").encode()
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._prev = _marks(state)
        interruption_point("acdc-node")

    def remove(self) -> None:
        if self.path.exists():
            self.path.unlink()


def _marks(state: dict) -> dict:
    """What the next record is a difference against: log lengths and placeholder flags."""
    return {
        "log_len": [len(st["log"]) for st in state["states"]],
        "ph_qkv": [np.asarray(st["circuit"]["ph_qkv"], bool) for st in state["states"]],
        "ph_mlp": [np.asarray(st["circuit"]["ph_mlp"], bool) for st in state["states"]],
    }


# ---- training checkpoints (SP, edge pruning) ----------------------------------------------


class TrainCheckpoint:
    """The training state of an SP or edge-pruning run, `train-checkpoint.npz`: the state's
    arrays (`leaf_<i>`), the loss/metric histories so far (`history_<i>`), the step reached and
    the settings hash. Rewritten atomically after every chunk of steps (it is small: a few
    floats per unit or edge)."""

    def __init__(self, path: str | os.PathLike, run_hash: str):
        self.path = Path(path)
        self.run_hash = run_hash

    def save(self, step: int, carry, history) -> None:
        import io

        import jax

        from ._results import atomic_write_bytes

        leaves = jax.tree.leaves(carry)
        buf = io.BytesIO()
        np.savez(
            buf,
            settings_sha256=np.asarray(self.run_hash),
            step=np.asarray(step, np.int64),
            n_leaves=np.asarray(len(leaves), np.int64),
            n_history=np.asarray(len(history), np.int64),
            **{f"leaf_{i}": np.asarray(x) for i, x in enumerate(leaves)},
            **{f"history_{i}": np.asarray(h) for i, h in enumerate(history)},
        )
        atomic_write_bytes(self.path, buf.getvalue())

    def load(self) -> dict | None:
        """`{"step", "leaves", "history"}`, or `None` without a checkpoint; a checkpoint of other
        settings, or an unreadable one, is a [`CheckpointError`][]."""
        if not self.path.exists():
            return None
        where = f"checkpoint {self.path}"
        try:
            with np.load(self.path, allow_pickle=False) as z:
                run_hash = str(z["settings_sha256"])
                step = int(z["step"])
                leaves = [np.asarray(z[f"leaf_{i}"]) for i in range(int(z["n_leaves"]))]
                history = [np.asarray(z[f"history_{i}"]) for i in range(int(z["n_history"]))]
        except Exception as e:  # noqa: BLE001 - any damage: refuse with one line
            raise CheckpointError(
                f"{where} is unreadable ({type(e).__name__}); pass --fresh to start over."
            ) from None
        if run_hash != self.run_hash:
            raise CheckpointError(
                f"{where} belongs to a run with other settings; pass --fresh to start over or "
                "choose another --out folder."
            )
        if step < 1 or any(h.ndim != 2 or h.shape[1] != step for h in history):
            raise CheckpointError(f"{where} does not validate (step {step}); pass --fresh.")
        return {"step": step, "leaves": leaves, "history": history}

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
