"""The `jacdc` command line.

    jacdc [--version]
    jacdc tasks
    jacdc discover [TASK] [--algorithm acdc|sp|hisp|eap|eap-ig|edge-pruning] [--threshold T]
                        [--lambda L] [--steps N] [--top-k K] [--zero-ablation] [--metric NAME]
                        [--out DIR] [--overwrite] [--fresh] [--weights PATH|random|random-small]
                        [--dataset FILE] [--n-val N] [--n-test N] [--seq-len N]
                        [--engine fast|reference]
    jacdc sweep TASK --thresholds T [T ...] | --paper-thresholds  [same options]
    jacdc roc TASK --algorithms acdc,sp,hisp,eap,eap-ig,edge-pruning [--zero-ablation]
    jacdc draw RESULT.json
    jacdc cache info|clear
    jacdc eval RESULT.json [--prompts FILE | --dataset FILE] [--weights PATH]
    jacdc compare A.json B.json [...] [--out DIR]
    jacdc paper [TASK ...] [--weights TASK=PATH ...] [--algorithms acdc,sp,hisp] [--out DIR]

Without a TASK, `--weights PATH` with `--prompts FILE` (text) or `--dataset FILE` (token ids)
runs on any checkpoint `jacdc.models.load_pretrained` reads. Every command that computes takes
`--precision` (matmul precision, default highest) and `--no-fold-value-biases` (load the raw
weights; default: TransformerLens's value-bias folding, as the paper); tracr tasks take
`--positions none|shuffled`; discover and sweep take `--ablation corrupted|zero|mean|...`.

Bad input ends with a one-line `jacdc: error: ...` on stderr and exit code 2, never a traceback,
and nothing is overwritten. Every run locks its output folder (a second run into the same folder
stops with an error), refuses a folder that holds a finished run with other settings (unless
`--overwrite`), and resumes from its checkpoint when rerun (see `jacdc/_runs.py`).
"""

import argparse
import contextlib
import difflib
import hashlib
import inspect
import math
import sys
import time
from pathlib import Path

import numpy as np

from jacdc._runs import ACDC_CHECKPOINT, clear_outputs


DEFAULT_THRESHOLD = 0.01
ABLATIONS = ("corrupted", "zero", "mean", "mean-positions")
ALGORITHMS = ("acdc", "sp", "hisp", "eap", "eap-ig", "edge-pruning")


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


# What the interrupt handler says: set by each command (does a rerun resume?).
_INTERRUPT_NOTE = {"text": "interrupted"}


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("jacdc")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _model_options(sp):
    """Precision and weight processing (every command that computes)."""
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


def _data_options(sp):
    """Which data a task uses, or the user's own prompts."""
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


