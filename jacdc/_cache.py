"""jacdc's on-disk caches: JAX's persistent compilation cache and compiled tracr models.

Start-up of a `jacdc` process is dominated by work a previous process already did: compiling
tracr programs (seconds each, mostly Haiku initialising the model eagerly) and XLA compiling the
engine's jitted functions. Both are cached in one per-user folder, [`cache_dir`][]:

- `$JACDC_CACHE_DIR` if set, else `$XDG_CACHE_HOME/jacdc`, else `~/.cache/jacdc`;
- `xla/`: JAX's persistent compilation cache ([`enable_compilation_cache`][], called on
    `import jacdc`). Every compilation is cached, however small or quick
    (`jax_persistent_cache_min_compile_time_secs = 0`,
    `jax_persistent_cache_min_entry_size_bytes = -1`): on CPU most of jacdc's compilations take
    well under JAX's default one-second threshold, and together they are most of a cold start.
    JAX validates its own entries; one it cannot read is recompiled with a warning.
- `tracr/`: compiled tracr models ([`jacdc.models.cached_tracr_model`][]), one `.npz` per
    program, keyed by the program, its vocabulary, maximum sequence length, compiler options and
    the tracr version. Entries are written atomically (a temporary file, then a rename) and
    checked on reading (format version, key, array names and shapes, a SHA-256 of the
    contents); anything unexpected is rebuilt with a [`CacheWarning`][], never trusted.

`JACDC_NO_CACHE=1` (or `jacdc --no-cache ...`) turns both off: nothing is read or written. If
the JAX option `jax_compilation_cache_dir` is already set (by the user, or through
`JAX_COMPILATION_CACHE_DIR`), jacdc leaves it alone. `jacdc cache info` prints what is stored,
`jacdc cache clear` removes it.

As JAX's own guide warns, a compilation cache is trusted code: do not point `JACDC_CACHE_DIR` at a
folder others can write to.
"""

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np


ENV_DIR = "JACDC_CACHE_DIR"
ENV_OFF = "JACDC_NO_CACHE"
PARTS = ("xla", "tracr")
# Bumped whenever the layout of a cache entry written by jacdc changes.
FORMAT_VERSION = 1
_META = "__jacdc_meta__"


class CacheWarning(UserWarning):
    """A cache entry could not be used (corrupt, stale or unreadable) and was rebuilt."""


def cache_dir() -> Path:
    """The cache folder: `$JACDC_CACHE_DIR`, else `$XDG_CACHE_HOME/jacdc`, else
    `~/.cache/jacdc` (not created here)."""
    explicit = os.environ.get(ENV_DIR)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "jacdc"


def cache_disabled() -> bool:
    """Whether `JACDC_NO_CACHE` turns the caches off (any value but `""`, `0`, `false`, `no`)."""
    return os.environ.get(ENV_OFF, "").strip().lower() not in ("", "0", "false", "no")


def disable_caches() -> None:
    """Turns both caches off for this process (what `--no-cache` does): sets `JACDC_NO_CACHE=1`
    (inherited by child processes) and unsets JAX's cache folder if jacdc set it."""
    os.environ[ENV_OFF] = "1"
    import jax

    if (
        _STATE["xla_dir"] is not None
        and jax.config.values.get("jax_compilation_cache_dir") == (_STATE["xla_dir"])
    ):
        jax.config.update("jax_compilation_cache_dir", None)
        _reset_jax_cache()
    _STATE["xla_dir"] = None


_STATE: dict = {"xla_dir": None}


def _reset_jax_cache() -> None:
    try:
        from jax._src import compilation_cache

        compilation_cache.reset_cache()
    except Exception:  # a private API: if it moves, the new setting applies from the next process
        pass


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> Path | None:
    """Turns on JAX's persistent compilation cache in `directory` (default
    `cache_dir() / "xla"`), caching every compilation however small.

    Does nothing (returns `None`) when `JACDC_NO_CACHE` is set, or when JAX's
    `jax_compilation_cache_dir` is already set to another folder (the user's choice wins).
    Takes effect for compilations from now on. **Returns:** the folder in use, or `None`."""
    import jax

    if cache_disabled():
        return None
    current = jax.config.values.get("jax_compilation_cache_dir")
    if current and current != _STATE["xla_dir"]:
        return Path(current)
    path = Path(directory) if directory is not None else cache_dir() / "xla"
    if current == str(path):
        return path
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    _reset_jax_cache()  # in case something compiled (and fixed the cache's state) before
    _STATE["xla_dir"] = str(path)
    return path


