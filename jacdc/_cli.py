"""The `jacdc` command line.

    jacdc tasks
    jacdc discover [TASK] [--algorithm acdc] [--threshold T] [--zero-ablation] [--metric NAME]
                        [--out DIR] [--weights PATH] [--dataset FILE] [--engine fast|reference]
                        [--data paper|jacdc] [--data-dir DIR]
    jacdc sweep TASK --thresholds T [T ...] | --paper-thresholds  [same options]
    jacdc roc TASK --algorithms acdc,sp,hisp,eap,eap-ig,edge-pruning [--zero-ablation]
    jacdc draw RESULT.json
    jacdc cache info|clear
    jacdc eval RESULT.json [--prompts FILE | --dataset FILE] [--weights PATH]
    jacdc compare A.json B.json [...] [--out DIR]

Without a TASK, `--weights PATH` with `--prompts FILE` (text) or `--dataset FILE` (token ids)
runs on any checkpoint `jacdc.models.load_pretrained` reads.
    jacdc paper [TASK ...] [--weights TASK=PATH ...] [--algorithms acdc,sp,hisp] [--out DIR]

Every command that computes takes `--precision` (matmul precision, default highest) and
`--no-fold-value-biases` (load the raw weights; default: TransformerLens's value-bias folding,
as the paper); tracr tasks take `--positions none|shuffled`.

Bad input ends with a one-line `jacdc: error: ...` on stderr and exit code 2, never a traceback.
"""

import argparse
import hashlib
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np