def _add_run_options(sp, *, task_optional: bool = False):
    """Options every computing command shares (discover, sweep, roc)."""
    if task_optional:
        sp.add_argument(
            "task",
            nargs="?",
            default=None,
            help="task name (see `jacdc tasks`); omit it to run on --weights with --prompts or "
            "--dataset",
        )
    else:
        sp.add_argument("task", help="task name (see `jacdc tasks`)")
    _model_options(sp)
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
    sp.add_argument(
        "--out",
        help="output folder (default: runs/<task>-<algorithm>-<settings>-<settings hash>)",
    )
    sp.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a finished run with other settings in --out (refused otherwise)",
    )
    sp.add_argument(
        "--weights",
        help="model weights: a folder, file or hub id; `random` (the real architecture, "
        "random weights) or `random-small` (a small model of the same kind) for trying the "
        "pipeline",
    )
    sp.add_argument("--seed", type=int, default=0, help="data seed")
    sp.add_argument(
        "--n-val",
        "--batch-size",
        dest="n_val",
        type=int,
        default=None,
        help="validation split size, i.e. the batch every algorithm evaluates at once "
        "(default: the task's)",
    )
    sp.add_argument(
        "--n-test", type=int, default=None, help="test split size (default: the task's)"
    )
    sp.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="sequence length of generated sequences (induction; default: the task's)",
    )
    sp.add_argument(
        "--fresh",
        action="store_true",
        help="ignore a checkpoint in the output folder and start over",
    )
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(
        prog="jacdc",
        description="Automated circuit discovery for transformers, in JAX.",
        formatter_class=fmt,
    )
    p.add_argument("--version", action="version", version=f"jacdc {_version()}")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="neither read nor write jacdc's caches (compiled tracr models, JAX's compilation "
        "cache); also JACDC_NO_CACHE=1. May also follow the command",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("tasks", help="list the tasks", formatter_class=fmt)

    def common(sp):
        _add_run_options(sp, task_optional=True)
        _data_options(sp)
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
        sp.add_argument(
            "--dataset",
            help="your own clean/corrupted tokens (.npz or .json; "
            "keys clean, corrupted, optional corrupted_positions, logit_positions, "
            "weights)",
        )
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
            "--checkpoint-every",
            type=int,
            default=100,
            help="sp / edge-pruning: training steps between checkpoints (and progress updates)",
        )
        sp.add_argument(
            "--devices",
            type=int,
            default=None,
            help="ACDC, SP, EAP, EAP-IG: devices to shard over (default: all that JAX sees); "
            "the batch is split over them and the rest split ACDC's candidates or SP's "
            "lambdas (docs/scale.md)",
        )

    d = sub.add_parser("discover", help="find a circuit", formatter_class=fmt)
    common(d)
    d.add_argument("--algorithm", choices=ALGORITHMS, default="acdc")
    d.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"ACDC threshold tau (default {DEFAULT_THRESHOLD}); eap/eap-ig: keep "
        "edges whose |score| is above it (default: top-k)",
    )
    d.add_argument(
        "--lambda",
        dest="lam",
        type=float,
        default=1.0,
        help="sp / edge-pruning: sparsity strength",
    )
    d.add_argument(
        "--steps",
        type=int,
        default=3000,
        help="sp / edge-pruning: optimisation steps",
    )
    d.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="eap / eap-ig: keep the k highest-|score| edges; hisp: keep the k "
        "highest-scoring units (default: 5%% of edges / 25%% of units)",
    )
    d.add_argument(
        "--ig-steps",
        type=int,
        default=5,
        help="eap-ig: points of the integrated gradient",
    )
    s = sub.add_parser(
        "sweep", help="ACDC at several thresholds (one lock-step batch)", formatter_class=fmt
    )
    common(s)
    group = s.add_mutually_exclusive_group(required=True)
    group.add_argument("--thresholds", type=float, nargs="+")
    group.add_argument(
        "--paper-thresholds",
        action="store_true",
        help="10^linspace(-5, -1, 21), the paper's tracr grid",
    )
    r = sub.add_parser(
        "roc", help="ROC/AUC of algorithms against the canonical circuit", formatter_class=fmt
    )
    _add_run_options(r)
    r.add_argument("--data", choices=("paper", "jacdc"), help="as for discover")
    r.add_argument("--data-dir", help="as for discover")
    r.add_argument(
        "--algorithms", default="acdc,sp,hisp", help="comma-separated: " + ",".join(ALGORITHMS)
    )
    r.add_argument("--sp-steps", type=int, default=10_000, help="SP training steps per lambda")
    r.add_argument(
        "--edge-pruning-steps", type=int, default=2_000, help="edge-pruning training steps"
    )
    dr = sub.add_parser(
        "draw",
        help="render a result's circuit (DOT, and SVG/PNG with Graphviz)",
        formatter_class=fmt,
    )
    dr.add_argument("result", help="a result .json")
    dr.add_argument("--format", choices=("svg", "png", "dot"), default="svg")
    pp = sub.add_parser(
        "paper", help="the paper's sweeps and its Tables 2 and 3, with ours", formatter_class=fmt
    )
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
    _model_options(pp)
    c = sub.add_parser(
        "cache", help="show or clear jacdc's on-disk caches (JACDC_CACHE_DIR)", formatter_class=fmt
    )
    c.add_argument("action", choices=("info", "clear"))
    c.add_argument("--part", choices=("xla", "tracr"), help="only this part (default: both)")
    ev = sub.add_parser("eval", help="re-score a saved circuit (on new data)", formatter_class=fmt)
    ev.add_argument("result", help="a result .json")
    ev.add_argument("--weights", help="model weights (default: those the result records)")
    ev.add_argument("--dataset", help="token data (.npz/.json) to score on")
    _data_options(ev)
    ev.add_argument("--metric", help="metric (default: the result's)")
    ev.add_argument("--ablation", choices=ABLATIONS, default=None, help="default: the result's")
    ev.add_argument("--mean-reference", help="mean ablation: reference prompts or tokens")
    ev.add_argument("--split", choices=("all", "val", "test"), default=None,
                    help="rows of --prompts to score: all (default for a new file), or the "
                    "seeded val/test split; the result's own data: val, the split it was found "
                    "on")  # fmt: skip
    ev.add_argument("--seed", type=int, default=None, help="data seed (default: the result's)")
    ev.add_argument("--out", help="write the scores as JSON here (default: print only)")
    cp = sub.add_parser(
        "compare", help="overlap of circuits, and one faithfulness plot", formatter_class=fmt
    )
    cp.add_argument("results", nargs="+", help="two or more result .json files")
    cp.add_argument("--out", help="folder for compare.json and faithfulness.png/.svg")
    cp.add_argument("--no-plot", action="store_true", help="skip the faithfulness plot")
    return p


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def _spec(args):
    """The task's registry entry, with a "did you mean" for a mistyped name."""
    from jacdc import tasks

    if args.task is None:
        return None  # --weights with --prompts / --dataset, no built-in task
    names = tasks.available_tasks()
    if args.task not in names:
        raise CLIError(
            f"Unknown task {args.task!r}.{_did_you_mean(args.task, names)} Available tasks: "
            f"{', '.join(names)} (`jacdc tasks` describes them)."
        )
    return tasks.get_task(args.task)


def _check_metric(name: str, available, task: str) -> None:
    if name not in available:
        raise CLIError(
            f"Unknown metric {name!r} for task {task!r}.{_did_you_mean(name, available)} "
            f"Available: {', '.join(sorted(available))}."
        )


