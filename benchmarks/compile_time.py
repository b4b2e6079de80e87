"""Compile time and call time of the fast ACDC engine's evaluator: the scan-over-layers forward
(one compiled function whose stage is a traced integer) against the unrolled forward (a Python
loop over layers, one compiled function per stage), on a random GPT-2-small-shaped model with
IOI-shaped data. Writes `benchmarks/results/compile_time.json`.

For each path: the seconds to lower and compile every function a full ACDC run needs (1 for
scan; 25 stages for unrolled: 12 layers x attention/MLP + the unembedding), and the warm seconds
per call (median of `--reps`) at the first, a middle and the last stage, with the same
candidate circuits. The metrics of both paths are compared on every timed call.

Usage: `python benchmarks/compile_time.py [--batch 8] [--seq 16] [--candidates 1]`.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results" / "compile_time.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--candidates", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    import gpu  # the benchmark's GPT-2-shaped workload (random GPT-2 initialisation)

    import jacdc
    from jacdc import engine
    from jacdc.models import corrupted_sources

    model, task = gpu.build(False, args.batch, args.seq, 0)
    corrupted = corrupted_sources(model, task.corrupted)
    clean = engine.clean_sources(model, task.clean)
    stacked = engine.stacked_blocks(model)
    E = len(jacdc.graph_of(model.graph_shape))
    L = model.cfg.n_layers
    stages = list(range(2 * L + 1))
    rng = np.random.default_rng(0)
    vecs = jnp.asarray((rng.uniform(size=(args.candidates, E)) > 0.02).astype(np.float32))

    def scan_args(stage):
        return (model, task, corrupted, clean, vecs, jnp.int32(stage), "kl_div", stacked)

    def unrolled_args(stage):
        return (model, task, corrupted, clean, vecs, stage, "kl_div")

    doc = {
        "benchmark": "benchmarks/compile_time.py",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "jax": jax.__version__, "backend": jax.default_backend(),
                    "device": str(jax.devices()[0])},
        "workload": {"model": "GPT-2 small shape, random weights", "batch": task.batch,
                     "seq": task.seq, "candidates": args.candidates, "edges": E,
                     "stages": len(stages)},
    }  # fmt: skip

    def compile_s(fn, fn_args):
        t = time.perf_counter()
        compiled = fn.lower(*fn_args).compile()
        return compiled, time.perf_counter() - t

    def call_s(compiled, fn_args):
        times, out = [], None
        for _ in range(args.reps):
            t = time.perf_counter()
            out = np.asarray(compiled(*fn_args))
            times.append(time.perf_counter() - t)
        return statistics.median(times), out

    print(f"scan: compiling 1 function for {len(stages)} stages ...", flush=True)
    scan_fn, scan_compile = compile_s(engine.evaluate_scan, scan_args(0))
    print(f"  {scan_compile:.2f} s", flush=True)
    print(f"unrolled: compiling {len(stages)} functions ...", flush=True)
    unrolled, per_stage = {}, {}
    for st in stages:
        unrolled[st], per_stage[st] = compile_s(engine.evaluate_unrolled, unrolled_args(st))
        print(f"  stage {st}: {per_stage[st]:.2f} s", flush=True)
    doc["compile"] = {
        "scan_s": scan_compile,
        "unrolled_total_s": sum(per_stage.values()),
        "unrolled_per_stage_s": per_stage,
        "ratio_unrolled_over_scan": sum(per_stage.values()) / scan_compile,
    }
    timed = {}
    for st in (0, L, 2 * L):
        s_time, s_out = call_s(scan_fn, scan_args(st))
        u_time, u_out = call_s(unrolled[st], unrolled_args(st))
        timed[st] = {"scan_s": s_time, "unrolled_s": u_time, "scan_over_unrolled": s_time / u_time,
                     "max_metric_diff": float(np.max(np.abs(s_out - u_out)))}  # fmt: skip
        print(f"stage {st}: call scan {s_time:.3f} s, unrolled {u_time:.3f} s, metric diff "
              f"{timed[st]['max_metric_diff']:.2e}", flush=True)  # fmt: skip
    doc["call"] = timed
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