DEFAULT_THRESHOLD = 0.01
ABLATIONS = ("corrupted", "zero", "mean", "mean-positions")
ALGORITHMS = ("acdc", "sp", "hisp", "eap", "eap-ig", "edge-pruning")


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jacdc", description="Automated circuit discovery for transformers, in JAX."
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="neither read nor write jacdc's caches (compiled tracr models, JAX's compilation "
        "cache); also JACDC_NO_CACHE=1. May also follow the command",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("tasks", help="list the tasks")

    def model_options(sp):
        from jacdc._precision import PRECISIONS

        sp.add_argument(
            "--precision",
            choices=PRECISIONS,
            default=None,
            help="matmul precision (default: highest, exact float32; high/default are faster on "
            "GPUs); recorded in the results",
        )
        sp.add_argument(
            "--no-fold-value-biases",
            action="store_true",
            help="load GPT-2 / TransformerLens weights raw instead of folding b_V into b_O as "
            "TransformerLens (and the paper) did",
        )

    def common(sp):
        sp.add_argument(
            "task",
            nargs="?",
            default=None,
            help="task name (see `jacdc tasks`); omit it to run on --weights with --prompts or "
            "--dataset",
        )
        model_options(sp)
        sp.add_argument(
            "--positions",
            choices=("none", "shuffled"),
            default=None,
            help="tracr: positional corruption of the corrupted run (default none, as in the "
            "paper's runs; shuffled = the original's current seed-49 permutation)",
        )
        sp.add_argument("--metric", help="metric to minimise (default: the task's)")
        sp.add_argument(
            "--zero-ablation",
            action="store_true",
            help="zero the residual writers instead of patching corrupted activations",
        )
        data_options(sp)
        sp.add_argument(
            "--ablation",
            choices=ABLATIONS,
            default=None,
            help="what a removed edge reads: corrupted (default), zero (= --zero-ablation), mean "
            "(each source's mean over the reference prompts, per position) or mean-positions "
            "(also averaged over positions)",
        )
        sp.add_argument(
            "--mean-reference",
            help="mean ablation: prompts (.csv/.jsonl) or tokens (.npz/.json) to average over "
            "(default: the clean prompts)",
        )
        sp.add_argument("--out", help="output folder (default: runs/<task>-<settings>)")
        sp.add_argument("--weights", help="model weights: a folder, file or hub id")
        sp.add_argument(
            "--dataset",
            help="your own clean/corrupted tokens (.npz or .json; "
            "keys clean, corrupted, optional corrupted_positions, logit_positions, "
            "weights)",
        )
        sp.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
        sp.add_argument("--engine", choices=("fast", "reference"), default="fast")
        sp.add_argument(
            "--layers",
            choices=("scan", "unrolled"),
            default="scan",
            help="fast engine's forward: scan (one compilation for every stage; default) or "
            "unrolled (one compilation per stage, cheaper calls with many candidates)",
        )
        sp.add_argument(
            "--abs-value",
            action="store_true",
            help="remove an edge iff |metric change| < threshold",
        )
        sp.add_argument(
            "--candidates",
            type=int,
            default=None,
            help="fast engine: circuits evaluated per device call (default: auto)",
        )
        sp.add_argument(
            "--fresh",
            action="store_true",
            help="ignore a checkpoint in the output folder and start over",
        )
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")
        sp.add_argument(
            "--devices",
            type=int,
            default=None,
            help="ACDC, SP, EAP, EAP-IG: devices to shard over (default: all that JAX sees); "
            "the batch is split over them and the rest split ACDC's candidates or SP's "
            "lambdas (docs/scale.md)",
        )

    def data_options(sp):
        sp.add_argument(
            "--data",
            choices=("paper", "jacdc"),
            help="IOI, Greater-Than, Docstring, Induction: the original implementation's "
            "prompts (paper; the default) or jacdc's own draws (jacdc)",
        )
        sp.add_argument(
            "--data-dir",
            help="induction: folder with the paper's validation_data.pt and "
            "mask_repeat_candidates.pkl (default: the folder of --weights)",
        )
        sp.add_argument(
            "--prompts",
            help="your own text prompts (.csv or .jsonl; columns clean, corrupted, correct, "
            "optional incorrect, position, split), tokenized with the --weights tokenizer",
        )
        sp.add_argument(
            "--first-token",
            action="store_true",
            help="--prompts: score the first token of an answer that is several tokens",
        )

    d = sub.add_parser("discover", help="find a circuit")
    common(d)
    d.add_argument("--algorithm", choices=ALGORITHMS, default="acdc")
    d.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"ACDC threshold tau (default {DEFAULT_THRESHOLD}); eap/eap-ig: keep "
        "edges whose |score| is above it",
    )
    d.add_argument(
        "--lambda",
        dest="lam",
        type=float,
        default=1.0,
        help="sp / edge-pruning: sparsity strength (default 1.0)",
    )
    d.add_argument(
        "--steps",
        type=int,
        default=3000,
        help="sp / edge-pruning: optimisation steps (default 3000)",
    )
    d.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="eap / eap-ig: keep the k highest-|score| edges; hisp: keep the k "
        "highest-scoring units (default: 5%% of edges / 25%% of units)",
    )
    s = sub.add_parser("sweep", help="ACDC at several thresholds (one lock-step batch)")
    common(s)
    group = s.add_mutually_exclusive_group(required=True)
    group.add_argument("--thresholds", type=float, nargs="+")
    group.add_argument(
        "--paper-thresholds",
        action="store_true",
        help="10^linspace(-5, -1, 21), the paper's tracr grid",
    )
    r = sub.add_parser("roc", help="ROC/AUC of algorithms against the canonical circuit")
    r.add_argument("task")
    r.add_argument(
        "--algorithms", default="acdc,sp,hisp", help="comma-separated: " + ",".join(ALGORITHMS)
    )
    r.add_argument("--zero-ablation", action="store_true")
    r.add_argument("--metric")
    r.add_argument("--weights")
    data_options(r)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out")
    model_options(r)
    r.add_argument("--positions", choices=("none", "shuffled"), default=None)
    pp = sub.add_parser("paper", help="the paper's sweeps and its Tables 2 and 3, with ours")
    pp.add_argument(
        "tasks", nargs="*", help="ioi, greater-than, docstring, tracr-proportion, tracr-reverse"
    )
    pp.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="TASK=PATH",
        help="weights of a task that needs them (repeat per task)",
    )
    pp.add_argument("--algorithms", default="acdc,sp,hisp")
    pp.add_argument("--sp-steps", type=int, default=10_000, help="SP steps (the paper: 10000)")
    pp.add_argument("--seed", type=int, default=0, help="SP's PRNG seed")
    pp.add_argument("--out", default="runs/paper")
    model_options(pp)
    dr = sub.add_parser("draw", help="render a result's circuit (DOT, and SVG/PNG with Graphviz)")
    dr.add_argument("result", help="a result .json")
    dr.add_argument("--format", choices=("svg", "png", "dot"), default="svg")
    c = sub.add_parser("cache", help="show or clear jacdc's on-disk caches (JACDC_CACHE_DIR)")
    c.add_argument("action", choices=("info", "clear"))
    c.add_argument("--part", choices=("xla", "tracr"), help="only this part (default: both)")
    ev = sub.add_parser("eval", help="re-score a saved circuit (on new data)")
    ev.add_argument("result", help="a result .json")
    ev.add_argument("--weights", help="model weights (default: those the result records)")
    ev.add_argument("--dataset", help="token data (.npz/.json) to score on")
    data_options(ev)
    ev.add_argument("--metric", help="metric (default: the result's)")
    ev.add_argument("--ablation", choices=ABLATIONS, default=None, help="default: the result's")
    ev.add_argument("--mean-reference", help="mean ablation: reference prompts or tokens")
    ev.add_argument("--split", choices=("all", "val", "test"), default=None,
                    help="rows of --prompts to score: all (default for a new file), or the "
                    "seeded val/test split; the result's own data: val, the split it was found "
                    "on")  # fmt: skip
    ev.add_argument("--seed", type=int, default=None, help="data seed (default: the result's)")
    ev.add_argument("--out", help="write the scores as JSON here (default: print only)")
    cp = sub.add_parser("compare", help="overlap of circuits, and one faithfulness plot")
    cp.add_argument("results", nargs="+", help="two or more result .json files")
    cp.add_argument("--out", help="folder for compare.json and faithfulness.png/.svg")
    cp.add_argument("--no-plot", action="store_true", help="skip the faithfulness plot")
    return p


