"""Accelerator benchmark: the fast ACDC engine, EAP and an SP lambda sweep on a random-weight
GPT-2-small-shaped model with IOI-shaped data. Writes JSON (default
`benchmarks/results/gpu.json`); run it through `benchmarks/gpu.sh`.

Workload: GPT-2 small's shape (12 layers x 12 heads, d_model 768, d_mlp 3072, vocabulary 50,257;
32,923 edges) with GPT-2's random initialisation ([`random_gpt2`][]); IOI-shaped data: 100
prompts of 16 random tokens, the corrupted prompt replaces the three "name" slots (positions 2, 4
and 10) with other random tokens; metric: KL at the last position.

Phases (each printed as it runs; the JSON is rewritten after each):

0. **Compilation, ahead and in parallel.** The fast engine's evaluator is the scan-over-layers
   forward with a traced stage: one compilation serves all 25 stages (the unrolled forward
   needed one per stage, 40-60 s each on an H100 in the first trial). EAP's gradient took
   ~65 s there; SP's training scan more. Every step is compiled with `.lower(...).compile()`
   in a thread pool (XLA compiles outside the GIL): the ACDC evaluator first, EAP and SP while
   the ACDC run keeps the accelerator busy. The first real call of each then finds it
   compiled. Compile times are reported apart.
1. **tau calibration.** A random GPT-2 has no known metric scale, so tau comes from a probe:
   the single-edge effect (KL increase when one edge is removed from the full model) of
   `--probe` random edges, each evaluated from its receiver's stage as the engine does; tau is
   their `1 - target/edges` quantile (target 400 edges). The edges ACDC keeps are reported.
2. **ACDC** (fast engine, default settings: suffix recomputation, speculative candidates, lanes
   `auto`, scan-over-layers). Edge tests per second; FLOP/s from per-stage FLOP counts
   ([`stage_flops`][]) x lanes per call, over the run and over the calls after the first.
   Then (`--compare-unrolled STAGE`, default 0) the same candidates at one stage through the
   scan evaluator and the unrolled one (compiled on the CPU during the ACDC run): warm
   milliseconds per call of each, and their metrics' difference.
3. **EAP** (one gradient over the batch), timed warm.
4. **SP** (the vmapped lambda sweep, as many lambdas as the memory model says fit, at most
   `--sp-lambdas`), one timed run of `--sp-steps` steps.

Memory: for each phase the memory model's prediction (`jacdc._memory`) next to XLA's
`memory_analysis()` of the same compiled step, and the device's `peak_bytes_in_use`.

Peak FLOP/s (dense, per NVIDIA's datasheets): H100 SXM / H200: FP32 67 TFLOP/s, TF32 tensor
core 495, BF16 989; H100 PCIe: 51 / 378 / 756; A100: 19.5 / 156 / 312. jacdc computes in
float32; XLA may run float32 matrix products as TF32 on tensor cores (its default precision), so
the JSON gives the fraction of both the FP32 and the TF32 roof (and of BF16 for reference). The
masked forward is dominated by the receivers' mixing contractions, which are memory-bound, so
expect a small fraction of either.

`--small` runs the same phases on a tiny model on CPU in seconds (the test suite runs it).
`--budget-s` (default 420; none with `--small`) caps the run: ACDC stops when only the reserve
for EAP and SP is left (the JSON then says `"truncated": true`, with the tests done so far).
`--small` has no budget unless one is given, so a loaded machine makes it slower, never
different (the test suite runs it; no clock decides its outcome).

Uses only public names: `jacdc`, `jacdc.engine` (the evaluators, the compiled EAP and SP steps,
the memory model), `jacdc.models`, `jacdc.tasks`.
"""

import argparse
import json
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "gpu.json"

PEAKS = {  # TFLOP/s, dense: (fp32, tf32, bf16)
    "h100 pcie": (51.0, 378.0, 756.0),
    "h100": (67.0, 495.0, 989.0),
    "h200": (67.0, 495.0, 989.0),
    "a100": (19.5, 156.0, 312.0),
}