def _positive_int(value, option: str, *, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise CLIError(f"{option} must be an integer >= {minimum}, got {value}.")


def _finite_number(value, option: str, *, positive: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "> 0" if positive else ">= 0"
        raise CLIError(f"{option} must be a finite number {need}, got {value}.")


def _build_options(spec, args) -> dict:
    """The task builder's keyword options from --n-val/--n-test/--seq-len (refused for a task
    whose builder has no such option)."""
    wanted = {"n_val": args.n_val, "n_test": args.n_test, "seq_len": args.seq_len}
    params = inspect.signature(spec.build).parameters
    options = {}
    for key, value in wanted.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        _positive_int(value, flag, minimum=2 if key == "seq_len" else 1)
        if key not in params:
            raise CLIError(f"{flag} does not apply to task {spec.name!r} (its data are fixed).")
        options[key] = value
    return options


def _folding(args):
    from jacdc.models import value_bias_folding

    return value_bias_folding(not getattr(args, "no_fold_value_biases", False))


def _load_bundle(args):
    bundle = _build_bundle(args)
    _check_model_finite(bundle.model)
    return bundle


def _build_bundle(args):
    from jacdc import tasks

    if args.task is None or getattr(args, "prompts", None):
        return _custom_bundle(args)
    spec = _spec(args)
    weights = getattr(args, "weights", None)
    if getattr(args, "dataset", None) and weights and weights not in ("random", "random-small"):
        # The user's data replaces the task's: load the model only, never build the task's own
        # data (which may not even fit the model, e.g. induction's 300 tokens on n_ctx 16).
        from jacdc.models import load_pretrained

        with _folding(args):
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
    if spec.needs_weights and not weights:
        raise CLIError(
            f"Task {args.task!r} needs model weights: pass --weights PATH (a local checkpoint "
            "folder/file) or a hub id when online; `--weights random` gives a random-weight "
            "model for trying the pipeline."
        )
    options = {"weights": weights, "seed": args.seed, **_build_options(spec, args)}
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
    with _folding(args):
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
    with _folding(args):
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


def _ablation_of(args, model):
    """The `jacdc.Ablation` of `--ablation` / `--zero-ablation` / `--mean-reference`."""
    from jacdc._eval import make_ablation

    ablation = getattr(args, "ablation", None)
    if ablation and args.zero_ablation and ablation != "zero":
        raise CLIError(f"--zero-ablation contradicts --ablation {ablation}; pass one.")
    kind = ablation or ("zero" if args.zero_ablation else "corrupted")
    return make_ablation(kind, getattr(args, "mean_reference", None), model, args.weights)


def _ablation_name(args) -> str:
    return getattr(args, "ablation", None) or ("zero" if args.zero_ablation else "corrupted")


def _data_sha256(args) -> str | None:
    for name in ("prompts", "dataset"):
        value = getattr(args, name, None)
        if value and Path(value).exists():
            return hashlib.sha256(Path(value).read_bytes()).hexdigest()
    return None


def _data_record(args) -> dict:
    """What a result records about its data (enough for `jacdc eval` to rebuild it)."""
    return {
        "dataset": getattr(args, "dataset", None),
        "prompts": getattr(args, "prompts", None),
        "first_token": bool(getattr(args, "first_token", False)),
        "data_sha256": _data_sha256(args),
        "weights": args.weights,
        "builtin_task": args.task,
    }


def _precision_of(args) -> str:
    from jacdc._precision import resolve

    return resolve(getattr(args, "precision", None))


def _check_model_finite(model) -> None:
    """Every algorithm's results are meaningless on non-finite weights: refuse them here."""
    import equinox as eqx
    import jax

    leaves = jax.tree_util.tree_leaves_with_path(eqx.filter(model, eqx.is_inexact_array))
    for path, leaf in leaves:
        if not bool(np.all(np.isfinite(np.asarray(leaf)))):
            where = jax.tree_util.keystr(path)
            raise CLIError(
                f"The model's weights hold NaN or infinite values (in {where}); check the "
                "checkpoint (--weights)."
            )


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


def _step_bar(enabled: bool, total: int, desc: str):
    """Progress of a training run: `update(step, loss)` (SP, edge pruning)."""
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bars = []

    def update(step: int, loss: float):
        if not bars:
            bars.append(
                tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)
            )
        bars[0].n = min(step, total)
        bars[0].set_postfix(loss=f"{loss:.4g}", refresh=False)
        bars[0].refresh()

    def close():
        for bar in bars:
            bar.close()

    return update, close


# ---- settings, folders ---------------------------------------------------------------------


def _settings(args, **extra) -> dict:
    """Every setting that changes the result of this run (hashed into its folder name, its
    result files and its checkpoints)."""
    from jacdc._runs import file_sha256

    dataset = getattr(args, "dataset", None)
    sha = file_sha256(dataset) if dataset and Path(dataset).is_file() else None
    prompts = getattr(args, "prompts", None)
    reference = getattr(args, "mean_reference", None)
    settings = {
        "command": args.command,
        "task": args.task,
        "weights": args.weights,
        "seed": args.seed,
        "zero_ablation": args.zero_ablation,
        "dataset_sha256": sha,
        "n_val": args.n_val,
        "n_test": args.n_test,
        "seq_len": args.seq_len,
        "prompts_sha256": file_sha256(prompts) if prompts and Path(prompts).is_file() else None,
        "first_token": bool(getattr(args, "first_token", False)),
        "ablation": _ablation_name(args),
        "mean_reference_sha256": (
            file_sha256(reference) if reference and Path(reference).is_file() else None
        ),
        "data": getattr(args, "data", None),
        "data_dir": getattr(args, "data_dir", None),
        "positions": getattr(args, "positions", None),
        "precision": _precision_of(args),
        "fold_value_biases": not getattr(args, "no_fold_value_biases", False),
    }
    settings.update(extra)
    return settings


def _out_dir(args, settings: dict, parts: list[str]) -> tuple[Path, str]:
    """The output folder (`--out`, or a default named by the settings) and the settings hash."""
    from jacdc._runs import default_folder, settings_hash

    run_hash = settings_hash(settings)
    if args.out:
        return Path(args.out), run_hash
    ablation = _ablation_name(args)
    weights = Path(args.weights).name if args.weights else ""
    label = args.task or Path(getattr(args, "prompts", None) or args.dataset or "custom").stem
    data = getattr(args, "data", None)
    data = f"{data}-data" if data not in (None, "paper") else ""
    return default_folder([label, *parts, ablation, weights, data], run_hash), run_hash


@contextlib.contextmanager
def _run_folder(out_dir: Path, run_hash: str, args):
    """Locks `out_dir` for this run and refuses/cleans earlier runs there (`jacdc._runs`). A
    run that fails before writing anything leaves no trace (no folder it created, no lock)."""
    from jacdc._runs import LOCK_NAME, RunLock, guard_folder

    existed = out_dir.exists()
    lock_existed = (out_dir / LOCK_NAME).exists()
    with RunLock(out_dir) as lock:
        done = False
        try:
            guard_folder(out_dir, run_hash, overwrite=args.overwrite, fresh=args.fresh)
            yield
            done = True
        finally:
            if not done:
                left = [p for p in out_dir.iterdir() if p.name != LOCK_NAME]
                if not left and not lock_existed:
                    lock.path.unlink(missing_ok=True)
                    if not existed:
                        out_dir.rmdir()


def _dataset_task(args, bundle):
    """The split discovery runs on: the user's token data or the bundle's validation split."""
    from jacdc._dataset import task_from_dataset

    if args.dataset and not bundle.info.get("user_data"):
        return task_from_dataset(args.dataset, bundle)
    return bundle.val


def _result_metrics(bundle, task, present, args, graph, ablation) -> dict:
    """The same metrics block for every algorithm: the circuit's value of every metric of the
    task on the validation split (the data it was found on) and, without --dataset, on the
    test split; the full model's values beside them. Non-finite values are errors."""
    import jax
    import jax.numpy as jnp

    import jacdc

    mask = graph.from_vector(np.asarray(present, np.float32))
    splits = {"validation": task}
    if task is bundle.val and bundle.test is not task:
        splits["test"] = bundle.test
    out: dict = {}
    full = jacdc.EdgeMask.full(bundle.model.graph_shape)
    # The circuit and the full model, every metric, in one call per split.
    both = jax.tree.map(lambda c, f: jnp.stack([jnp.asarray(c, f.dtype), f]), mask, full)
    for split, data in splits.items():
        corrupted = jacdc.ablation_sources(bundle.model, data, ablation=ablation)
        out[split] = {}
        out.setdefault("full_model", {})[split] = {}
        values = jacdc.metrics_of_masks(bundle.model, data, both, corrupted)
        for name in sorted(data.metrics):
            value, base = (float(v) for v in np.asarray(values[name], np.float64))
            for v, what in ((value, "the circuit"), (base, "the full model")):
                if not math.isfinite(v):
                    raise CLIError(
                        f"The {split} {name} of {what} is {v}: the model or data produce "
                        "non-finite values; check the weights and the dataset."
                    )
            out[split][name] = value
            out["full_model"][split][name] = base
    if "test" not in out:
        out["test"] = None
        out["full_model"]["test"] = None
    return out


def _write(out_dir: Path, args, bundle, task, graph, present, *, algorithm, hyper, settings,
           run_hash, ablation, scores=None, score_kind=None, steps=None, timing=None,
           stem="result", extra=None):  # fmt: skip
    from jacdc._results import write_result

    hyper = dict(hyper)
    hyper.setdefault("ablation", ablation.describe())
    for key, value in _data_record(args).items():
        hyper.setdefault(key, value)
    hyper.setdefault("task_data", bundle.info.get("data"))
    hyper.setdefault("precision", _precision_of(args))
    hyper.setdefault("tracr_positions", bundle.info.get("positions"))
    hyper.setdefault("dataset", args.dataset)
    hyper.setdefault("dataset_sha256", settings.get("dataset_sha256"))
    hyper.setdefault("weights", args.weights)
    hyper.setdefault("n_val", task.batch)
    hyper.setdefault("n_test", None if args.dataset else bundle.test.batch)
    return write_result(
        out_dir,
        algorithm=algorithm,
        task=bundle.name,
        model_config=bundle.model.cfg,
        graph=graph,
        present=present,
        hyperparameters=hyper,
        metrics=_result_metrics(bundle, task, present, args, graph, ablation),
        seed=args.seed,
        scores=scores,
        steps=steps,
        timing=timing,
        stem=stem,
        extra=dict(
            extra or {},
            settings=settings,
            settings_sha256=run_hash,
            score_kind=score_kind,
            dataset={"path": args.dataset, "sha256": settings.get("dataset_sha256")},
        ),
    )


# ---- ACDC ---------------------------------------------------------------------------------


def _acdc_settings(args, thresholds, spec) -> dict:
    return _settings(
        args,
        algorithm="acdc",
        thresholds=[float(t) for t in thresholds],
        metric=args.metric or (spec.default_metric if spec is not None else "kl_div"),
        abs_value=args.abs_value,
        engine=args.engine,
        layers=args.layers if args.engine == "fast" else "unrolled",
    )


def _acdc_runs(args, thresholds, out_dir: Path, run_hash: str):
    """Runs ACDC at `thresholds`, resuming from `out_dir/checkpoint.jsonl` when it holds this
    run's settings (and validates)."""
    import jacdc
    from jacdc._runs import AcdcCheckpoint

    bundle = _load_bundle(args)
    task = _dataset_task(args, bundle)
    ablation = _ablation_of(args, bundle.model)
    metric = args.metric or bundle.default_metric
    _check_metric(metric, task.metrics, bundle.name)
    args.metric = metric
    ckpt = None
    resume = None
    if args.engine == "fast":
        ckpt = AcdcCheckpoint(
            out_dir / ACDC_CHECKPOINT,
            run_hash,
            bundle.model.graph_shape,
            thresholds,
            abs_value=args.abs_value,
        )
        if args.fresh:
            ckpt.remove()
        resume = ckpt.load()
        if resume is not None:
            print(f"jacdc: resuming from {ckpt.path} (node {resume['next_node']})", file=sys.stderr)
        else:
            ckpt.remove()  # a header-only log; the first finished node writes a new one
        _INTERRUPT_NOTE["text"] = (
            "interrupted; rerun the same command to resume from the checkpoint "
            f"({ckpt.path.name} in {out_dir})"
        )
    else:
        _INTERRUPT_NOTE["text"] = (
            "interrupted; the reference engine keeps no checkpoint, so rerunning starts over "
            "(the fast engine, the default, resumes)"
        )

    total = len(jacdc.graph_of(bundle.model.graph_shape)) * len(thresholds)
    progress, close = _progress_bar(not args.no_progress, total, f"ACDC {bundle.name}")
    start = time.perf_counter()
    try:
        from jacdc import _sharding

        kwargs = {}
        if args.engine == "fast":
            kwargs = {"checkpoint": ckpt, "resume": resume, "layers": args.layers}
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
    return bundle, task, results, wall, ckpt, ablation


def _write_acdc(bundle, task, result, args, out_dir: Path, stem: str, wall: float, settings,
                run_hash, ablation):  # fmt: skip
    graph = result.graph
    scores = np.full(len(graph), np.nan)
    for rec in result.log:
        if not rec["skipped"]:
            scores[rec["edge"]] = rec["delta"]
    return _write(
        out_dir,
        args,
        bundle,
        task,
        graph,
        result.present,
        algorithm="acdc",
        hyper={
            "threshold": result.threshold,
            "metric": result.metric_name,
            "zero_ablation": result.zero_ablation,
            "abs_value": result.abs_value,
            "engine": result.engine,
            "layers": args.layers if result.engine == "fast" else "unrolled",
        },
        settings=settings,
        run_hash=run_hash,
        ablation=ablation,
        scores=scores,
        score_kind="acdc: the metric change when the edge was tested (after - before); null "
        "for edges removed unchecked",
        steps=result.log,
        timing={
            "wall_time_s": wall,
            "n_tests": result.n_tests,
            "n_forward": result.n_forward,
            "n_device_calls": result.n_calls,
        },
        stem=stem,
    )


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


def _precheck(args, spec) -> None:
    """Cheap checks of the options, before anything is built or written."""
    if spec is None:  # no built-in task: --weights with --prompts / --dataset
        for flag in ("n_val", "n_test", "seq_len"):
            if getattr(args, flag, None) is not None:
                raise CLIError(f"--{flag.replace('_', '-')} applies to built-in tasks only.")
        _positive_int(getattr(args, "candidates", None), "--candidates")
        _positive_int(getattr(args, "devices", None), "--devices")
        return
    if args.metric is not None and not args.dataset and not getattr(args, "prompts", None):
        _check_metric(args.metric, spec.metrics, args.task)
    _positive_int(getattr(args, "candidates", None), "--candidates")
    _positive_int(getattr(args, "devices", None), "--devices")
    _positive_int(getattr(args, "checkpoint_every", None), "--checkpoint-every")
    _build_options(spec, args)


def cmd_discover(args) -> int:
    import jacdc._acdc

    if args.algorithm != "acdc":
        return _discover_other(args)
    spec = _spec(args)
    _precheck(args, spec)
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    jacdc._acdc.check_thresholds([threshold])
    settings = _acdc_settings(args, [threshold], spec)
    out_dir, run_hash = _out_dir(args, settings, ["acdc", f"tau{threshold:g}", settings["metric"]])
    with _run_folder(out_dir, run_hash, args):
        bundle, task, results, wall, ckpt, ablation = _acdc_runs(
            args, [threshold], out_dir, run_hash
        )
        result = results[0]
        clear_outputs(out_dir, keep=(ACDC_CHECKPOINT,))
        paths = _write_acdc(bundle, task, result, args, out_dir, "result", wall, settings,
                            run_hash, ablation)  # fmt: skip
        if ckpt is not None:
            ckpt.remove()
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


def _threshold_stem(t: float) -> str:
    """`tau<shortest repr that round-trips>`: distinct thresholds never share a file name."""
    return f"tau{float(t)!r}"


def cmd_sweep(args) -> int:
    import jacdc._acdc
    from jacdc._results import atomic_write_json

    spec = _spec(args)
    _precheck(args, spec)
    if args.paper_thresholds:
        thresholds = paper_thresholds()
    else:
        thresholds = [float(t) for t in args.thresholds]
    jacdc._acdc.check_thresholds(thresholds)
    seen: dict[float, int] = {}
    for t in thresholds:
        seen[t] = seen.get(t, 0) + 1
    twice = [t for t, n in seen.items() if n > 1]
    if twice:
        raise CLIError(f"--thresholds lists {twice[0]!r} more than once; give each value once.")
    settings = _acdc_settings(args, thresholds, spec)
    label = "paper" if args.paper_thresholds else f"{len(thresholds)}thresholds"
    out_dir, run_hash = _out_dir(args, settings, ["acdc-sweep", label, settings["metric"]])
    with _run_folder(out_dir, run_hash, args):
        bundle, task, results, wall, ckpt, ablation = _acdc_runs(
            args, thresholds, out_dir, run_hash
        )
        summary = []
        clear_outputs(out_dir, keep=(ACDC_CHECKPOINT,))
        for r in results:
            stem = _threshold_stem(r.threshold)
            _write_acdc(bundle, task, r, args, out_dir, stem, wall, settings, run_hash, ablation)
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
            out_dir / "sweep.json",
            {
                "task": bundle.name,
                "settings": settings,
                "settings_sha256": run_hash,
                "wall_time_s": wall,
                "runs": summary,
            },
        )
        if ckpt is not None:
            ckpt.remove()
    print(f"{len(results)} thresholds in {wall:.1f} s; wrote {out_dir}/sweep.json")
    return 0