def _load_bundle(args):
    from jacdc import tasks

    prompts = getattr(args, "prompts", None)
    if args.task is None or prompts:
        return _custom_bundle(args)
    spec = tasks.get_task(args.task)
    weights = getattr(args, "weights", None)
    if getattr(args, "dataset", None) and weights and weights not in ("random", "random-small"):
        # The user's data replaces the task's: load the model only, never build the task's own
        # data (which may not even fit the model, e.g. induction's 300 tokens on n_ctx 16).
        from jacdc.models import load_pretrained, value_bias_folding

        with value_bias_folding(not getattr(args, "no_fold_value_biases", False)):
            model = load_pretrained(weights).model
        task = tasks.task_from_dataset(args.dataset, model)
        return tasks.TaskBundle(
            name=spec.name,
            model=model,
            val=task,
            test=task,
            default_metric="kl_div",
            info={"user_data": True},
        )
    if spec.needs_weights and not getattr(args, "weights", None):
        raise CLIError(
            f"Task {args.task!r} needs model weights: pass --weights PATH (a local checkpoint "
            "folder/file) or a hub id when online; `--weights random` gives a random-weight "
            "model for trying the pipeline."
        )
    options = {"weights": getattr(args, "weights", None), "seed": args.seed}
    for flag, name in (
        ("--data", "data"),
        ("--data-dir", "data_dir"),
        ("--positions", "positions"),
    ):
        value = getattr(args, name, None)
        if value is not None:
            if name not in inspect.signature(spec.build).parameters:
                fix = " (tracr tasks only): drop it" if name == "positions" else ""
                raise CLIError(f"Task {args.task!r} has no {flag} option{fix}.")
            options[name] = value
    from jacdc.models import value_bias_folding

    with value_bias_folding(not getattr(args, "no_fold_value_biases", False)):
        return tasks.load_task(args.task, **options)