def _bootstrap() -> None:
    """Makes `jacdc` importable from this checkout when it is not installed (the GPU machine
    has JAX, Equinox and Optax but no network to `pip install -e .`): the package's own folder
    plus the repository root as its search path, so `jacdc.models` and `jacdc.tasks` resolve to
    `models/` and `tasks/` exactly as the editable install maps them."""
    try:
        import jacdc  # noqa: F401

        return
    except ImportError:
        pass
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "jacdc", ROOT / "jacdc" / "__init__.py",
        submodule_search_locations=[str(ROOT / "jacdc"), str(ROOT)],
    )  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    sys.modules["jacdc"] = module
    spec.loader.exec_module(module)


def log(msg: str) -> None:
    print(f"[gpu.py {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def peak_flops(device_kind: str) -> dict | None:
    kind = device_kind.lower()
    for name, (fp32, tf32, bf16) in PEAKS.items():
        if name in kind and ("pcie" in kind) == ("pcie" in name):
            return {"fp32": fp32 * 1e12, "tf32": tf32 * 1e12, "bf16": bf16 * 1e12,
                    "source": f"datasheet, dense, {name}"}  # fmt: skip
    return None


def stage_flops(model, task, stage: int, scan: bool = True) -> float:
    """FLOPs of one candidate circuit's forward from `stage` on, as the evaluator contracts
    ([`jacdc.engine.executed_flops`][]: both halves of every mix, projections, attention, MLPs,
    the unembedding at the metric positions). `scan`: the scan-over-layers forward, whose
    receivers contract over all sources (those not upstream have weight zero)."""
    from jacdc import engine

    return engine.executed_flops(model, task, stage, "scan" if scan else "unrolled")


def device_peak_bytes():
    import jax

    stats = None
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        stats = None
    if stats and "peak_bytes_in_use" in stats:
        return {"device_peak_bytes_in_use": int(stats["peak_bytes_in_use"]),
                "device_bytes_limit": int(stats.get("bytes_limit", 0))}  # fmt: skip
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"host_max_rss_bytes": int(rss)}


def compile_step(jitted, *args) -> dict:
    """Compiles `jitted(*args)` (an `eqx.filter_jit` function) ahead of its first call (the
    call then finds it compiled) and returns XLA's memory figures for it and the seconds the
    lowering and compilation took. Thread-safe: the benchmark compiles several at once."""
    t = time.perf_counter()
    try:
        compiled = jitted.lower(*args).compile()
        stats = compiled.compiled.memory_analysis()
    except Exception as e:  # report, never fail the benchmark on this
        return {"error": f"{type(e).__name__}: {e}"[:300], "compile_s": time.perf_counter() - t}
    out = {
        "arguments": int(stats.argument_size_in_bytes),
        "outputs": int(stats.output_size_in_bytes),
        "temp": int(stats.temp_size_in_bytes),
        "alias": int(stats.alias_size_in_bytes),
    }
    out["total"] = out["arguments"] + out["outputs"] + out["temp"] - out["alias"]
    out["compile_s"] = time.perf_counter() - t
    return out


def compare(estimate, xla: dict) -> dict:
    doc = {"predicted": {"arguments": estimate.arguments, "outputs": estimate.outputs,
                         "temp": estimate.temp, "step": estimate.step,
                         "persistent": estimate.persistent, "detail": estimate.detail},
           "xla": xla}  # fmt: skip
    if "total" in xla and xla["total"]:
        doc["predicted_over_xla"] = estimate.step / xla["total"]
    return doc


# ---------------------------------------------------------------------------------------------