def paper_thresholds() -> list[float]:
    """The paper's tracr grid 10^linspace(-5, -1, 21), each value rounded to 12 significant
    digits so that it is the decimal it prints as (1e-05, not 9.999999999999999e-06)."""
    return [float(f"{t:.12g}") for t in 10.0 ** np.linspace(-5, -1, 21)]


# ---- SP, HISP, EAP, EAP-IG, edge pruning ---------------------------------------------------


def _top(k) -> str:
    return "topauto" if k is None else f"top{k}"


def _other_settings(args, spec) -> tuple[dict, list[str]]:
    """Settings and folder-name parts of a non-ACDC run; validates the numeric options."""
    alg = args.algorithm
    default = spec.default_metric if spec is not None else "kl_div"
    metric = args.metric or (default if alg != "eap" else "auto")
    extra: dict = {"algorithm": alg, "metric": metric}
    parts = [alg]
    if alg in ("sp", "edge-pruning"):
        _finite_number(args.lam, "--lambda", positive=True)
        _positive_int(args.steps, "--steps")
        extra.update(lam=args.lam, steps=args.steps)
        parts += [f"lam{args.lam:g}", f"steps{args.steps}"]
    if alg in ("eap", "eap-ig"):
        if args.threshold is not None and args.top_k is not None:
            raise CLIError("Give either --threshold or --top-k, not both.")
        _finite_number(args.threshold, "--threshold")
        _positive_int(args.top_k, "--top-k", minimum=0)
        extra.update(threshold=args.threshold, top_k=args.top_k)
        parts += [f"thr{args.threshold:g}" if args.threshold is not None else _top(args.top_k)]
    if alg == "eap-ig":
        _positive_int(args.ig_steps, "--ig-steps")
        extra.update(ig_steps=args.ig_steps)
        parts.append(f"ig{args.ig_steps}")
    if alg == "hisp":
        _positive_int(args.top_k, "--top-k", minimum=0)
        extra.update(top_k=args.top_k)
        parts.append(_top(args.top_k))
    if args.threshold is not None and alg not in ("eap", "eap-ig"):
        raise CLIError(f"--threshold applies to acdc, eap and eap-ig, not {alg}.")
    parts.append(metric)
    return _settings(args, **extra), parts