def _custom_bundle(args):
    """A bundle from `--weights` and `--prompts` / `--dataset`, without a built-in task."""
    from jacdc import tasks
    from jacdc.models import load_pretrained

    prompts, dataset = getattr(args, "prompts", None), getattr(args, "dataset", None)
    if args.task is not None and prompts:
        raise CLIError(
            f"--prompts replaces the built-in task; drop the task name {args.task!r} (run "
            "`jacdc discover --weights PATH --prompts FILE`)."
        )
    if prompts and dataset:
        raise CLIError("Pass either --prompts (text) or --dataset (token ids), not both.")
    if not (prompts or dataset):
        raise CLIError(
            "Give a TASK (see `jacdc tasks`), or --weights PATH with --prompts FILE (text) or "
            "--dataset FILE (token ids) to run on your own checkpoint."
        )
    weights = getattr(args, "weights", None)
    if not weights or weights in ("random", "random-small"):
        raise CLIError(
            "Without a built-in task, --weights must name a checkpoint folder, file or hub id "
            "(random weights need a task's architecture: give a TASK)."
        )
    from jacdc.models import value_bias_folding

    with value_bias_folding(not getattr(args, "no_fold_value_biases", False)):
        pre = load_pretrained(weights)
    if dataset:
        task = tasks.task_from_dataset(dataset, pre.model)
        return tasks.TaskBundle(
            name=Path(dataset).stem,
            model=pre.model,
            val=task,
            test=task,
            default_metric="kl_div",
            info={"user_data": True},
        )
    if pre.tokenizer is None:
        raise CLIError(
            f"{weights} has no tokenizer files (tokenizer.json, vocab.json + merges.txt or "
            "encoder.json + vocab.bpe), so text prompts cannot be tokenized; give token ids "
            "with --dataset."
        )
    bundle = tasks.from_file(
        prompts, pre.model, pre.tokenizer, seed=args.seed or 0, first_token=args.first_token
    )
    bundle.info["user_data"] = True
    return bundle


def _task_of(args, bundle):
    """The split discovery runs on: the user's token data or the bundle's validation split."""
    from jacdc import tasks

    if args.dataset and not bundle.info.get("user_data"):
        return tasks.task_from_dataset(args.dataset, bundle)
    return bundle.val


def _ablation_of(args, model):
    """The `jacdc.Ablation` of `--ablation` / `--zero-ablation` / `--mean-reference`."""
    from jacdc._eval import make_ablation

    if args.ablation and args.zero_ablation and args.ablation != "zero":
        raise CLIError(f"--zero-ablation contradicts --ablation {args.ablation}; pass one.")
    kind = args.ablation or ("zero" if args.zero_ablation else "corrupted")
    return make_ablation(kind, getattr(args, "mean_reference", None), model, args.weights)


def _data_sha256(args) -> str | None:
    for name in ("prompts", "dataset"):
        value = getattr(args, name, None)
        if value and Path(value).exists():
            return hashlib.sha256(Path(value).read_bytes()).hexdigest()
    return None


def _progress_bar(enabled: bool, total: int, desc: str):
    """A tqdm bar created at the first update, so that errors found before any work never
    share the terminal with an empty bar."""
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bars = []

    def update(tested: int, removed: int, metric: float):
        if not bars:
            bars.append(
                tqdm(total=total, desc=desc, unit="edge", file=sys.stderr, dynamic_ncols=True)
            )
        bar = bars[0]
        bar.n = min(tested, total)
        bar.set_postfix(removed=removed, metric=f"{metric:.4g}", refresh=False)
        bar.refresh()

    def close():
        for bar in bars:
            bar.close()

    return update, close


def _run_id(args, thresholds) -> dict:
    dataset_hash = _data_sha256(args)
    return {
        "task": args.task,
        "thresholds": list(thresholds),
        "metric": args.metric,
        "zero_ablation": args.zero_ablation,
        "abs_value": args.abs_value,
        "seed": args.seed,
        "weights": args.weights,
        "dataset_sha256": dataset_hash,
        "data": getattr(args, "data", None),
        "data_dir": getattr(args, "data_dir", None),
        "engine": args.engine,
        "ablation": args.ablation,
        "mean_reference": args.mean_reference,
        "precision": _precision_of(args),
        "positions": args.positions,
        "fold_value_biases": not args.no_fold_value_biases,
    }


