"""The `jacdc` command line.

    jacdc tasks
    jacdc discover TASK [--algorithm acdc] [--threshold T] [--zero-ablation] [--metric NAME]
                        [--out DIR] [--weights PATH] [--dataset FILE] [--engine fast|reference]
                        [--data paper|jacdc] [--data-dir DIR]
    jacdc sweep TASK --thresholds T [T ...] | --paper-thresholds  [same options]
    jacdc roc TASK --algorithms acdc,sp,hisp,eap,eap-ig,edge-pruning [--zero-ablation]
    jacdc draw RESULT.json
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
ALGORITHMS = ("acdc", "sp", "hisp", "eap", "eap-ig", "edge-pruning")


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jacdc", description="Automated circuit discovery for transformers, in JAX."
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
        sp.add_argument("task", help="task name (see `jacdc tasks`)")
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

    d = sub.add_parser("discover", help="find a circuit")
    common(d)
    data_options(d)
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
    data_options(s)
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
    return p


def _load_bundle(args):
    from jacdc import tasks

    spec = tasks.get_task(args.task)
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
    dataset_hash = None
    if args.dataset:
        path = Path(args.dataset)
        if path.exists():
            dataset_hash = hashlib.sha256(path.read_bytes()).hexdigest()
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
        "precision": _precision_of(args),
        "positions": args.positions,
        "fold_value_biases": not args.no_fold_value_biases,
    }


def _acdc_runs(args, thresholds, out_dir: Path):
    """Runs ACDC at `thresholds`, resuming from `out_dir/checkpoint.json` when it matches."""
    import jacdc
    import jacdc._acdc
    from jacdc._dataset import task_from_dataset
    from jacdc._results import atomic_write_json

    jacdc._acdc.check_thresholds(thresholds)
    bundle = _load_bundle(args)
    task = task_from_dataset(args.dataset, bundle) if args.dataset else bundle.val
    metric = args.metric or bundle.default_metric
    if metric not in task.metrics:
        raise CLIError(
            f"Unknown metric {metric!r} for task {args.task!r}; available: "
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
    progress, close = _progress_bar(not args.no_progress, total, f"ACDC {args.task}")
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
            zero_ablation=args.zero_ablation,
            abs_value=args.abs_value,
            engine=args.engine,
            progress=progress,
            **kwargs,
        )
    finally:
        close()
    wall = time.perf_counter() - start
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
    if not args.dataset:  # the test split, with every metric of the task
        corrupted = ablation_sources(bundle.model, bundle.test, args.zero_ablation)
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
            "abs_value": result.abs_value,
            "engine": result.engine,
            "layers": args.layers if result.engine == "fast" else "unrolled",
            "dataset": args.dataset,
            "weights": args.weights,
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


def _default_out(args, suffix: str) -> Path:
    ablation = "zero" if args.zero_ablation else "corrupted"
    metric = f"-{args.metric}" if args.metric else ""
    data = f"-{args.data}-data" if getattr(args, "data", None) not in (None, "paper") else ""
    return Path("runs") / f"{args.task}-{suffix}{metric}-{ablation}{data}"


def cmd_tasks(args) -> int:
    from jacdc import tasks

    names = tasks.available_tasks()
    width = max((len(n) for n in names), default=4)
    for name in names:
        spec = tasks.get_task(name)
        weights = "  [needs --weights]" if spec.needs_weights else ""
        print(f"{name:<{width}}  {spec.description}{weights}")
        print(f"{'':<{width}}  metrics: {', '.join(spec.metrics)} (default {spec.default_metric})")
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
    if bundle.canonical is not None and not args.dataset:
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
        thresholds = [float(t) for t in 10.0 ** np.linspace(-5, -1, 21)]
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
        print(f"tau={r.threshold:.3e}: {r.n_edges} edges, {r.metric_name} {r.metric:.4g}")
    atomic_write_json(
        out_dir / "sweep.json", {"task": bundle.name, "wall_time_s": wall, "runs": summary}
    )
    if ckpt.exists():
        ckpt.unlink()
    print(f"{len(results)} thresholds in {wall:.1f} s; wrote {out_dir}/sweep.json")
    return 0


def _discover_other(args) -> int:
    """SP, HISP, EAP, EAP-IG and edge pruning: one circuit each, same result files as ACDC."""
    import jax.random as jr

    import jacdc
    from jacdc import _sharding
    from jacdc._dataset import task_from_dataset
    from jacdc._results import write_result

    bundle = _load_bundle(args)
    task = task_from_dataset(args.dataset, bundle) if args.dataset else bundle.val
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
        "zero_ablation": args.zero_ablation,
        "dataset": args.dataset,
        "weights": args.weights,
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
            zero_ablation=args.zero_ablation,
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
            zero_ablation=args.zero_ablation,
            n_steps=args.steps,
        )
        present, scores = run.present, run.scores
        hyper.update(lam=args.lam, steps=args.steps)
    elif args.algorithm == "hisp":
        run = jacdc.hisp(bundle.model, task, metric=metric)
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
            zero_ablation=args.zero_ablation,
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
    corrupted = jacdc.ablation_sources(bundle.model, task, args.zero_ablation)
    mask = graph.from_vector(np.asarray(present, np.float32))
    metrics = {
        "validation": {
            metric: float(jacdc.metric_of_mask(bundle.model, task, mask, corrupted, metric))
        }
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


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    commands = {
        "tasks": cmd_tasks,
        "discover": cmd_discover,
        "sweep": cmd_sweep,
        "roc": cmd_roc,
        "draw": cmd_draw,
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


if __name__ == "__main__":
    sys.exit(main())