def random_gpt2(cfg, seed: int):
    """GPT-2's initialisation with NumPy (no per-shape device compilations): weights N(0, 0.02),
    residual-output projections scaled by 1/sqrt(2 L), biases 0, LayerNorm 1/0, positions
    N(0, 0.01), unembedding tied to the embedding."""
    import numpy as np

    from jacdc.models import Transformer

    rng = np.random.default_rng(seed)
    d, e, H, m, L = cfg.d_model, cfg.d_head, cfg.n_heads, cfg.d_mlp, cfg.n_layers

    def normal(*shape, std=0.02):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def zeros(*shape):
        return np.zeros(shape, np.float32)

    ln = (np.ones(d, np.float32), zeros(d))
    out_std = 0.02 / np.sqrt(2 * L)
    blocks = [
        dict(ln1=ln, w_q=normal(H, d, e), b_q=zeros(H, e), w_k=normal(H, d, e), b_k=zeros(H, e),
             w_v=normal(H, d, e), b_v=zeros(H, e), w_o=normal(H, e, d, std=out_std),
             b_o=zeros(d), ln2=ln, w_in=normal(d, m), b_in=zeros(m),
             w_out=normal(m, d, std=out_std), b_out=zeros(d))
        for _ in range(L)
    ]  # fmt: skip
    w_e = normal(cfg.d_vocab, d)
    return Transformer.from_params(cfg, w_e=w_e, w_pos=normal(cfg.n_ctx, d, std=0.01),
                                   blocks=blocks, ln_final=ln, w_u=w_e.T.copy())  # fmt: skip


def build(small: bool, batch: int, seq: int, seed: int):
    import jax.numpy as jnp
    import numpy as np

    from jacdc.models import TransformerConfig
    from jacdc.tasks import Task, kl_metric

    if small:
        cfg = TransformerConfig(n_layers=2, n_heads=4, d_model=32, d_head=8, d_mlp=64,
                                d_vocab=101, n_ctx=seq)  # fmt: skip
    else:
        cfg = TransformerConfig(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072,
                                d_vocab=50257, n_ctx=1024)  # fmt: skip
    model = random_gpt2(cfg, seed)
    rng = np.random.default_rng(seed + 1)
    clean = rng.integers(0, cfg.d_vocab, (batch, seq))
    corrupted = clean.copy()
    for slot in (2, 4, 10):  # the IOI template's name slots (IO, S1, S2)
        if slot < seq - 1:
            corrupted[:, slot] = rng.integers(0, cfg.d_vocab, batch)
    clean = jnp.asarray(clean, jnp.int32)
    positions = jnp.array([seq - 1])
    task = Task(
        clean=clean, corrupted=jnp.asarray(corrupted, jnp.int32), corrupted_positions=None,
        logit_positions=positions, metrics={"kl_div": kl_metric(model, clean, positions)},
    )  # fmt: skip
    return model, task


class Clock:
    def __init__(self, budget_s: float = math.inf):
        self.start = time.perf_counter()
        self.budget_s = budget_s

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def left(self) -> float:
        return self.budget_s - self.elapsed

    def timeout(self, reserve: float = 0.0, cap: float = math.inf) -> float | None:
        """Seconds to wait for a background job: `None` (no limit) without a budget."""
        if math.isinf(self.budget_s):
            return None
        return max(min(self.left - reserve, cap), 1.0)


class _Stop(Exception):
    pass


def evaluator(model, task, corrupted, n_lanes: int, layers: str = "scan"):
    """The fast engine's compiled evaluator, as the engine holds it: `ev(stage, vecs)` ->
    metric per candidate row ([`jacdc.engine.Evaluator`][])."""
    from jacdc import engine

    return engine.Evaluator(model, task, corrupted, "kl_div", n_lanes, layers=layers)


