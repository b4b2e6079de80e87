"""Re-scoring a saved circuit (`jacdc eval RESULT.json`), possibly on new data.

[`evaluate_circuit`][] gives, for one circuit and one task split, the metric of the circuit
`m(C)`, of the full model `m(M)` and of the empty circuit `m(∅)`, and the normalised
faithfulness

    f = (m(C) - m(∅)) / (m(M) - m(∅))

(1 = the circuit does what the model does, 0 = no better than ablating everything; undefined,
reported as `None`, when `m(M) = m(∅)`). For score-based results (EAP, EAP-IG: `|score|`; edge
pruning: the learned log-alpha) it adds MIB's faithfulness curve over the top-k circuits of
those scores, with CPR and CMD ([`jacdc.faithfulness_curve`][]).

The command rebuilds the model from `--weights` (default: the path the result records) and
refuses a result whose recorded model config differs from the model loaded. Data: `--prompts
FILE` or `--dataset FILE`, else the data the result was found on (its prompts/dataset file, if
unchanged, or its built-in task's split).
"""

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from ._faithfulness import MIB_FRACTIONS, faithfulness_curve
from ._graph import GraphShape, graph_of
from ._patching import Ablation, ablation_sources, metric_of_mask


SCORE_BASED = {"eap": "abs", "eap-ig": "abs", "edge-pruning": "raw"}


def circuit_of(doc: dict) -> np.ndarray:
    """The `present` vector of a result document."""
    n = int(doc["n_edges_total"])
    present = np.zeros(n, bool)
    for e in doc["edges"]:
        present[int(e["id"])] = bool(e["present"])
    return present


def scores_of(doc: dict) -> np.ndarray | None:
    """The ranking scores of a score-based result (higher = more important), else `None`."""
    how = SCORE_BASED.get(doc.get("algorithm"))
    if how is None or not doc["edges"] or "score" not in doc["edges"][0]:
        return None
    s = np.array([np.nan if e["score"] is None else e["score"] for e in doc["edges"]], float)
    s = np.nan_to_num(s, nan=-np.inf)
    return np.abs(s) if how == "abs" else s


def evaluate_circuit(model, task, present, metric: str, ablation=None, scores=None) -> dict:
    """`m(C)`, `m(M)`, `m(∅)`, the faithfulness and (given `scores`) CPR/CMD of one circuit.

    **Arguments:**

    - `model`, `task`: the [`jacdc.models.Transformer`][] and the split to score on.
    - `present`: bool `(edge,)`, the circuit.
    - `metric`: a key of `task.metrics`.
    - `ablation`: what removed edges read (a name or a [`jacdc.Ablation`][]).
    - `scores`: per-edge importances for the faithfulness curve (or `None`).
    """
    if metric not in task.metrics:
        raise ValueError(f"Unknown metric {metric!r}; this data offers {sorted(task.metrics)}.")
    graph = graph_of(model.graph_shape)
    present = np.asarray(present, bool)
    if present.shape != (len(graph),):
        raise ValueError(f"The circuit has {present.size} edges, this model's graph {len(graph)}.")
    src = ablation_sources(model, task, ablation=ablation)

    def m(vec):
        mask = graph.from_vector(np.asarray(vec, np.float32))
        return float(metric_of_mask(model, task, mask, src, metric))

    circuit, full, empty = m(present), m(np.ones(len(graph))), m(np.zeros(len(graph)))
    denom = full - empty
    out = {
        "metric": metric,
        "n_edges": int(present.sum()),
        "n_edges_total": len(graph),
        "circuit": circuit,
        "full_model": full,
        "empty_circuit": empty,
        "faithfulness": None if denom == 0 else (circuit - empty) / denom,
    }
    if scores is not None and denom != 0:
        curve = faithfulness_curve(model, task, scores, metric, ablation=ablation)
        out["curve"] = {
            "fractions": curve.fractions.tolist(),
            "ks": curve.ks.tolist(),
            "values": curve.values.tolist(),
            "f": curve.f.tolist(),
        }
        out["cpr"], out["cmd"] = curve.cpr, curve.cmd
    return out