def memory_maps() -> int:
    """This process's memory maps (lines of `/proc/self/maps`; 0 where there is no `/proc`)."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def release_compiled(max_maps: int = 20_000) -> bool:
    """Drops JAX's in-memory caches of compiled functions when this process holds more than
    `max_maps` memory maps; returns whether it did.

    Every XLA:CPU executable maps about nine memory regions and JAX keeps every executable it
    compiled, so a long process that compiles thousands of them (a whole `jacdc paper` run, a
    test suite) reaches the kernel's limit (`vm.max_map_count`, 65,530 by default), where the
    next mmap fails inside XLA and the process segfaults. Called between tasks by long
    commands; what is dropped is compiled again on next use (from the persistent cache if on)."""
    if memory_maps() <= max_maps:
        return False
    import jax

    jax.clear_caches()
    return True


# ---------------------------------------------------------------------------------------------
# info / clear
# ---------------------------------------------------------------------------------------------


def _folder_stats(path: Path) -> tuple[int, int]:
    files, size = 0, 0
    if path.is_dir():
        for p in path.rglob("*"):
            if p.is_file():
                files += 1
                size += p.stat().st_size
    return files, size


def cache_info() -> dict:
    """What the cache holds: `{"dir", "disabled", "parts": {part: {"path", "files",
    "bytes"}}}` for the parts `xla` and `tracr`."""
    root = cache_dir()
    parts = {}
    for part in PARTS:
        files, size = _folder_stats(root / part)
        parts[part] = {"path": str(root / part), "files": files, "bytes": size}
    return {"dir": str(root), "disabled": cache_disabled(), "parts": parts}


def clear_cache(parts: tuple[str, ...] = PARTS) -> dict[str, int]:
    """Removes the cached files of `parts` (default: all). Only the folders jacdc writes
    (`xla/`, `tracr/` inside [`cache_dir`][]) are touched. **Returns:** files removed by part."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"Unknown cache part(s) {unknown}; expected some of {list(PARTS)}.")
    removed = {}
    for part in parts:
        path = cache_dir() / part
        removed[part] = _folder_stats(path)[0]
        if path.is_dir():
            shutil.rmtree(path)
    return removed


# ---------------------------------------------------------------------------------------------
# Entries: arrays + JSON metadata in one .npz, checked on reading
# ---------------------------------------------------------------------------------------------


def cache_key(parts: dict) -> str:
    """A SHA-256 hex key of a JSON-serialisable dict (sorted keys), with the format version."""
    text = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _digest(meta_text: str, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(meta_text.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def entry_path(part: str, key: str) -> Path:
    return cache_dir() / part / f"{key}.npz"


def write_entry(part: str, key: str, meta: dict, arrays: dict[str, np.ndarray]) -> Path | None:
    """Stores `arrays` and the JSON-serialisable `meta` under `key`, atomically. Returns the
    path, or `None` when the cache is off or the folder cannot be written (a warning)."""
    if cache_disabled():
        return None
    path = entry_path(part, key)
    meta_text = json.dumps(meta, sort_keys=True)
    header = {"format": FORMAT_VERSION, "key": key, "meta": meta_text,
              "sha256": _digest(meta_text, arrays)}  # fmt: skip
    buf = io.BytesIO()
    np.savez(buf, **{_META: np.frombuffer(json.dumps(header).encode(), np.uint8)}, **arrays)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buf.getvalue())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:
        warnings.warn(f"jacdc could not write the cache entry {path}: {err}", CacheWarning,
                      stacklevel=2)  # fmt: skip
        return None
    return path


def read_entry(part: str, key: str) -> tuple[dict, dict[str, np.ndarray]] | None:
    """The `(meta, arrays)` stored under `key`, or `None` if there is none, the cache is off,
    or the entry fails its checks (then with a [`CacheWarning`][]; the caller rebuilds it)."""
    if cache_disabled():
        return None
    path = entry_path(part, key)
    if not path.exists():
        return None
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as z:
            data = {name: z[name] for name in z.files}
        header = json.loads(bytes(data.pop(_META)).decode())
        if header.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {header.get('format')!r}, expected {FORMAT_VERSION}")
        if header.get("key") != key:
            raise ValueError("the key stored in the entry differs from its file name")
        if _digest(header["meta"], data) != header.get("sha256"):
            raise ValueError("checksum mismatch")
        meta = json.loads(header["meta"])
    except Exception as err:  # corrupt in any way: never trusted
        warnings.warn(
            f"Ignoring the corrupt or stale jacdc cache entry {path} ({type(err).__name__}: "
            f"{err}); rebuilding it.", CacheWarning, stacklevel=2,
        )  # fmt: skip
        return None
    return meta, data


# ---------------------------------------------------------------------------------------------
# Counting JAX's work
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CompileStats:
    """JAX's work in this process since [`compile_stats`][] was first called, from
    `jax.monitoring` events: `traces` (Python functions traced to jaxprs), `lowerings`
    (XLA computations requested: compiled or found in the persistent cache), `cache_hits`
    (read from the persistent cache). `compiles` = `lowerings - cache_hits`: computations XLA
    actually compiled."""

    traces: int = 0
    lowerings: int = 0
    cache_hits: int = 0
    trace_s: float = 0.0
    compile_s: float = 0.0

    @property
    def compiles(self) -> int:
        return self.lowerings - self.cache_hits

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), compiles=self.compiles)


_STATS: list[CompileStats] = []


def compile_stats() -> CompileStats:
    """The live [`CompileStats`][] of this process (its listeners are installed on the first
    call, so call it before the work to count)."""
    if _STATS:
        return _STATS[0]
    import jax.monitoring

    stats = CompileStats()
    _STATS.append(stats)

    def on_event(event: str, **kwargs) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            stats.cache_hits += 1

    def on_duration(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/jaxpr_trace_duration":
            stats.traces += 1
            stats.trace_s += duration
        elif event == "/jax/core/compile/backend_compile_duration":
            stats.lowerings += 1
            stats.compile_s += duration

    jax.monitoring.register_event_listener(on_event)
    jax.monitoring.register_event_duration_secs_listener(on_duration)
    return stats