def probe_tau(model, evaluate, n_lanes, n_probe, target, seed):
    """Single-edge effects of `n_probe` random edges at the full model, each evaluated from its
    receiver's stage exactly as the engine would, and the tau that `target` of all edges would
    exceed (their `1 - target / edges` quantile)."""
    import numpy as np

    from jacdc import acdc_nodes, graph_of

    graph = graph_of(model.graph_shape)
    E = len(graph)
    stage_of = np.zeros(E, np.int64)
    for node in acdc_nodes(model.graph_shape):
        stage_of[list(node.incoming)] = node.stage
    rng = np.random.default_rng(seed)
    edges = rng.choice(E, size=min(n_probe, E), replace=False)
    full = np.ones((n_lanes, E), np.float32)
    t = time.perf_counter()
    base = None
    effects, n_calls = [], 0
    for stage in sorted(set(stage_of[edges].tolist()), reverse=True):
        if base is None:
            base = float(evaluate(stage, full)[0])
        group = edges[stage_of[edges] == stage]
        for i in range(0, len(group), n_lanes):
            chunk = group[i : i + n_lanes]
            vecs = full.copy()
            vecs[np.arange(len(chunk)), chunk] = 0.0
            out = evaluate(stage, vecs)
            effects.extend((out[: len(chunk)] - base).tolist())
            n_calls += 1
    effects = np.array(effects)
    q = min(max(1.0 - target / E, 0.0), 1.0)
    tau = float(np.quantile(effects, q))
    return tau, {
        "n_probe": int(len(edges)), "device_calls": n_calls, "full_model_kl": base,
        "quantile": q, "probe_s": time.perf_counter() - t,
        "effect_percentiles": {p: float(np.percentile(effects, p)) for p in (50, 90, 99, 100)},
    }  # fmt: skip