def _acdc_runs(args, thresholds, out_dir: Path):
    """Runs ACDC at `thresholds`, resuming from `out_dir/checkpoint.json` when it matches."""
    import jacdc
    import jacdc._acdc
    from jacdc._results import atomic_write_json

    jacdc._acdc.check_thresholds(thresholds)
    bundle = _load_bundle(args)
    task = _task_of(args, bundle)
    ablation = _ablation_of(args, bundle.model)
    metric = args.metric or bundle.default_metric
    if metric not in task.metrics:
        raise CLIError(
            f"Unknown metric {metric!r} for task {bundle.name!r}; available: "
            f"{', '.join(sorted(task.metrics))}."
        )
    args.metric = metric
    run_id = _run_id(args, thresholds)
    ckpt_path = out_dir / "checkpoint.json"
    resume = None
    if ckpt_path.exists() and not args.fresh:
        saved = json.loads(ckpt_path.read_text())
        if saved.get("run") != run_id:
            raise CLIError(
                f"{ckpt_path} belongs to a run with other settings; pass --fresh to start over "
                "or choose another --out folder."
            )
        resume = saved["state"]
        print(f"jacdc: resuming from {ckpt_path} (node {resume['next_node']})", file=sys.stderr)

    def checkpoint(state):
        atomic_write_json(ckpt_path, {"run": run_id, "state": state})

    total = len(jacdc.graph_of(bundle.model.graph_shape)) * len(thresholds)
    progress, close = _progress_bar(not args.no_progress, total, f"ACDC {bundle.name}")
    start = time.perf_counter()
    try:
        from jacdc import _sharding

        kwargs = {}
        if args.engine == "fast":
            kwargs = {"checkpoint": checkpoint, "resume": resume, "layers": args.layers}
        # One device: exactly `jacdc.acdc_sweep`. Several: the batch (and candidates) sharded.
        # Either way the memory estimate is printed and checked before anything runs.
        results = _sharding.sharded_acdc_sweep(
            bundle.model,
            task,
            thresholds,
            metric=metric,
            devices=args.devices,
            candidates=args.candidates or "auto",
            on_estimate=lambda e: print(f"jacdc: memory: {e}", file=sys.stderr),
            ablation=ablation,
            abs_value=args.abs_value,
            engine=args.engine,
            progress=progress,
            **kwargs,
        )
    finally:
        close()
    wall = time.perf_counter() - start
    args.ablation_obj = ablation
    return bundle, task, results, wall, ckpt_path


def _write_acdc(bundle, task, result, args, out_dir: Path, stem: str, wall: float):
    import jacdc
    from jacdc._patching import ablation_sources, metric_of_mask
    from jacdc._results import write_result

    graph = result.graph
    scores = np.full(len(graph), np.nan)
    for rec in result.log:
        if not rec["skipped"]:
            scores[rec["edge"]] = rec["delta"]
    metrics = {
        "validation": {result.metric_name: result.metric, "full_model": result.initial_metric}
    }
    if task is bundle.val and bundle.test is not task:  # the test split, every metric
        corrupted = ablation_sources(bundle.model, bundle.test, ablation=args.ablation_obj)
        mask = result.mask
        metrics["test"] = {
            name: float(metric_of_mask(bundle.model, bundle.test, mask, corrupted, name))
            for name in bundle.test.metrics
        }
    paths = write_result(
        out_dir,
        algorithm="acdc",
        task=bundle.name,
        model_config=bundle.model.cfg,
        graph=graph,
        present=result.present,
        hyperparameters={
            "threshold": result.threshold,
            "metric": result.metric_name,
            "zero_ablation": result.zero_ablation,
            "ablation": args.ablation_obj.describe(),
            "abs_value": result.abs_value,
            "engine": result.engine,
            "layers": args.layers if result.engine == "fast" else "unrolled",
            **_data_record(args),
            "task_data": bundle.info.get("data"),
            "precision": _precision_of(args),
            "tracr_positions": bundle.info.get("positions"),
        },
        metrics=metrics,
        seed=args.seed,
        scores=scores,
        steps=result.log,
        timing={
            "wall_time_s": wall,
            "n_tests": result.n_tests,
            "n_forward": result.n_forward,
            "n_device_calls": result.n_calls,
        },
        stem=stem,
    )
    del jacdc
    return paths


def _data_record(args) -> dict:
    """What a result records about its data (enough for `jacdc eval` to rebuild it)."""
    return {
        "dataset": args.dataset,
        "prompts": getattr(args, "prompts", None),
        "first_token": bool(getattr(args, "first_token", False)),
        "data_sha256": _data_sha256(args),
        "weights": args.weights,
        "builtin_task": args.task,
    }


def _default_out(args, suffix: str) -> Path:
    ablation = args.ablation or ("zero" if args.zero_ablation else "corrupted")
    metric = f"-{args.metric}" if args.metric else ""
    data = f"-{args.data}-data" if getattr(args, "data", None) not in (None, "paper") else ""
    label = args.task or Path(args.prompts or args.dataset or "custom").stem
    return Path("runs") / f"{label}-{suffix}{metric}-{ablation}{data}"


