"""Start-up of jacdc's commands, cold and warm, in fresh processes. Writes
`benchmarks/results/startup.json`.

Cases (each a fresh Python process; wall time measured from outside, so interpreter start-up,
imports, tracr compilation, XLA compilation and the work all count):

- `discover`: `jacdc discover tracr-reverse` (the first result; target warm <= 3 s);
- `sweep`: `jacdc sweep tracr-reverse --paper-thresholds` (21 thresholds; target warm <= 5 s);
- `sweep84`: the paper's whole tracr sweep in one process -- 21 thresholds x {corrupted, zero}
  ablation x {tracr-reverse, tracr-proportion}, through `jacdc.acdc_sweep` (as
  `benchmarks/acdc_speed.py` case a; target warm <= 8 s).

Each case runs in three cache states: **cold** (an empty `JACDC_CACHE_DIR`: everything is
compiled, and written to the cache; target <= 12 s), **warm** (the cache the cold run filled:
nothing is compiled) and **off** (`--no-cache` / `JACDC_NO_CACHE=1`: everything is compiled,
nothing written). The median of `--reps` repetitions is reported, with every repetition; cold
repetitions each start from an empty folder. Each process also reports JAX's traces,
compilations and persistent-cache hits (`jacdc.engine.compile_stats`).

**Peers** (`../shared/reference/peers.md` says how to build them; they are never vendored here):
`--original DIR --original-python PY` times the original implementation's first result
(`acdc/main.py --task tracr-reverse --threshold 0.01 --metric l2`, one process);
`--auto-circuit-python PY --auto-circuit-script FILE` times `PY FILE` (a script running
auto-circuit's tracr sweep), both beside jacdc's rows, interleaved by repetition.

The machine may be shared: the JSON records the load average before and after each case.

Usage: `python benchmarks/startup.py [--reps 3] [--only discover,sweep,sweep84] [--out F]`.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "startup.json"
TARGETS_S = {"discover": {"warm": 3.0, "cold": 12.0}, "sweep": {"warm": 5.0, "cold": 12.0},
             "sweep84": {"warm": 8.0}}  # fmt: skip

# Runs a `jacdc` command line in this process, then prints JAX's work as one JSON line.
CLI = textwrap.dedent(
    """
    import json, sys
    from jacdc import engine
    stats = engine.compile_stats()
    from jacdc._cli import main
    code = main(sys.argv[1:])
    print("STATS " + json.dumps(stats.as_dict()))
    sys.exit(code)
    """
)

SWEEP84 = textwrap.dedent(
    """
    import json
    import numpy as np
    from jacdc import engine
    stats = engine.compile_stats()
    import jacdc
    from jacdc import tasks
    taus = [float(t) for t in 10.0 ** np.linspace(-5, -1, 21)]
    edges = {}
    for name in ("tracr-reverse", "tracr-proportion"):
        bundle = tasks.load_task(name)
        for zero in (False, True):
            rs = jacdc.acdc_sweep(bundle.model, bundle.val, taus, metric="l2", zero_ablation=zero)
            edges[f"{name}/{'zero' if zero else 'corrupted'}"] = [r.n_edges for r in rs]
    print("STATS " + json.dumps(dict(stats.as_dict(), edges=edges)))
    """
)


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _run(cmd: list[str], env: dict, cwd: Path) -> dict:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.perf_counter() - t
    out = {"wall_s": wall, "returncode": proc.returncode}
    for line in proc.stdout.splitlines():
        if line.startswith("STATS "):
            out["jax"] = json.loads(line[len("STATS ") :])
    if proc.returncode != 0:
        out["stderr_tail"] = proc.stderr[-1500:]
    return out


def jacdc_command(case: str, out_dir: Path) -> list[str]:
    py = sys.executable
    if case == "discover":
        return [py, "-c", CLI, "discover", "tracr-reverse", "--no-progress", "--fresh",
                "--out", str(out_dir / "discover")]  # fmt: skip
    if case == "sweep":
        return [py, "-c", CLI, "sweep", "tracr-reverse", "--paper-thresholds", "--no-progress",
                "--fresh", "--out", str(out_dir / "sweep")]  # fmt: skip
    if case == "sweep84":
        return [py, "-c", SWEEP84]
    raise ValueError(f"unknown case {case!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--only", default="discover,sweep,sweep84")
    p.add_argument("--states", default="cold,warm,off", help="cache states to time")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--original", help="checkout of the original ACDC implementation (ORIG)")
    p.add_argument("--original-python", help="the Python of the original's environment")
    p.add_argument("--auto-circuit-python", help="the Python of auto-circuit's environment")
    p.add_argument("--auto-circuit-script", help="a script running auto-circuit's tracr sweep")
    args = p.parse_args(argv)
    cases = [c for c in args.only.split(",") if c]
    states = [s for s in args.states.split(",") if s]
    scratch = Path(tempfile.mkdtemp(prefix="jacdc-startup-"))
    base_env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    for var in ("JACDC_NO_CACHE", "JAX_COMPILATION_CACHE_DIR"):
        base_env.pop(var, None)
    doc = {
        "benchmark": "benchmarks/startup.py",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version()},
        "note": "fresh processes, wall time from outside; the machine may be shared (see load)",
        "targets_s": TARGETS_S,
        "cases": {},
    }  # fmt: skip
    try:
        for case in cases:
            runs = {s: [] for s in states}
            load_before = _load()
            warm_dir = scratch / f"{case}-warm-cache"
            for rep in range(args.reps):
                for state in states:
                    if state == "cold":
                        cache = scratch / f"{case}-cold-{rep}"
                        env = dict(base_env, JACDC_CACHE_DIR=str(cache))
                    elif state == "warm":
                        if not warm_dir.exists():  # fill it once, untimed
                            env = dict(base_env, JACDC_CACHE_DIR=str(warm_dir))
                            _run(jacdc_command(case, scratch), env, scratch)
                        env = dict(base_env, JACDC_CACHE_DIR=str(warm_dir))
                    else:
                        env = dict(base_env, JACDC_CACHE_DIR=str(scratch / "unused"),
                                   JACDC_NO_CACHE="1")  # fmt: skip
                    r = _run(jacdc_command(case, scratch), env, scratch)
                    runs[state].append(r)
                    print(f"{case} {state} rep {rep}: {r['wall_s']:.2f} s"
                          + (f" (compiles {r['jax']['compiles']})" if "jax" in r else ""),
                          flush=True)  # fmt: skip
                    if state == "cold":
                        shutil.rmtree(cache, ignore_errors=True)
            doc["cases"][case] = {
                state: {"median_s": statistics.median(r["wall_s"] for r in rs), "runs": rs}
                for state, rs in runs.items()
            }
            doc["cases"][case]["load_before_after"] = [load_before, _load()]
        peers = {}
        if args.original and args.original_python:
            orig = Path(args.original)
            env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(orig))
            cmd = [args.original_python, str(orig / "acdc" / "main.py"), "--task", "tracr-reverse",
                   "--threshold", "0.01", "--metric", "l2", "--device", "cpu",
                   "--torch-num-threads", "1"]  # fmt: skip
            rs = [_run(cmd, env, scratch) for _ in range(args.reps)]
            median = statistics.median(r["wall_s"] for r in rs)
            peers["original_first_result"] = {"median_s": median, "runs": rs}
        if args.auto_circuit_python and args.auto_circuit_script:
            cmd = [args.auto_circuit_python, args.auto_circuit_script]
            rs = [_run(cmd, dict(os.environ), scratch) for _ in range(args.reps)]
            median = statistics.median(r["wall_s"] for r in rs)
            peers["auto_circuit_script"] = {"median_s": median, "runs": rs,
                                            "script": args.auto_circuit_script}  # fmt: skip
        if peers:
            doc["peers"] = peers
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out)  # atomic
    for case, d in doc["cases"].items():
        print(case, {s: round(v["median_s"], 2) for s, v in d.items() if isinstance(v, dict)})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
