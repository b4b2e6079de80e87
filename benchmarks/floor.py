"""Achieved time against the FLOP floor, per run and per stage. Writes
`benchmarks/results/floor.json`.

The floor ([`jacdc.engine.floor_terms`][]) counts what each edge test needs at minimum, by kind of
contraction (receivers' mixing over upstream sources, q/k/v projections, attention, output
projections, MLPs, the unembedding at the metric positions). This script measures **this
machine's float32 matmul rate at the model's own shapes** for each kind (a jitted `einsum` of
that shape, median of `--reps` warm calls), so a stage's floor time is
`sum_kind floor_flops[kind] / rate[kind]`, and then runs the fast engine, timing every device
call (`on_call`), and reports

- per stage: tests, achieved seconds (the calls at that stage), floor seconds
    (`tests x floor time of one test`), achieved / floor;
- per run: wall seconds (including the first call's compilation, reported apart) / floor.

Workloads (`--only`): `tracr` (tracr-reverse, the paper's 21 thresholds, corrupted ablation: a
sweep's floor is the sum of its runs' floors), `induction` (random 2-layer x 8-head
attention-only, d_model 256, vocabulary 50,259, 10 x 300 tokens: `benchmarks/acdc_speed.py`
case b) and `gpt2` (random GPT-2-small shape, IOI-shaped 50 x 15, the first `--prefix` tests:
case c). The machine may be shared: the load average is recorded.

Usage: `python benchmarks/floor.py [--only tracr,induction,gpt2] [--prefix 300] [--reps 5]
[--bands auto|on|off] [--candidates N]`.
"""

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np


HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "floor.json"
sys.path.insert(0, str(HERE))
import _results  # noqa: E402