def cmd_tasks(args) -> int:
    from jacdc import tasks

    names = tasks.available_tasks()
    width = max((len(n) for n in names), default=4)
    for name in names:
        spec = tasks.get_task(name)
        weights = "  [needs --weights]" if spec.needs_weights else ""
        print(f"{name:<{width}}  {spec.description}{weights}")
        print(f"{'':<{width}}  metrics: {', '.join(spec.metrics)} (default {spec.default_metric})")
    print(
        "your own data, no TASK: jacdc discover --weights PATH --prompts FILE.csv|.jsonl "
        "(metrics logit_diff, prob_diff, logprob, kl_div) or --dataset FILE.npz|.json (kl_div)"
    )
    return 0


def cmd_discover(args) -> int:
    if args.algorithm != "acdc":
        return _discover_other(args)
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    out_dir = Path(args.out) if args.out else _default_out(args, f"acdc-tau{threshold:g}")
    bundle, task, results, wall, ckpt = _acdc_runs(args, [threshold], out_dir)
    result = results[0]
    paths = _write_acdc(bundle, task, result, args, out_dir, "result", wall)
    if ckpt.exists():
        ckpt.unlink()
    print(
        f"{bundle.name}: {result.n_edges} of {len(result.graph)} edges kept at tau={threshold:g} "
        f"({result.metric_name} {result.initial_metric:.4g} -> {result.metric:.4g}); "
        f"{result.n_tests} edges tested in {wall:.1f} s."
    )
    for name in result.present_names:
        print(f"  {name}")
    if bundle.canonical is not None and task is bundle.val:
        canonical = set(bundle.canonical)
        found = set(result.present_names)
        print(
            f"against the canonical circuit ({len(canonical)} edges): {len(found & canonical)} "
            f"found, {len(found - canonical)} extra, {len(canonical - found)} missing"
        )
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_sweep(args) -> int:
    from jacdc._results import atomic_write_json

    if args.paper_thresholds:
        thresholds = paper_thresholds()
    else:
        thresholds = args.thresholds
    out_dir = Path(args.out) if args.out else _default_out(args, "acdc-sweep")
    bundle, task, results, wall, ckpt = _acdc_runs(args, thresholds, out_dir)
    summary = []
    for r in results:
        stem = f"tau{r.threshold:.3e}"
        _write_acdc(bundle, task, r, args, out_dir, stem, wall)
        summary.append(
            {
                "threshold": r.threshold,
                "n_edges": r.n_edges,
                "metric": r.metric,
                "n_tests": r.n_tests,
                "result": f"{stem}.json",
            }
        )
        print(f"tau={r.threshold!r}: {r.n_edges} edges, {r.metric_name} {r.metric:.4g}")
    atomic_write_json(
        out_dir / "sweep.json", {"task": bundle.name, "wall_time_s": wall, "runs": summary}
    )
    if ckpt.exists():
        ckpt.unlink()
    print(f"{len(results)} thresholds in {wall:.1f} s; wrote {out_dir}/sweep.json")
    return 0


def paper_thresholds() -> list[float]:
    """The paper's tracr grid 10^linspace(-5, -1, 21), each value rounded to 12 significant
    digits so that it is the decimal it prints as (1e-05, not 9.999999999999999e-06)."""
    return [float(f"{t:.12g}") for t in 10.0 ** np.linspace(-5, -1, 21)]


