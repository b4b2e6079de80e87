"""jacdc's on-disk caches (`jacdc._cache`): a second process compiles nothing the first compiled,
loading a cached tracr task imports neither tracr nor Haiku, and corrupt entries are rebuilt
with a warning, never trusted."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from jacdc import _cache
from jacdc.models import cached_tracr_model


HEAVY = ("tracr", "haiku", "torch", "transformers", "matplotlib")

# One process: import jacdc, list the tasks, load tracr-reverse and run a small ACDC sweep,
# counting JAX's traces and compilations; prints one JSON line.
SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, sys, warnings
    warnings.simplefilter("always")
    caught = []
    warnings.showwarning = lambda msg, cat, *a, **k: caught.append(f"{{cat.__name__}}: {{msg}}")
    from jacdc import _cache
    stats = _cache.compile_stats()
    import jacdc
    after_import = sorted(m for m in {heavy!r} if m in sys.modules)
    from jacdc import _cli
    with contextlib.redirect_stdout(io.StringIO()):
        _cli.main(["tasks"])
    after_tasks = sorted(m for m in {heavy!r} if m in sys.modules)
    from jacdc import tasks
    bundle = tasks.load_task("tracr-reverse")
    after_load = sorted(m for m in {heavy!r} if m in sys.modules)
    results = jacdc.acdc_sweep(bundle.model, bundle.val, [0.01, 0.1], metric="l2")
    print(json.dumps({{
        "after_import": after_import, "after_tasks": after_tasks, "after_load": after_load,
        "stats": stats.as_dict(), "present": [r.present_ids for r in results],
        "warnings": caught,
    }}))
    """
).format(heavy=HEAVY)


def _run(cache_dir, **env) -> dict:
    environ = dict(os.environ, JAX_PLATFORMS="cpu", JACDC_CACHE_DIR=str(cache_dir), **env)
    environ.pop("JACDC_NO_CACHE", None)
    environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=environ, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_second_process_compiles_nothing_and_corrupt_entries_are_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    cold = _run(cache)
    # Cold: tracr (and Haiku) are imported to compile the program; torch & co. never.
    assert cold["after_import"] == [] and cold["after_tasks"] == []
    assert set(cold["after_load"]) == {"tracr", "haiku"}
    assert cold["stats"]["compiles"] > 10
    tracr_entries = list((cache / "tracr").glob("*.npz"))
    xla_entries = [p for p in (cache / "xla").iterdir() if p.is_file()]
    assert len(tracr_entries) == 1 and len(xla_entries) >= cold["stats"]["compiles"] // 2

    warm = _run(cache)
    # Warm: nothing compiled (every XLA computation read from the cache), tracr never imported.
    assert warm["after_load"] == [], warm["after_load"]
    assert warm["stats"]["compiles"] == 0, warm["stats"]
    assert warm["stats"]["cache_hits"] == warm["stats"]["lowerings"] > 10
    assert not [w for w in warm["warnings"] if "cache" in w.lower()], warm["warnings"]
    assert warm["present"] == cold["present"]

    # Corrupt the tracr entry and the three largest XLA entries (the ACDC evaluator among
    # them): each is ignored with a warning and recompiled.
    tracr_entries[0].write_bytes(tracr_entries[0].read_bytes()[:-100] + b"\0" * 100)
    for p in sorted(xla_entries, key=lambda p: p.stat().st_size)[-3:]:
        p.write_bytes(b"not an executable" + p.read_bytes()[64:])
    broken = _run(cache)
    assert broken["present"] == cold["present"]
    assert set(broken["after_load"]) == {"tracr", "haiku"}  # recompiled
    assert any(w.startswith("CacheWarning") and "tracr" in w for w in broken["warnings"])
    assert any("persistent compilation cache" in w for w in broken["warnings"])
    assert broken["stats"]["compiles"] >= 3
    # The tracr entry was rewritten. JAX never overwrites an entry it cannot read, so the XLA
    # ones stay ignored (with a warning) until `jacdc cache clear --part xla`.
    again = _run(cache)
    assert again["after_load"] == [] and again["present"] == cold["present"]
    assert not [w for w in again["warnings"] if w.startswith("CacheWarning")], again["warnings"]