def _eap_metric_choice(args, bundle, task, graph, show, ablation):
    """EAP's scores and metric. EAP differentiates at the full model, where KL and L2 to the
    model's own outputs are minimal, so their gradient vanishes and the scores are noise. With
    an explicit --metric that vanishes: an error. Without one: the task's default metric if its
    gradient does not vanish, else the task's other metrics in order, else EAP-IG on the
    default metric; each switch is announced on stderr."""
    from jacdc import _sharding
    from jacdc._eap import VanishingGradientError

    def scores_for(metric, steps):
        return _sharding.sharded_eap_scores(
            bundle.model, task, metric=metric, devices=args.devices, steps=steps,
            ablation=ablation, on_estimate=show,
        )  # fmt: skip

    if args.algorithm == "eap-ig":
        metric = args.metric or bundle.default_metric
        return scores_for(metric, args.ig_steps), metric, "eap-ig", None
    if args.metric is not None:
        try:
            return scores_for(args.metric, None), args.metric, "eap", None
        except VanishingGradientError as e:
            raise CLIError(
                f"{e} Use --algorithm eap-ig, or a task metric (--metric "
                f"{' / '.join(m for m in sorted(task.metrics) if m != args.metric) or '...'})."
            ) from None
    order = [bundle.default_metric] + [
        m for m in sorted(task.metrics) if m != bundle.default_metric
    ]
    for metric in order:
        try:
            scores = scores_for(metric, None)
        except VanishingGradientError:
            continue
        note = None
        if metric != bundle.default_metric:
            note = (
                f"EAP's gradient of {bundle.default_metric} vanishes at the full model; using "
                f"the task's metric {metric} (pass --metric to choose)"
            )
        return scores, metric, "eap", note
    metric = bundle.default_metric
    note = (
        f"EAP's gradient vanishes at the full model for every metric of this task "
        f"({', '.join(order)}); running EAP-IG ({args.ig_steps} steps) with {metric} instead"
    )
    return scores_for(metric, args.ig_steps), metric, "eap-ig", note