def _discover_other(args) -> int:
    """SP, HISP, EAP, EAP-IG and edge pruning: one circuit each, same result files as ACDC."""
    import jax.random as jr

    import jacdc
    from jacdc import _sharding
    from jacdc._results import write_result

    bundle = _load_bundle(args)
    task = _task_of(args, bundle)
    ablation = _ablation_of(args, bundle.model)
    metric = args.metric or bundle.default_metric
    if metric not in task.metrics:
        raise CLIError(f"Unknown metric {metric!r}; available: {', '.join(sorted(task.metrics))}.")
    args.metric = metric
    out_dir = Path(args.out) if args.out else _default_out(args, args.algorithm)
    graph = jacdc.graph_of(bundle.model.graph_shape)
    key = jr.key(args.seed)
    scores = None
    hyper = {
        "metric": metric,
        "zero_ablation": ablation.kind == "zero",
        "ablation": ablation.describe(),
        **_data_record(args),
        "task_data": bundle.info.get("data"),
        "precision": _precision_of(args),
        "tracr_positions": bundle.info.get("positions"),
    }
    start = time.perf_counter()
    show = lambda e: print(f"jacdc: memory: {e}", file=sys.stderr)  # noqa: E731
    if args.algorithm == "sp":
        # = jacdc.subnetwork_probing(..., key=key) on one device; sharded on several
        (run,) = _sharding.sharded_sp_sweep(
            bundle.model,
            task,
            [args.lam],
            key=key,
            lane_keys=key[None],
            metric=metric,
            devices=args.devices,
            ablation=ablation,
            n_steps=args.steps,
            on_estimate=show,
        )
        present = run.present
        hyper.update(lam=args.lam, steps=args.steps)
    elif args.algorithm == "edge-pruning":
        run = jacdc.edge_pruning(
            bundle.model,
            task,
            args.lam,
            key=key,
            metric=metric,
            ablation=ablation,
            n_steps=args.steps,
        )
        present, scores = run.present, run.scores
        hyper.update(lam=args.lam, steps=args.steps)
    elif args.algorithm == "hisp":
        run = jacdc.hisp(bundle.model, task, metric=metric, ablation=ablation)
        n_units = len(run.units)
        keep = args.top_k if args.top_k is not None else max(1, n_units // 4)
        if not 0 <= keep <= n_units:
            raise CLIError(f"--top-k must lie in [0, {n_units}] (HISP units), got {keep}.")
        present = run.circuits[n_units - keep]
        hyper.update(units_kept=keep)
    else:
        scores = _sharding.sharded_eap_scores(
            bundle.model,
            task,
            metric=metric,
            devices=args.devices,
            steps=None if args.algorithm == "eap" else 5,
            ablation=ablation,
            on_estimate=show,
        )
        if args.threshold is not None:
            present = jacdc.circuit_from_scores(scores, threshold=args.threshold)
            hyper.update(threshold=args.threshold)
        else:
            k = args.top_k if args.top_k is not None else max(1, len(graph) // 20)
            present = jacdc.circuit_from_scores(scores, top_k=k)
            hyper.update(top_k=k)
    wall = time.perf_counter() - start
    corrupted = jacdc.ablation_sources(bundle.model, task, ablation=ablation)
    mask = graph.from_vector(np.asarray(present, np.float32))
    metrics = {
        "validation": {
            metric: float(jacdc.metric_of_mask(bundle.model, task, mask, corrupted, metric))
        }
    }
    if task is bundle.val and bundle.test is not task:
        test_src = jacdc.ablation_sources(bundle.model, bundle.test, ablation=ablation)
        metrics["test"] = {
            name: float(jacdc.metric_of_mask(bundle.model, bundle.test, mask, test_src, name))
            for name in bundle.test.metrics
        }
    paths = write_result(
        out_dir,
        algorithm=args.algorithm,
        task=bundle.name,
        model_config=bundle.model.cfg,
        graph=graph,
        present=present,
        hyperparameters=hyper,
        metrics=metrics,
        seed=args.seed,
        scores=scores,
        timing={"wall_time_s": wall},
    )
    print(
        f"{bundle.name}: {args.algorithm} kept {int(np.sum(present))} of {len(graph)} edges "
        f"({metric} {metrics['validation'][metric]:.4g}) in {wall:.1f} s."
    )
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_roc(args) -> int:
    from jacdc import _roc_report

    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown or not algorithms:
        raise CLIError(
            f"Unknown algorithm(s) {unknown or args.algorithms!r}; choose from "
            f"{', '.join(ALGORITHMS)}."
        )
    bundle = _load_bundle(args)
    out_dir = (
        Path(args.out)
        if args.out
        else Path("runs") / f"{args.task}-roc-" + ("zero" if args.zero_ablation else "corrupted")
    )
    report = _roc_report.roc_report(
        bundle,
        algorithms,
        zero_ablation=args.zero_ablation,
        metric=args.metric,
        out_dir=out_dir,
        precision=args.precision,
    )
    md = report.get("files", {}).get("md")
    if md and Path(md).exists():
        print(Path(md).read_text())
        print(f"wrote {', '.join(str(p) for p in report['files'].values())}")
    else:
        print(json.dumps(report, indent=1, default=str))
    return 0


def _precision_of(args) -> str:
    from jacdc._precision import resolve

    return resolve(getattr(args, "precision", None))


def cmd_paper(args) -> int:
    from jacdc import _paper
    from jacdc.models import value_bias_folding

    weights = {}
    for item in args.weights:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise CLIError(f"--weights takes TASK=PATH (e.g. ioi=/models/gpt2), got {item!r}.")
        weights[task] = path
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    if args.sp_steps < 1:
        raise CLIError(f"--sp-steps must be at least 1, got {args.sp_steps}.")
    with value_bias_folding(not args.no_fold_value_biases):
        report = _paper.paper_report(
            args.tasks or None,
            out_dir=args.out,
            weights=weights,
            algorithms=algorithms,
            sp_steps=args.sp_steps,
            seed=args.seed,
            precision=args.precision,
            log=lambda line: print(f"jacdc: {line}", file=sys.stderr),
        )
    print(Path(report["files"]["md"]).read_text())
    print(f"wrote {report['files']['md']}, {report['files']['json']} and the ROC reports")
    return 0


def cmd_draw(args) -> int:
    import shutil
    import subprocess

    import jacdc
    from jacdc._results import atomic_write_bytes, circuit_dot, read_result

    doc = read_result(args.result)
    shape = jacdc.GraphShape(**doc["graph"])
    graph = jacdc.graph_of(shape)
    present = np.zeros(len(graph), bool)
    for e in doc["edges"]:
        present[e["id"]] = e["present"]
    dot = circuit_dot(graph, present, f"{doc['task']} {doc['algorithm']}")
    stem = Path(args.result).with_suffix("")
    if args.format == "dot" or not shutil.which("dot"):
        atomic_write_bytes(f"{stem}.dot", dot.encode())
        if args.format != "dot":
            print("jacdc: Graphviz `dot` not found; wrote DOT only", file=sys.stderr)
        print(f"wrote {stem}.dot")
        return 0
    out = subprocess.run(["dot", f"-T{args.format}"], input=dot.encode(), capture_output=True)
    if out.returncode != 0:
        raise CLIError(f"Graphviz failed: {out.stderr.decode().strip()}")
    atomic_write_bytes(f"{stem}.{args.format}", out.stdout)
    print(f"wrote {stem}.{args.format}")
    return 0


def cmd_cache(args) -> int:
    from jacdc import _cache

    parts = (args.part,) if args.part else _cache.PARTS
    if args.action == "clear":
        removed = _cache.clear_cache(parts)
        for part, n in removed.items():
            print(f"{part}: removed {n} files from {_cache.cache_dir() / part}")
        return 0
    info = _cache.cache_info()
    state = "off (JACDC_NO_CACHE)" if info["disabled"] else "on"
    print(f"jacdc cache: {info['dir']} ({state})")
    for part in parts:
        d = info["parts"][part]
        print(f"  {part}: {d['files']} files, {d['bytes'] / 2**20:.1f} MiB in {d['path']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--no-cache" in argv:  # a top-level option, also accepted after the command
        argv = ["--no-cache"] + [a for a in argv if a != "--no-cache"]
    parser = _parser()
    args = parser.parse_args(argv)
    if args.no_cache:
        from jacdc import _cache

        _cache.disable_caches()
    commands = {
        "tasks": cmd_tasks,
        "discover": cmd_discover,
        "sweep": cmd_sweep,
        "roc": cmd_roc,
        "draw": cmd_draw,
        "cache": cmd_cache,
        "eval": cmd_eval,
        "compare": cmd_compare,
        "paper": cmd_paper,
    }
    try:
        from jacdc._precision import matmul_precision

        with matmul_precision(getattr(args, "precision", None)):
            return commands[args.command](args)
    except KeyboardInterrupt:
        print(
            "jacdc: interrupted; rerun the same command to resume from the checkpoint",
            file=sys.stderr,
        )
        return 130
    except (CLIError, ValueError, FileNotFoundError, ImportError, OSError) as e:
        message = " ".join(str(e).split())
        print(f"jacdc: error: {message}", file=sys.stderr)
        return 2


def cmd_eval(args) -> int:
    from jacdc import _eval

    report = _eval.eval_command(args)
    print(_eval.format_report(report))
    return 0


def cmd_compare(args) -> int:
    from jacdc import _compare

    report = _compare.compare_command(args)
    print(_compare.format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