def test_no_cache_writes_nothing(tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, JAX_PLATFORMS="cpu", JACDC_CACHE_DIR=str(cache), JACDC_NO_CACHE="1")
    code = "import jacdc, jax.numpy as jnp; jnp.arange(3).sum().block_until_ready()"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert not cache.exists()
    proc = subprocess.run(
        [sys.executable, "-m", "jacdc", "cache", "info", "--no-cache"],
        env=dict(env, JACDC_NO_CACHE=""), capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "(off" in proc.stdout and not cache.exists()


# ---- the tracr model cache in this process (no tracr recompilation) ---------------------------


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JACDC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("JACDC_NO_CACHE", raising=False)  # the session turns caching off
    return tmp_path / "cache"


def _reverse_build(calls):
    from jacdc.tasks._tracr import tracr_assembled

    def build():
        calls.append(1)
        return tracr_assembled("tracr-reverse")

    return build


def _same(a, b):
    (ma, da), (mb, db) = a, b
    assert da == db
    np.testing.assert_array_equal(np.asarray(ma.w_e), np.asarray(mb.w_e))
    for x, y in zip(ma.blocks, mb.blocks):
        np.testing.assert_array_equal(np.asarray(x.w_in), np.asarray(y.w_in))
        np.testing.assert_array_equal(np.asarray(x.w_o), np.asarray(y.w_o))
    assert ma.cfg == mb.cfg


def test_tracr_cache_hit_miss_and_corruption(private_cache):
    calls = []
    build = _reverse_build(calls)
    key = {"program": "reverse, for the cache test"}
    first = cached_tracr_model(key, build, "tracr-reverse")
    assert calls == [1]
    (entry,) = (private_cache / "tracr").glob("*.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a hit warns about nothing
        hit = cached_tracr_model(key, build, "tracr-reverse")
    assert calls == [1]
    _same(first, hit)
    assert hit[1].input_encoding == {1: 0, 2: 1, 3: 2, "BOS": 3, "compiler_pad": 4}

    # A flipped byte inside the arrays: the checksum catches it.
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))
    with pytest.warns(_cache.CacheWarning):
        rebuilt = cached_tracr_model(key, build, "tracr-reverse")
    assert calls == [1, 1]
    _same(first, rebuilt)
    cached_tracr_model(key, build, "tracr-reverse")
    assert calls == [1, 1]  # rewritten, good again

    # A truncated file, and a file that is not an .npz at all.
    for damage in (entry.read_bytes()[:200], b"garbage"):
        entry.write_bytes(damage)
        with pytest.warns(_cache.CacheWarning):
            _same(first, cached_tracr_model(key, build, "tracr-reverse"))
    assert len(calls) == 4

    # A well-formed entry (valid checksum) with the wrong structure is not trusted either.
    meta, arrays = _cache.read_entry("tracr", entry.name.removesuffix(".npz"))
    del arrays["blocks.0.w_q"]
    _cache.write_entry("tracr", entry.name.removesuffix(".npz"), meta, arrays)
    with pytest.warns(_cache.CacheWarning, match="unexpected arrays"):
        _same(first, cached_tracr_model(key, build, "tracr-reverse"))
    assert len(calls) == 5

    # Another key (e.g. another tracr version or compiler option) is another entry.
    cached_tracr_model(dict(key, compiler={"mlp_exactness": 50}), build, "tracr-reverse")
    assert len(calls) == 6 and len(list((private_cache / "tracr").glob("*.npz"))) == 2


def test_cache_info_and_clear(private_cache, monkeypatch, capsys):
    calls = []
    cached_tracr_model({"program": "info test"}, _reverse_build(calls), "tracr-reverse")
    info = _cache.cache_info()
    assert info["dir"] == str(private_cache)
    assert info["parts"]["tracr"]["files"] == 1 and info["parts"]["tracr"]["bytes"] > 0
    from jacdc._cli import main

    assert main(["cache", "info"]) == 0
    assert "tracr: 1 files" in capsys.readouterr().out
    assert main(["cache", "clear", "--part", "tracr"]) == 0
    assert "tracr: removed 1 files" in capsys.readouterr().out
    assert _cache.cache_info()["parts"]["tracr"]["files"] == 0
    assert _cache.clear_cache(("tracr",)) == {"tracr": 0}
    with pytest.raises(ValueError, match="Unknown cache part"):
        _cache.clear_cache(("models",))
    monkeypatch.setenv("JACDC_NO_CACHE", "1")
    cached_tracr_model({"program": "info test"}, _reverse_build(calls), "tracr-reverse")
    assert _cache.cache_info()["parts"]["tracr"]["files"] == 0 and len(calls) == 2


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("JACDC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _cache.cache_dir() == tmp_path / "xdg" / "jacdc"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _cache.cache_dir() == tmp_path / "home" / ".cache" / "jacdc"
    monkeypatch.setenv("JACDC_CACHE_DIR", str(tmp_path / "mine"))
    assert _cache.cache_dir() == tmp_path / "mine"
    for value, off in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv("JACDC_NO_CACHE", value)
        assert _cache.cache_disabled() is off


def test_session_never_uses_the_user_cache():
    assert "jacdc-test-cache-" in os.environ["JACDC_CACHE_DIR"]
    assert _cache.cache_disabled()  # and JAX's persistent cache is off in this process
    import jax

    assert not jax.config.values["jax_compilation_cache_dir"]


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc")
def test_release_compiled_frees_the_executables_memory_maps():
    import jax
    import jax.numpy as jnp

    jax.clear_caches()
    before = _cache.memory_maps()
    f = jax.jit(lambda x: jnp.sin(x) * 2.0)
    for n in range(1, 41):  # 40 executables, one per shape
        f(jnp.ones((n,)))
    grown = _cache.memory_maps()
    assert grown > before + 40  # several maps per XLA:CPU executable
    assert not _cache.release_compiled(max_maps=10**9)  # under the limit: nothing dropped
    assert _cache.release_compiled(max_maps=0)
    assert _cache.memory_maps() < grown - 40