def run_acdc(model, task, tau, n_lanes, deadline_s, clock) -> dict:
    import numpy as np

    import jacdc
    from jacdc import engine

    calls = []  # (stage, seconds, n_used), from the engine's `on_call` hook

    state = {"tested": 0, "removed": 0, "last": time.perf_counter()}

    def progress(tested, removed, metric):
        state.update(tested=tested, removed=removed)
        now = time.perf_counter()
        if now - state["last"] > 10:
            state["last"] = now
            log(f"  ACDC: {tested} tested, {removed} removed, KL {metric:.4g}, "
                f"{clock.elapsed:.0f} s elapsed")  # fmt: skip
        if clock.elapsed > deadline_s:
            raise _Stop()

    t = time.perf_counter()
    result, truncated = None, False
    try:
        (result,) = jacdc.acdc_sweep(model, task, [tau], metric="kl_div", candidates=n_lanes,
                                     progress=progress,
                                     on_call=lambda *c: calls.append(c))  # fmt: skip
    except _Stop:
        truncated = True
    wall = time.perf_counter() - t
    first, steady = 0.0, []
    flops_total = 0.0
    for i, (stage, sec, _) in enumerate(calls):
        flops_total += n_lanes * stage_flops(model, task, stage)
        if i == 0:  # the run's first call (the clean sources, the stacked weights)
            first = sec
        else:
            steady.append((stage, sec))
    steady_s = sum(s for _, s in steady)
    steady_flops = sum(n_lanes * stage_flops(model, task, st) for st, _ in steady)
    n_tests = result.n_tests if result is not None else state["tested"]
    doc = {
        "tau": tau,
        "truncated": truncated,
        "edges_total": len(jacdc.graph_of(model.graph_shape)),
        "edges_kept": result.n_edges if result is not None else None,
        "final_kl": result.metric if result is not None else None,
        "edge_tests": n_tests,
        "device_calls": len(calls),
        "candidate_evaluations": int(sum(n for _, _, n in calls)),
        "lanes_per_call": n_lanes,
        "wall_s": wall,
        "first_call_s": first,
        "stages_visited": len({st for st, _, _ in calls}),
        "edges_per_s": n_tests / wall,
        "edges_per_s_excluding_first_call": n_tests / max(wall - first, 1e-9),
        "flops_executed": flops_total,
        "achieved_flops_per_s": flops_total / wall,
        "steady_calls_s": steady_s,
        "achieved_flops_per_s_steady": steady_flops / steady_s if steady_s else None,
        "host_s_outside_calls": wall - sum(s for _, s, _ in calls),
        # The floor ([`jacdc.engine.run_floor`][]): what the run's tests need at minimum.
        "floor_flops": engine.run_floor(model, task, result)["flops"] if result else None,
        "mean_call_ms_steady": 1e3 * steady_s / len(steady) if steady else None,
    }
    del np
    return doc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="tiny model on CPU (the test suite)")
    p.add_argument("--out", default=None, help=f"JSON path (default {RESULTS})")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall-clock budget (default 420 s; none with --small)",
    )
    p.add_argument("--batch", type=int, default=None, help="default 100 (8 with --small)")
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--candidates", type=int, default=None, help="ACDC lanes (default: auto)")
    p.add_argument("--tau", type=float, default=None, help="skip the calibration")
    p.add_argument(
        "--target-edges",
        type=int,
        default=None,
        help="edges tau should keep (default 400; a tenth of the graph with --small)",
    )
    p.add_argument("--probe", type=int, default=None, help="edges probed (default 512)")
    p.add_argument("--sp-lambdas", type=int, default=4, help="most lambdas trained together")
    p.add_argument("--sp-steps", type=int, default=None, help="default 50 (5 with --small)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="compilation threads (default: CPU cores, at most 12)",
    )
    p.add_argument(
        "--compare-unrolled",
        type=int,
        default=0,
        metavar="STAGE",
        help="also compile the unrolled evaluator of STAGE (default 0; -1: skip) and time both "
        "paths' calls there after the ACDC run",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)  # fmt: skip
    small = args.small
    budget = args.budget_s if args.budget_s is not None else (math.inf if small else 420.0)
    batch = args.batch or (8 if small else 100)
    sp_steps = args.sp_steps or (5 if small else 50)
    n_probe = args.probe or (64 if small else 512)
    out_path = Path(args.out) if args.out else RESULTS
    clock = Clock(budget)

    _bootstrap()
    from concurrent.futures import ThreadPoolExecutor

    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    import jacdc
    from jacdc import ablation_sources, engine

    dev = jax.devices()[0]
    log(f"JAX {jax.__version__} on {dev.platform} ({dev.device_kind}), {jax.device_count()} "
        f"device(s); budget {budget:.0f} s")  # fmt: skip
    doc = {
        "benchmark": "benchmarks/gpu.py" + (" --small" if small else ""),
        "budget_s": None if math.isinf(budget) else budget,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"platform": dev.platform, "device_kind": dev.device_kind,
                    "device_count": jax.device_count(), "jax": jax.__version__,
                    "python": platform.python_version(), "host": platform.node(),
                    "cpu_count": os.cpu_count(),
                    "matmul_precision": str(getattr(jax.config,
                                                    "jax_default_matmul_precision", None))},
        "peak_flops_per_s": peak_flops(dev.device_kind),
    }  # fmt: skip

    def write():
        doc["total_wall_s"] = clock.elapsed
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_suffix(out_path.suffix + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        os.replace(tmp, out_path)

    peak = doc["peak_flops_per_s"]

    def vs_peak(flops_per_s):
        if not peak or not flops_per_s:
            return None
        return {k: flops_per_s / peak[k] for k in ("fp32", "tf32", "bf16")}

    # ---- setup ----
    model, task = build(small, batch, args.seq, args.seed)
    corrupted = ablation_sources(model, task, False)
    jax.block_until_ready(corrupted)
    doc["workload"] = {
        "model": {k: getattr(model.cfg, k) for k in ("n_layers", "n_heads", "d_model", "d_head",
                                                       "d_mlp", "d_vocab", "n_ctx")},
        "random_weights": f"GPT-2 initialisation (random_gpt2), NumPy seed {args.seed}",
        "batch": task.batch, "seq": task.seq, "metric": "kl_div (last position)",
        "corruption": "random tokens at positions 2, 4, 10 (IOI name slots)",
        "edges": len(jacdc.graph_of(model.graph_shape)),
        "forward_flops_full": stage_flops(model, task, 0),
    }  # fmt: skip
    log(
        f"setup done in {clock.elapsed:.1f} s: {doc['workload']['edges']} edges, "
        f"{doc['workload']['forward_flops_full'] / 1e9:.1f} GFLOP per candidate forward"
    )
    n_lanes = args.candidates or engine.auto_candidates(model, task, 1)

    # ---- sizes from the memory model ----
    acdc_est = engine.acdc_memory(model.cfg, task.batch, task.seq, candidates=n_lanes,
                                   task=task)  # fmt: skip
    eap_est = engine.eap_memory(model.cfg, task.batch, task.seq, task=task)
    log(f"memory model: {acdc_est}")
    log(f"memory model: {eap_est}")
    engine.check_fits(acdc_est)
    free, _ = engine.device_memory()
    sp_batch, n_lam = task.batch, args.sp_lambdas
    while True:  # the most lambdas (at least 2) at the full batch, else a smaller batch
        sp_est = engine.sp_memory(model.cfg, sp_batch, task.seq, n_lambdas=n_lam,
                                   n_steps=sp_steps)  # fmt: skip
        if free is None or sp_est.total <= 0.8 * free or (n_lam == 1 and sp_batch <= 8):
            break
        if n_lam > 2 or (n_lam == 2 and sp_batch <= 8):
            n_lam -= 1
        else:
            sp_batch //= 2
    log(f"memory model: {sp_est}")

    def shrink(tree, b):
        return jax.tree.map(
            lambda x: x[:b] if hasattr(x, "shape") and x.ndim and x.shape[0] == task.batch else x,
            tree,
        )

    sp_task, sp_corr = shrink(task, sp_batch), shrink(corrupted, sp_batch)
    lambdas = [float(x) for x in np.logspace(-2, 1, n_lam)] if n_lam > 1 else [0.1]
    sp_args = (
        jacdc.init_sp_state(model.graph_shape, n_lam), jnp.asarray(lambdas, jnp.float32),
        jnp.asarray(1e-3, jnp.float32), jr.split(jr.key(args.seed), n_lam), model, sp_task,
        sp_corr, "kl_div", sp_steps,
    )  # fmt: skip

    # ---- compile everything ahead (XLA compiles outside the GIL) ----
    # The ACDC evaluator first (the ACDC run needs it); EAP and SP compile on the CPU while the
    # ACDC run keeps the accelerator busy.
    workers = args.workers or min(12, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=workers)
    t_compile = time.perf_counter()
    eap_job = pool.submit(compile_step, engine.eap_gradient, model, task, corrupted,
                          jnp.ones((1,), jnp.float32), "kl_div")  # fmt: skip
    sp_job = pool.submit(compile_step, engine.sp_train, *sp_args)
    unrolled_job, unrolled = None, None
    if args.compare_unrolled >= 0:  # compiles on the CPU while the accelerator runs ACDC
        unrolled = evaluator(model, task, corrupted, n_lanes, layers="unrolled")
        u_fn, u_args = unrolled.arguments(args.compare_unrolled)
        unrolled_job = pool.submit(compile_step, u_fn, *u_args)
    evaluate = evaluator(model, task, corrupted, n_lanes)
    jax.block_until_ready(evaluate.clean())
    log(f"compiling the ACDC evaluator (every stage), EAP and SP on {workers} threads ...")
    fn, fn_args = evaluate.arguments(0)
    acdc_info = compile_step(fn, *fn_args)
    compile_wall = time.perf_counter() - t_compile
    doc["acdc"] = {
        "memory": compare(acdc_est, acdc_info),
        "compile": {"functions": 1, "layers": "scan", "wall_s": compile_wall,
                    "compile_s": acdc_info.get("compile_s"),
                    "errors": [acdc_info["error"]] if "error" in acdc_info else []},
    }  # fmt: skip
    log(
        f"  ACDC evaluator compiled in {acdc_info.get('compile_s', 0):.1f} s; step: predicted "
        f"{acdc_est.step / 2**30:.2f} GiB, XLA {acdc_info.get('total', 0) / 2**30:.2f} GiB"
    )
    write()

    # ---- ACDC ----
    target = args.target_edges or (max(4, doc["workload"]["edges"] // 10) if small else 400)
    doc["acdc"]["target_edges"] = target
    if args.tau is None:
        tau, probe = probe_tau(model, evaluate, n_lanes, n_probe, target, args.seed)
        doc["acdc"]["calibration"] = probe
        log(f"tau = {tau:.3g} from {probe['n_probe']} single-edge effects "
            f"({probe['probe_s']:.1f} s)")  # fmt: skip
    else:
        tau = args.tau
    del evaluate
    write()
    reserve = 20.0 if small else 100.0  # EAP and SP runs after ACDC
    acdc_deadline = (
        math.inf if math.isinf(budget) else clock.elapsed + max(clock.left - reserve, 10.0)
    )
    try:
        acdc = run_acdc(model, task, tau, n_lanes, acdc_deadline, clock)
        acdc["achieved_vs_peak"] = vs_peak(acdc["achieved_flops_per_s"])
        acdc["achieved_vs_peak_steady"] = vs_peak(acdc["achieved_flops_per_s_steady"])
        acdc["tau_source"] = "--tau" if args.tau is not None else "probe quantile"
        doc["acdc"].update(acdc)
        log(
            f"ACDC: {acdc['edge_tests']} tests in {acdc['wall_s']:.1f} s "
            f"({acdc['edges_per_s']:.0f}/s), kept {acdc['edges_kept']} of {acdc['edges_total']}"
            " edges" + (" [TRUNCATED]" if acdc["truncated"] else "")
        )
    except Exception as e:  # e.g. out of memory: record it, go on
        doc["acdc"]["error"] = f"{type(e).__name__}: {e}"[:500]
        log(f"ACDC failed: {doc['acdc']['error']}")
    doc["acdc"]["peak_memory"] = device_peak_bytes()
    write()

    # ---- scan against unrolled at one stage: the same candidates, warm calls ----
    if unrolled_job is not None:
        st = args.compare_unrolled
        try:
            info = unrolled_job.result(timeout=clock.timeout(reserve=60.0, cap=120.0))
            if "error" in info:
                raise RuntimeError(info["error"])
            ev = evaluator(model, task, corrupted, n_lanes)
            rng = np.random.default_rng(args.seed)
            vecs = (rng.uniform(size=(n_lanes, ev.n_edges)) > 0.01).astype(np.float32)

            def timed(call, reps=5):
                out = call(st, vecs)  # warm
                t = time.perf_counter()
                for _ in range(reps):
                    out = call(st, vecs)
                return (time.perf_counter() - t) / reps, out

            s_call, s_out = timed(ev)
            u_call, u_out = timed(unrolled)
            doc["scan_vs_unrolled"] = {
                "stage": st, "lanes": n_lanes, "unrolled_compile_s": info.get("compile_s"),
                "scan_call_ms": 1e3 * s_call, "unrolled_call_ms": 1e3 * u_call,
                "scan_over_unrolled": s_call / u_call,
                "scan_flops": stage_flops(model, task, st, scan=True) * n_lanes,
                "unrolled_flops": stage_flops(model, task, st, scan=False) * n_lanes,
                "max_metric_diff": float(np.max(np.abs(s_out - u_out))),
            }  # fmt: skip
            del ev
            log(f"stage {st}: scan {1e3 * s_call:.1f} ms vs unrolled {1e3 * u_call:.1f} ms per "
                f"call (unrolled compiled in {info.get('compile_s', 0):.0f} s)")  # fmt: skip
        except Exception as e:  # out of time or memory: record it, go on
            doc["scan_vs_unrolled"] = {"stage": st, "error": f"{type(e).__name__}: {e}"[:500]}
            log(f"scan vs unrolled: {doc['scan_vs_unrolled']['error']}")
        write()

    # ---- EAP ----
    try:
        info = eap_job.result(timeout=clock.timeout())
        if "error" in info:
            raise RuntimeError(info["error"])
        t = time.perf_counter()
        scores = jacdc.eap_scores(model, task, metric="kl_div", corrupted=corrupted, check=False)
        cold = time.perf_counter() - t
        reps, t = 0, time.perf_counter()
        while reps < 3 and (reps == 0 or time.perf_counter() - t < 0.05 * max(clock.left, 0)):
            scores = jacdc.eap_scores(
                model, task, metric="kl_div", corrupted=corrupted, check=False
            )
            reps += 1
        warm = (time.perf_counter() - t) / reps
        eap_flops = 3 * stage_flops(model, task, 0)  # forward + backward
        doc["eap"] = {
            "memory": compare(eap_est, info), "compile_s": info.get("compile_s"),
            "first_call_s": cold, "warm_s": warm, "reps": reps,
            "edges_scored_per_s": len(scores) / warm,
            "flops_estimate": eap_flops, "achieved_flops_per_s": eap_flops / warm,
            "achieved_vs_peak": vs_peak(eap_flops / warm),
            "max_abs_score": float(np.max(np.abs(scores))),
        }  # fmt: skip
        log(f"EAP: {warm * 1e3:.1f} ms per gradient warm (compiled in "
            f"{info.get('compile_s', 0):.0f} s)")  # fmt: skip
    except Exception as e:  # e.g. out of memory: record it, go on to SP
        doc["eap"] = {"error": f"{type(e).__name__}: {e}"[:500]}
        log(f"EAP failed: {doc['eap']['error']}")
    doc["eap"]["peak_memory"] = device_peak_bytes()
    write()

    # ---- SP ----
    sp_doc = {"lambdas": lambdas, "batch": sp_batch, "steps": sp_steps}
    try:
        left = clock.left
        log(f"SP: waiting for its compilation ({left:.0f} s of the budget left) ...")
        info = sp_job.result(timeout=clock.timeout())
        sp_doc.update({"memory": compare(sp_est, info), "compile_s": info.get("compile_s")})
        if "error" in info:
            raise RuntimeError(info["error"])
        if free is not None and info["total"] > 0.95 * free:
            raise RuntimeError(f"XLA needs {info['total']} bytes, {free} free: not run")
        t = time.perf_counter()
        out = engine.sp_train(*sp_args)  # compiled ahead: this call only runs
        jax.block_until_ready(out)
        warm = time.perf_counter() - t
        step_flops = n_lam * 3 * stage_flops(model, sp_task, 0)
        sp_doc.update({
            "run_s": warm, "steps_per_s": sp_steps / warm,
            "lambda_steps_per_s": n_lam * sp_steps / warm,
            "flops_per_step_estimate": step_flops,
            "achieved_flops_per_s": step_flops * sp_steps / warm,
            "achieved_vs_peak": vs_peak(step_flops * sp_steps / warm),
            "final_metric": [float(x) for x in np.asarray(out[1][1])[:, -1]],
        })  # fmt: skip
        log(f"SP: {sp_steps / warm:.1f} steps/s warm for {n_lam} lambdas (compiled in "
            f"{info.get('compile_s', 0):.0f} s)")  # fmt: skip
    except Exception as e:  # out of memory or out of time: record it, keep the rest
        sp_doc["error"] = f"{type(e).__name__}: {e}"[:500]
        log(f"SP failed: {sp_doc['error']}")
    sp_doc["peak_memory"] = device_peak_bytes()
    doc["sp"] = sp_doc
    write()
    pool.shutdown(wait=False, cancel_futures=True)
    log(f"done in {clock.elapsed:.1f} s; wrote {out_path}")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # without joining a compilation still running past the budget