def kind_shapes(cfg, batch: int, seq: int, n_pos: int) -> dict[str, tuple[str, tuple, tuple]]:
    """The contraction of each kind at the model's shapes: `(einsum, lhs shape, rhs shape)`."""
    shape = cfg.graph_shape
    d, H, e, m, V = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp or 0, cfg.vocab_out
    n_mid = shape.n_src_before_layer(cfg.n_layers // 2)
    kinds = {
        # one layer's 3H receivers mixing their upstream sources, per example
        "mixing": ("brn,bnx->brx", (batch, 3 * H, n_mid), (batch, n_mid, seq * d)),
        "qkv": ("td,dh->th", (batch * seq, d), (d, 3 * H * e)),
        "attention": ("bse,bte->bst", (batch * H, seq, e), (batch * H, seq, e)),
        "out_proj": ("th,hd->td", (batch * seq, H * e), (H * e, d)),
        "unembed": ("pd,dv->pv", (batch * n_pos, d), (d, V)),
    }
    if m:
        kinds["mlp"] = ("td,dm->tm", (batch * seq, d), (d, m))
    return kinds


def _flops(spec: str, a, b) -> float:
    """`2 x` the product of every index's size: a binary contraction's multiply-adds."""
    lhs, rhs = spec.split("->")[0].split(",")
    sizes = dict(zip(lhs, a.shape)) | dict(zip(rhs, b.shape))
    return 2.0 * float(np.prod(list(sizes.values())))


# XLA's default compilation and the engine's (YNNPACK fusions off; CPU only, `jacdc/_xla.py`).
OPTION_SETS = {"xla default": None, "ynn off": {"xla_cpu_experimental_ynn_fusion_type": ""}}


def matmul_rates(cfg, batch, seq, n_pos, reps: int) -> dict[str, dict]:
    """FLOP/s of a jitted float32 `einsum` at each kind's shape (median of `reps` warm calls,
    the faster of XLA's default compilation and the engine's; see `OPTION_SETS`).
    Small shapes are vmapped over `copies` independent operands, enough for 5e7 FLOPs a call,
    so the rate is the arithmetic's, not the dispatch overhead's."""
    rates = {}
    rng = np.random.default_rng(0)
    option_sets = OPTION_SETS if jax.default_backend() == "cpu" else {"xla default": None}
    for kind, (spec, sa, sb) in kind_shapes(cfg, batch, seq, n_pos).items():
        one = _flops(spec, np.empty(sa), np.empty(sb))
        elems = int(np.prod(sa)) + int(np.prod(sb))
        copies = int(max(1, min(np.ceil(5e7 / one), 2**26 // max(elems, 1))))
        a = jnp.asarray(rng.standard_normal((copies, *sa), dtype=np.float32))
        b = jnp.asarray(rng.standard_normal((copies, *sb), dtype=np.float32))
        lowered = jax.jit(jax.vmap(lambda x, y, spec=spec: jnp.einsum(spec, x, y))).lower(a, b)
        best = {}
        for name, options in option_sets.items():  # the floor takes the faster compilation
            fn = lowered.compile(options)
            fn(a, b).block_until_ready()
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                fn(a, b).block_until_ready()
                times.append(time.perf_counter() - t)
            best[name] = statistics.median(times)
        median = min(best.values())
        flops = one * copies
        rates[kind] = {"einsum": spec, "lhs": list(sa), "rhs": list(sb), "copies": copies,
                       "flops": flops, "median_s": median, "median_s_by_options": best,
                       "flops_per_s": flops / median}  # fmt: skip
    return rates


def floor_seconds(model, task, stage: int, rates) -> float:
    from jacdc import engine

    n_pos = int(np.asarray(task.logit_positions).size)
    terms = engine.floor_terms(model.cfg, task.batch, task.seq, n_pos, stage)
    return sum(f / rates[k]["flops_per_s"] for k, f in terms.items() if f)


def measure(
    name, model, task, thresholds, rates, *, metric, max_tests=None, bands="auto", candidates="auto"
) -> dict:
    import jacdc
    from jacdc import engine

    calls = []
    t = time.perf_counter()
    results = jacdc.acdc_sweep(model, task, thresholds, metric=metric, max_tests=max_tests,
                               on_call=lambda *c: calls.append(c), bands=bands,
                               candidates=candidates)  # fmt: skip
    wall = time.perf_counter() - t
    stages = engine.edge_test_stages(model.graph_shape)
    tests = collections.Counter()
    for r in results:
        for rec in r.log:
            if not rec["skipped"]:
                tests[stages[rec["edge"]]] += 1
    call_s = collections.defaultdict(float)
    for i, (stage, sec, _) in enumerate(calls):
        if i > 0:  # the first call (the initial metric) carries the compilation
            call_s[stage] += sec
    by_stage = {}
    for st in sorted(tests):
        floor_s = tests[st] * floor_seconds(model, task, st, rates)
        ratio = call_s[st] / floor_s if floor_s else None
        by_stage[st] = {"tests": tests[st], "achieved_s": call_s[st], "floor_s": floor_s,
                        "achieved_over_floor": ratio}  # fmt: skip
    floor_total = sum(v["floor_s"] for v in by_stage.values())
    first = calls[0][1] if calls else 0.0
    return {
        "workload": name,
        "bands": bands,
        "candidates": candidates,
        "thresholds": len(thresholds),
        "edge_tests": sum(tests.values()),
        "device_calls": len(calls),
        "wall_s": wall,
        "first_call_s": first,
        "floor_s": floor_total,
        "floor_flops": sum(engine.run_floor(model, task, r)["flops"] for r in results),
        "wall_over_floor": wall / floor_total if floor_total else None,
        "calls_over_floor": (wall - first) / floor_total if floor_total else None,
        "by_stage": by_stage,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="tracr,induction,gpt2")
    p.add_argument("--prefix", type=int, default=300, help="gpt2: edge tests run")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument(
        "--bands",
        choices=["auto", "on", "off"],
        default="auto",
        help="the fast engine's banded evaluators (jacdc.acdc_sweep's bands=)",
    )
    p.add_argument("--candidates", default="auto", help="candidates per call (default: auto)")
    args = p.parse_args(argv)
    bands = {"auto": "auto", "on": True, "off": False}[args.bands]
    candidates = "auto" if args.candidates == "auto" else int(args.candidates)
    only = set(args.only.split(","))

    import acdc_speed  # the workloads of the speed benchmark

    from jacdc import tasks
    from jacdc.models import Transformer, TransformerConfig

    doc = dict(_results.header("benchmarks/floor.py"), runs={})
    workloads = []
    if "tracr" in only:
        bundle = tasks.load_task("tracr-reverse")
        workloads.append(("tracr-reverse sweep (21 thresholds, corrupted)", bundle.model,
                          bundle.val, acdc_speed.PAPER_TAUS, "l2", None))  # fmt: skip
    if "induction" in only:
        cfg = TransformerConfig(n_layers=2, n_heads=8, d_model=256, d_head=32, d_mlp=None,
                                d_vocab=50259, n_ctx=300, positional="shortformer")  # fmt: skip
        model = Transformer(cfg, key=jr.key(0))
        task = acdc_speed.induction_task(model)
        tau = acdc_speed._calibrate_tau(model, task, 305, keep=0.9)
        workloads.append(("random 2x8 attention-only, 10 x 300 induction-shaped", model, task,
                          [tau], "kl_div", None))  # fmt: skip
    if "gpt2" in only:
        cfg = TransformerConfig(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072,
                                d_vocab=50257, n_ctx=1024)  # fmt: skip
        model = Transformer(cfg, key=jr.key(0))
        task = acdc_speed.ioi_task(model)
        tau = acdc_speed._calibrate_tau(model, task, args.prefix, keep=0.03)
        workloads.append((f"random GPT-2-small shape, IOI-shaped 50 x 15, first {args.prefix} "
                          "tests", model, task, [tau], "kl_div", args.prefix))  # fmt: skip
    for name, model, task, taus, metric, prefix in workloads:
        n_pos = int(np.asarray(task.logit_positions).size)
        rates = matmul_rates(model.cfg, task.batch, task.seq, n_pos, args.reps)
        run = measure(
            name,
            model,
            task,
            taus,
            rates,
            metric=metric,
            max_tests=prefix,
            bands=bands,
            candidates=candidates,
        )
        run["matmul_rates"] = rates
        doc["runs"][name] = run
        print(f"{name}: {run['edge_tests']} tests in {run['wall_s']:.2f} s; floor "
              f"{run['floor_s']:.3f} s; wall/floor {run['wall_over_floor']:.1f}, calls/floor "
              f"{run['calls_over_floor']:.1f}", flush=True)  # fmt: skip
        for st, v in run["by_stage"].items():
            print(f"  stage {st}: {v['tests']} tests, {v['achieved_s']:.3f} s vs floor "
                  f"{v['floor_s']:.4f} s ({v['achieved_over_floor']:.1f}x)")  # fmt: skip
    _results.write(doc, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