def _check_same_model(doc: dict, model, where: str) -> None:
    want = doc.get("model") or {}
    have = dataclasses.asdict(model.cfg)
    diff = [f"{k} {want.get(k)!r} vs {have[k]!r}" for k in have if k in want and want[k] != have[k]]
    missing = [k for k in ("n_layers", "n_heads", "d_model", "d_vocab") if k not in want]
    if diff or missing:
        raise ValueError(
            f"{where} was found on another model than the one loaded (result vs loaded: "
            + ("; ".join(diff) if diff else f"no {missing[0]} recorded")
            + "). Pass the --weights of the model the circuit was found on."
        )
    if GraphShape(**doc["graph"]) != model.graph_shape:
        raise ValueError(f"{where}: its graph differs from the loaded model's graph.")


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_for_eval(doc: dict, where: str, *, weights=None, prompts=None, dataset=None,
                  split=None, seed=None, first_token=None):  # fmt: skip
    """`(model, task, data_label)` for re-scoring `doc`: the model from `weights` (default:
    the result's), the data from `prompts` / `dataset` (default: the result's own)."""
    from jacdc import tasks
    from jacdc.models import load_pretrained

    hyper = doc.get("hyperparameters", {})
    weights = weights or hyper.get("weights")
    seed = (doc.get("seed") or 0) if seed is None else seed
    first_token = hyper.get("first_token", False) if first_token is None else first_token
    own = prompts is None and dataset is None
    if own:
        prompts, dataset = hyper.get("prompts"), hyper.get("dataset")
        recorded = hyper.get("data_sha256")
        for path in (prompts, dataset):
            if path is not None:
                if not Path(path).exists():
                    raise FileNotFoundError(
                        f"{where} was found on {path}, which is gone; pass --prompts or --dataset."
                    )
                if recorded and _sha256(path) != recorded:
                    raise ValueError(
                        f"{path} changed since {where} was written (SHA-256 differs); pass it "
                        "explicitly with --prompts/--dataset to score on its new contents."
                    )
    builtin = hyper.get("builtin_task", doc.get("task"))
    if prompts is not None:
        if not weights or weights in ("random", "random-small"):
            raise ValueError("Scoring text prompts needs --weights (a checkpoint and tokenizer).")
        pre = load_pretrained(weights)
        _check_same_model(doc, pre.model, where)
        if pre.tokenizer is None:
            raise ValueError(f"{weights} has no tokenizer files; give token ids with --dataset.")
        split = split or ("val" if own else "all")
        bundle = tasks.from_file(
            prompts, pre.model, pre.tokenizer, seed=seed, first_token=first_token,
            test_fraction=0.0 if split == "all" else 0.5,
        )  # fmt: skip
        task = bundle.test if split == "test" else bundle.val
        return pre.model, task, f"{Path(prompts).name} ({split})"
    if dataset is not None and weights and weights not in ("random", "random-small"):
        model = load_pretrained(weights).model
        _check_same_model(doc, model, where)
        return model, tasks.task_from_dataset(dataset, model), Path(dataset).name
    if builtin not in tasks.available_tasks():
        raise ValueError(
            f"{where}: task {builtin!r} is no built-in task and no data was given; pass "
            "--prompts FILE or --dataset FILE (and --weights)."
        )
    bundle = tasks.load_task(builtin, weights=weights, seed=seed)
    _check_same_model(doc, bundle.model, where)
    if dataset is not None:
        return bundle.model, tasks.task_from_dataset(dataset, bundle), Path(dataset).name
    split = "val" if split in (None, "all") else split
    task = bundle.test if split == "test" else bundle.val
    return bundle.model, task, f"{builtin} ({split})"


def ablation_of_result(doc: dict) -> Ablation:
    """The ablation a result was found with (`corrupted` for results that predate mean
    ablation). A mean ablation over another reference file averages over the scored prompts
    instead (the reference itself is not stored)."""
    hyper = doc.get("hyperparameters", {})
    rec = hyper.get("ablation")
    if isinstance(rec, dict):
        return Ablation(rec.get("kind", "corrupted"))
    return Ablation("zero" if hyper.get("zero_ablation") else "corrupted")


def make_ablation(kind: str, mean_reference, model, weights=None) -> Ablation:
    """The [`jacdc.Ablation`][] of the CLI's `--ablation KIND [--mean-reference FILE]`: the
    reference file holds prompts (`.csv`/`.jsonl`, tokenized with the tokenizer of `weights`)
    or token ids (`.npz`/`.json`, their `clean` array)."""
    from jacdc import tasks

    if mean_reference is None:
        return Ablation(kind)
    if not kind.startswith("mean"):
        raise ValueError("--mean-reference applies to --ablation mean or mean-positions only.")
    path = Path(mean_reference)
    if path.suffix.lower() in (".csv", ".jsonl"):
        from jacdc.models import load_pretrained

        tok = None
        if weights and weights not in ("random", "random-small"):
            tok = load_pretrained(weights).tokenizer
        if tok is None:
            raise ValueError("A text --mean-reference needs --weights with a tokenizer.")
        tokens, lengths = tasks.prompt_tokens(path, model, tok)
        return Ablation(kind, tokens, lengths, name=path.name)
    arrays = tasks.read_token_dataset(path)
    model.check_token_batch(arrays["clean"], f"{path.name}: clean")
    return Ablation(kind, arrays["clean"], name=path.name)


def eval_command(args) -> dict:
    """`jacdc eval`: the report of one result file (see the module docstring)."""
    from ._results import atomic_write_json, read_result

    doc = read_result(args.result)
    where = Path(args.result).name
    model, task, label = load_for_eval(
        doc, where, weights=args.weights, prompts=args.prompts, dataset=args.dataset,
        split=args.split, seed=args.seed, first_token=args.first_token or None,
    )  # fmt: skip
    if args.ablation or args.mean_reference:
        kind = args.ablation or ablation_of_result(doc).kind
        ablation = make_ablation(kind, args.mean_reference, model, args.weights)
    else:
        ablation = ablation_of_result(doc)
    metric = args.metric or doc.get("hyperparameters", {}).get("metric")
    report = evaluate_circuit(model, task, circuit_of(doc), metric, ablation, scores_of(doc))
    report.update(
        result=str(args.result),
        algorithm=doc.get("algorithm"),
        task=doc.get("task"),
        data=label,
        ablation=ablation.describe(),
        fractions=list(MIB_FRACTIONS) if "curve" in report else None,
    )
    if args.out:
        atomic_write_json(args.out, report)
    return report


def format_report(report: dict) -> str:
    f = report["faithfulness"]
    lines = [
        f"{report['result']}: {report['algorithm']} circuit of {report['n_edges']} of "
        f"{report['n_edges_total']} edges, scored on {report['data']} "
        f"({report['ablation']['kind']} ablation)",
        f"  {report['metric']}: circuit {report['circuit']:.6g}, full model "
        f"{report['full_model']:.6g}, empty circuit {report['empty_circuit']:.6g}",
        "  faithfulness (m(C) - m(empty)) / (m(M) - m(empty)): "
        + ("undefined (m(M) = m(empty))" if f is None else f"{f:.6g}"),
    ]
    if "cpr" in report:
        lines.append(f"  faithfulness curve: CPR {report['cpr']:.6g}, CMD {report['cmd']:.6g}")
    return "\n".join(lines)
