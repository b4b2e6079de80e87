"""Time per edge test of the fast engine's evaluator, by candidates per call and banding, at the
late stages of the GPT-2-small shape (random weights, IOI-shaped 50 x 15, KL at the last
position) or, with `--workload induction`, of the induction shape (random 2 x 8
attention-only, 10 x 300, KL at 150 positions per example). Writes
`benchmarks/results/evaluator_calls.json`.

`--ynn` compiles the evaluators with XLA:CPU's YNNPACK fusions (XLA's default; jacdc turns them
off on CPU, `jacdc/_xla.py`): run once with and once without to compare.

Each row: `jacdc.engine.Evaluator(model, task, corrupted, "kl_div", lanes, bands=..., tail=...)`,
warm (one call first), best of `--reps` calls of all-ones candidates; seconds per call and per
edge test (per candidate). Variants: unbanded (1 candidate), and banded with `--tails` (0: the
banded scan at every stage; `auto`: the last two layers' stages through `evaluate_suffix`) for
each of `--lanes`. The machine may be shared: the load average is recorded.

Usage: `python benchmarks/evaluator_calls.py [--workload gpt2|induction] [--stages 24,21]
[--lanes 1,4,16] [--tails 0,auto] [--reps 3] [--ynn] [--out F]`.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import jax.random as jr
import numpy as np


HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "evaluator_calls.json"
sys.path.insert(0, str(HERE))
import _results  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", choices=["gpt2", "induction"], default="gpt2")
    p.add_argument("--stages", default=None, help="default: 24,21 (gpt2), 4,2,0 (induction)")
    p.add_argument("--ynn", action="store_true", help="keep XLA:CPU's YNNPACK fusions")
    p.add_argument("--lanes", default="1,4,16")
    p.add_argument("--tails", default="0,auto", help="banded variants' `tail` values")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.ynn:
        os.environ["JACDC_CPU_YNN"] = "1"  # read when the evaluators first compile

    import acdc_speed

    import jacdc
    from jacdc import engine
    from jacdc.models import Transformer, TransformerConfig

    if args.workload == "gpt2":
        cfg = TransformerConfig(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072,
                                d_vocab=50257, n_ctx=1024)  # fmt: skip
        model = Transformer(cfg, key=jr.key(0))
        task = acdc_speed.ioi_task(model)
        workload = "random GPT-2-small shape, IOI-shaped 50 x 15, KL at the last position"
    else:
        cfg = TransformerConfig(n_layers=2, n_heads=8, d_model=256, d_head=32, d_mlp=None,
                                d_vocab=50259, n_ctx=300, positional="shortformer")  # fmt: skip
        model = Transformer(cfg, key=jr.key(0))
        task = acdc_speed.induction_task(model)
        workload = "random 2x8 attention-only, 10 x 300 induction-shaped"
    corrupted = jacdc.ablation_sources(model, task, False)
    default_stages = "24,21" if args.workload == "gpt2" else "4,2,0"
    stages = [int(s) for s in (args.stages or default_stages).split(",")]
    doc = dict(_results.header("benchmarks/evaluator_calls.py"), rows=[], workload=workload,
               ynn=bool(args.ynn))  # fmt: skip
    tails = [t if t == "auto" else int(t) for t in args.tails.split(",")]
    variants = [(False, 1, 0)] + [(True, int(n), t) for t in tails for n in args.lanes.split(",")]
    for bands, lanes, tail in variants:
        ev = engine.Evaluator(model, task, corrupted, "kl_div", lanes, bands=bands, tail=tail)
        vecs = np.ones((lanes, ev.n_edges), np.float32)
        for stage in stages:
            ev(stage, vecs)  # compile
            times = []
            for _ in range(args.reps):
                t = time.perf_counter()
                ev(stage, vecs)
                times.append(time.perf_counter() - t)
            best = min(times)
            fn = ev.arguments(stage)[0].__name__
            row = {"bands": bands, "tail": tail, "evaluator": fn, "candidates": lanes,
                   "stage": stage, "s_per_call": best, "s_per_test": best / lanes}  # fmt: skip
            doc["rows"].append(row)
            print(f"bands={bands} tail={tail} candidates={lanes} stage {stage} ({fn}): "
                  f"{best:.3f} s/call, {best / lanes:.4f} s/test", flush=True)  # fmt: skip
    _results.write(doc, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