def _discover_other(args) -> int:
    """SP, HISP, EAP, EAP-IG and edge pruning: one circuit each, same result files as ACDC."""
    import jax.random as jr

    import jacdc
    from jacdc._runs import interruption_point
    from jacdc._sp import edge_scores_from_units, units_from_vector

    spec = _spec(args)
    _precheck(args, spec)
    settings, parts = _other_settings(args, spec)
    out_dir, run_hash = _out_dir(args, settings, parts)
    with _run_folder(out_dir, run_hash, args):
        bundle = _load_bundle(args)
        task = _dataset_task(args, bundle)
        ablation = _ablation_of(args, bundle.model)
        if args.metric is not None:
            _check_metric(args.metric, task.metrics, bundle.name)
        metric = args.metric or bundle.default_metric
        graph = jacdc.graph_of(bundle.model.graph_shape)
        n_units = len(jacdc.unit_names(bundle.model.graph_shape))
        limit = n_units if args.algorithm == "hisp" else len(graph)
        if args.algorithm in ("hisp", "eap", "eap-ig") and (args.top_k or 0) > limit:
            what = "HISP units" if args.algorithm == "hisp" else "edges"
            raise CLIError(f"--top-k must lie in [0, {limit}] ({what}), got {args.top_k}.")
        key = jr.key(args.seed)
        scores = None
        score_kind = None
        algorithm = args.algorithm
        hyper = {"metric": metric, "zero_ablation": ablation.kind == "zero"}
        extra: dict = {}
        start = time.perf_counter()
        show = lambda e: print(f"jacdc: memory: {e}", file=sys.stderr)  # noqa: E731
        _INTERRUPT_NOTE["text"] = "interrupted; nothing was written (this step keeps no checkpoint)"
        if args.algorithm in ("sp", "edge-pruning"):
            run = _train_resumable(
                args, bundle, task, metric, key, out_dir, run_hash, show, ablation
            )
            present = run.present
            hyper.update(lam=args.lam, steps=args.steps)
            extra["training"] = {
                "final_loss": float(run.loss[-1]),
                "final_metric": float(run.metric[-1]),
            }
            if args.algorithm == "sp":
                scores = edge_scores_from_units(bundle.model.graph_shape, run.log_alpha)
                score_kind = (
                    "sp: the trained log_alpha of the edge's weakest unit (min over the units "
                    "at its two ends; null for edges no unit governs)"
                )
            else:
                scores = run.scores
                score_kind = "edge-pruning: the trained log_alpha of the edge"
        elif args.algorithm == "hisp":
            run = jacdc.hisp(bundle.model, task, metric=metric, ablation=ablation)
            n_units = len(run.units)
            keep = args.top_k if args.top_k is not None else max(1, n_units // 4)
            if not 0 <= keep <= n_units:
                raise CLIError(f"--top-k must lie in [0, {n_units}] (HISP units), got {keep}.")
            present = run.circuits[n_units - keep]
            hyper.update(units_kept=keep)
            shape = bundle.model.graph_shape
            scores = edge_scores_from_units(shape, units_from_vector(shape, run.scores))
            score_kind = (
                "hisp: the normalised score of the edge's weakest unit (min over the units at "
                "its two ends; null for edges no unit governs)"
            )
        else:
            scores, metric, algorithm, note = _eap_metric_choice(
                args, bundle, task, graph, show, ablation
            )
            if note:
                print(f"jacdc: note: {note}", file=sys.stderr)
                extra["note"] = note
            hyper.update(metric=metric)
            if algorithm == "eap-ig":
                hyper.update(ig_steps=args.ig_steps)
            if args.threshold is not None:
                present = jacdc.circuit_from_scores(scores, threshold=args.threshold)
                hyper.update(threshold=args.threshold)
            else:
                k = args.top_k if args.top_k is not None else max(1, len(graph) // 20)
                if k > len(graph):
                    raise CLIError(f"--top-k must lie in [0, {len(graph)}] (edges), got {k}.")
                present = jacdc.circuit_from_scores(scores, top_k=k)
                hyper.update(top_k=k)
            score_kind = f"{algorithm}: d metric / d edge mask (minimised metric)"
        if scores is not None and np.any(np.isnan(scores)):
            raise CLIError(
                f"{algorithm} produced NaN scores: the model or data give non-finite values; "
                "check the weights and the dataset."
            )
        wall = time.perf_counter() - start
        interruption_point("before-write")
        clear_outputs(out_dir, keep=("train-checkpoint.npz",))
        paths = _write(
            out_dir, args, bundle, task, graph, present, algorithm=algorithm, hyper=hyper,
            settings=settings, run_hash=run_hash, ablation=ablation, scores=scores,
            score_kind=score_kind,
            timing={"wall_time_s": wall}, extra=dict(extra, requested_algorithm=args.algorithm),
        )  # fmt: skip
        (out_dir / "train-checkpoint.npz").unlink(missing_ok=True)
    n_kept = int(np.sum(present))
    print(f"{bundle.name}: {algorithm} kept {n_kept} of {len(graph)} edges in {wall:.1f} s.")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _train_resumable(args, bundle, task, metric, key, out_dir, run_hash, show, ablation):
    """SP or edge pruning, trained in chunks of --checkpoint-every steps; after every chunk the
    training state goes to `train-checkpoint.npz` (with the settings hash), and a rerun of the
    same command continues from it."""
    import jacdc
    from jacdc import _sharding
    from jacdc._runs import TrainCheckpoint

    ckpt = TrainCheckpoint(out_dir / "train-checkpoint.npz", run_hash)
    if args.fresh:
        ckpt.remove()
    resume = ckpt.load()
    if resume is not None:
        print(f"jacdc: resuming from {ckpt.path} (step {resume['step']})", file=sys.stderr)
    _INTERRUPT_NOTE["text"] = (
        f"interrupted; rerun the same command to resume from the checkpoint "
        f"({ckpt.path.name} in {out_dir})"
    )
    progress, close = _step_bar(not args.no_progress, args.steps, f"{args.algorithm} {bundle.name}")
    try:
        if args.algorithm == "sp":
            # = jacdc.subnetwork_probing(..., key=key) on one device; sharded on several
            (run,) = _sharding.sharded_sp_sweep(
                bundle.model, task, [args.lam], key=key, lane_keys=key[None], metric=metric,
                devices=args.devices, ablation=ablation, n_steps=args.steps,
                on_estimate=show, chunk=args.checkpoint_every, checkpoint=ckpt.save,
                resume=resume, progress=progress,
            )  # fmt: skip
        else:
            run = jacdc.edge_pruning(
                bundle.model, task, args.lam, key=key, metric=metric,
                ablation=ablation, n_steps=args.steps,
                chunk=args.checkpoint_every, checkpoint=ckpt.save, resume=resume,
                progress=progress,
            )  # fmt: skip
    finally:
        close()
    return run


# ---- ROC ----------------------------------------------------------------------------------


def cmd_roc(args) -> int:
    from jacdc import _roc_report

    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown or not algorithms:
        hint = _did_you_mean(unknown[0], ALGORITHMS) if unknown else ""
        raise CLIError(
            f"Unknown algorithm(s) {unknown or args.algorithms!r};{hint} choose from "
            f"{', '.join(ALGORITHMS)}."
        )
    spec = _spec(args)
    args.dataset = None
    _precheck(args, spec)
    _positive_int(args.sp_steps, "--sp-steps")
    _positive_int(args.edge_pruning_steps, "--edge-pruning-steps")
    metric = args.metric or spec.default_metric
    settings = _settings(
        args,
        algorithms=algorithms,
        metric=metric,
        sp_steps=args.sp_steps,
        edge_pruning_steps=args.edge_pruning_steps,
    )
    out_dir, run_hash = _out_dir(args, settings, ["roc", metric])
    with _run_folder(out_dir, run_hash, args):
        bundle = _load_bundle(args)
        _INTERRUPT_NOTE["text"] = (
            "interrupted; rerun the same command to resume: finished algorithms are kept in "
            f"{out_dir / 'roc-parts'}"
        )
        log = lambda line: print(f"jacdc: roc: {line}", file=sys.stderr, flush=True)  # noqa: E731
        report = _roc_report.roc_report(
            bundle,
            algorithms,
            zero_ablation=args.zero_ablation,
            metric=metric,
            out_dir=out_dir,
            seed=args.seed,
            sp_steps=args.sp_steps,
            edge_pruning_steps=args.edge_pruning_steps,
            precision=args.precision,
            log=None if args.no_progress else log,
            parts_dir=out_dir / "roc-parts",
            settings_sha256=run_hash,
            fresh=args.fresh,
            before_write=lambda: clear_outputs(out_dir, keep=("roc-parts",)),
        )
        clear_outputs(out_dir, keep=tuple(Path(p).name for p in report["files"].values()))
    md = report.get("files", {}).get("md")
    print(Path(md).read_text())
    print(f"wrote {', '.join(str(p) for p in report['files'].values())}")
    return 0


def cmd_draw(args) -> int:
    from jacdc import _draw
    from jacdc._results import atomic_write_bytes, load_result

    doc = load_result(args.result)
    circuit = _draw.circuit_of_document(doc, str(args.result))
    dot = _draw.circuit_dot(
        circuit["graph"], circuit["present"], scores=circuit["scores"], title=circuit["title"]
    )
    stem = Path(args.result).with_suffix("")
    if args.format == "dot" or not _draw.have_graphviz():
        atomic_write_bytes(f"{stem}.dot", dot.encode())
        if args.format != "dot":
            print("jacdc: Graphviz `dot` not found; wrote DOT only", file=sys.stderr)
        print(f"wrote {stem}.dot")
        return 0
    try:
        picture = _draw.render(dot, args.format)
    except RuntimeError as e:
        raise CLIError(str(e)) from None
    atomic_write_bytes(f"{stem}.{args.format}", picture)
    print(f"wrote {stem}.{args.format}")
    return 0


def cmd_paper(args) -> int:
    from jacdc import _paper

    weights = {}
    for item in args.weights:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise CLIError(f"--weights takes TASK=PATH (e.g. ioi=/models/gpt2), got {item!r}.")
        weights[task] = path
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    _positive_int(args.sp_steps, "--sp-steps")
    with _folding(args):
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


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--no-cache" in argv:  # a top-level option, also accepted after the command
        argv = ["--no-cache"] + [a for a in argv if a != "--no-cache"]
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
    _INTERRUPT_NOTE["text"] = "interrupted"
    try:
        from jacdc._precision import matmul_precision

        with matmul_precision(getattr(args, "precision", None)):
            return commands[args.command](args)
    except KeyboardInterrupt:
        print(f"jacdc: {_INTERRUPT_NOTE['text']}", file=sys.stderr)
        return 130
    except (CLIError, ValueError, FileNotFoundError, ImportError, OSError) as e:
        message = " ".join(str(e).split())
        print(f"jacdc: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
