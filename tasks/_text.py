"""Your own text prompts as a task: [`from_prompts`][] (Python lists) and [`from_file`][]
(CSV or JSONL).

**Rows.** Each row is a clean prompt, its corrupted counterpart and the answers:

| column | required | meaning |
| --- | --- | --- |
| `clean` | yes | the prompt the metric is computed on |
| `corrupted` | yes | the corrupted prompt (same token length as `clean`) |
| `correct` | yes¹ | the correct next token: a string, a list of strings, or token ids |
| `incorrect` | no | the wrong answer(s), same forms (needed by `logit_diff` and `prob_diff`) |
| `position` | no | the token index the metric reads (negative: from the prompt's end; default -1) |
| `split` | no | `val`/`validation` or `test` (default: a seeded random split) |

¹ Or `correct_idx` / `incorrect_idx` (token ids), as in EAP-IG's CSVs. In a CSV a cell that
starts with `[` is read as a JSON list (`["Mary", " John"]` or `[3576]`); in JSONL answers are
strings, lists of strings, ints or lists of ints. Answer strings are tokenized as written (GPT-2
answers usually start with a space: `" Mary"`) and must be one token each; `first_token=True`
keeps the first token of a longer answer instead.

**Tokenization and padding.** Prompts are tokenized with the model's own tokenizer (any object
with `encode(text) -> list[int]`; `bos=` prepends a token) and may differ in length: each split
is right-padded with `pad_id` to its longest prompt. With causal attention a position never sees
a later one, so padding cannot change what a prompt's own positions compute; every metric reads
each prompt at its own answer position (by default its last token). Models with bidirectional
attention (tracr) would see the padding, so they refuse prompts of different lengths. The
[`jacdc.tasks.Task`][] records each prompt's length (`lengths`) so that mean ablation leaves
padding out.

**Metrics** (all minimised), chosen by name:

| name | value per prompt |
| --- | --- |
| `logit_diff` | `-(mean logit of the correct answers - mean logit of the incorrect ones)` |
| `prob_diff` | `-(P(correct answers) - P(incorrect answers))` (softmax over the vocabulary) |
| `logprob` | `-log P(correct answers)` (the log-probability of the correct answer, negated) |
| `kl_div` | KL(full model || circuit) of the next-token distribution at the answer position |
| `nll` | next-token negative log-likelihood over each prompt's own tokens (opt-in) |

`nll` reads every position, so it is built only when asked for (`metrics=(..., "nll")`).
"""

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jacdc.models import Transformer

from ._base import AbstractMetric, Task, TaskBundle, kl_metric
from ._common import NLLMetric, as_tokenize


TEXT_METRICS = ("logit_diff", "prob_diff", "logprob", "kl_div", "nll")
DEFAULT_METRICS = ("logit_diff", "prob_diff", "logprob", "kl_div")


def _at_answer(logits, index):
    rows = jnp.arange(logits.shape[0])
    return logits[rows, index].astype(jnp.float32)  # (batch, vocab)


class AnswerLogitDiff(AbstractMetric):
    """`-(mean logit of the correct answers - mean logit of the incorrect answers)` at each
    prompt's answer position.

    - `index`: `(batch,)` which metric position each prompt reads.
    - `correct`, `correct_valid`: `(batch, n)` answer ids (padded) and 1 where an id is real.
    - `incorrect`, `incorrect_valid`: the same for the wrong answers.
    """

    index: Int[Array, " batch"]
    correct: Int[Array, "batch n"]
    correct_valid: Float[Array, "batch n"]
    incorrect: Int[Array, "batch m"]
    incorrect_valid: Float[Array, "batch m"]

    def per_example(self, logits: Float[Array, "batch pos vocab"]) -> Float[Array, " batch"]:
        x = _at_answer(logits, self.index)
        good = jnp.take_along_axis(x, self.correct, -1)
        bad = jnp.take_along_axis(x, self.incorrect, -1)
        g = (good * self.correct_valid).sum(-1) / self.correct_valid.sum(-1)
        b = (bad * self.incorrect_valid).sum(-1) / self.incorrect_valid.sum(-1)
        return -(g - b)


class AnswerProbDiff(AbstractMetric):
    """`-(P(correct answers) - P(incorrect answers))` at each prompt's answer position (fields
    as [`AnswerLogitDiff`][])."""

    index: Int[Array, " batch"]
    correct: Int[Array, "batch n"]
    correct_valid: Float[Array, "batch n"]
    incorrect: Int[Array, "batch m"]
    incorrect_valid: Float[Array, "batch m"]

    def per_example(self, logits: Float[Array, "batch pos vocab"]) -> Float[Array, " batch"]:
        p = jax.nn.softmax(_at_answer(logits, self.index), axis=-1)
        good = (jnp.take_along_axis(p, self.correct, -1) * self.correct_valid).sum(-1)
        bad = (jnp.take_along_axis(p, self.incorrect, -1) * self.incorrect_valid).sum(-1)
        return -(good - bad)


class AnswerLogProb(AbstractMetric):
    """`-log P(correct answers)` at each prompt's answer position (fields as
    [`AnswerLogitDiff`][], without the incorrect answers)."""

    index: Int[Array, " batch"]
    correct: Int[Array, "batch n"]
    correct_valid: Float[Array, "batch n"]

    def per_example(self, logits: Float[Array, "batch pos vocab"]) -> Float[Array, " batch"]:
        lp = jax.nn.log_softmax(_at_answer(logits, self.index), axis=-1)
        vals = jnp.take_along_axis(lp, self.correct, -1)
        vals = jnp.where(self.correct_valid > 0, vals, -jnp.inf)
        return -jax.scipy.special.logsumexp(vals, axis=-1)


# ---------------------------------------------------------------------------------------------
# Reading rows


def _where(source: str, i: int) -> str:
    return f"{source} row {i + 1}"


_ANSWER_COLUMNS = ("correct", "incorrect", "correct_idx", "incorrect_idx")


def _parse_cell(value: Any):
    """A CSV cell: a JSON list when it starts with `[`, else the string as written."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _answer_ids(value, tokenize, where: str, column: str, first_token: bool, ids_only: bool):
    """The token ids of one answer cell (a string, a list of strings, an int, a list of ints
    or, in CSV `*_idx` columns, a decimal string)."""
    if ids_only and isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else text
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ValueError(
                    f"{where}: column {column!r} holds token ids, got {value!r}."
                ) from None
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError(f"{where}: column {column!r} is empty; give at least one answer.")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise ValueError(
                f"{where}: column {column!r} must hold strings or token ids, got {item!r}."
            )
        if isinstance(item, int):
            out.append(item)
            continue
        if item == "":
            raise ValueError(f"{where}: column {column!r} is empty; give at least one answer.")
        toks = tokenize(item)
        if len(toks) != 1 and not (first_token and toks):
            raise ValueError(
                f"{where}: answer {item!r} in column {column!r} is {len(toks)} tokens {toks}, "
                "not one. Write it as a single token (GPT-2 answers usually start with a "
                "space), give its token id, or pass first_token=True (CLI: --first-token) to "
                "score its first token."
            )
        out.append(int(toks[0]))
    return out


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"Prompt file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json"):
        raise ValueError(
            f"Prompt files must be .csv or .jsonl (one JSON object per line), got {path.name!r}."
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {e.start}: {raw[e.start : e.start + 1]!r}); save "
            "it as UTF-8."
        ) from None
    if not text.strip():
        raise ValueError(f"{path} is empty; it needs a header and at least one row.")
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = []
        for i, row in enumerate(reader):
            if None in row:
                raise ValueError(
                    f"{_where(path.name, i)} has more cells than the header "
                    f"({len(reader.fieldnames or [])} columns)."
                )
            rows.append({k: _parse_cell(v) if k in _ANSWER_COLUMNS else v for k, v in row.items()})
        if not rows:
            raise ValueError(f"{path} has a header but no rows.")
        return rows
    rows = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {i + 1} is not valid JSON ({e}).") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {i + 1} must be a JSON object, got {row!r:.40}.")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Building the task


def _pad(rows: list[list[int]], length: int, pad_id: int) -> np.ndarray:
    out = np.full((len(rows), length), pad_id, np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _pad_answers(lists: list[list[int]]):
    n = max(len(a) for a in lists)
    ids = np.zeros((len(lists), n), np.int32)
    valid = np.zeros((len(lists), n), np.float32)
    for i, a in enumerate(lists):
        ids[i, : len(a)] = a
        valid[i, : len(a)] = 1.0
    return jnp.asarray(ids), jnp.asarray(valid)


def _split_task(model, clean, corrupted, lengths, answer_pos, correct, incorrect, metrics, pad_id):
    seq = max(lengths)
    clean_a = _pad(clean, seq, pad_id)
    corr_a = _pad(corrupted, seq, pad_id)
    lengths_a = np.asarray(lengths, np.int32)
    answer_pos = np.asarray(answer_pos, np.int64)
    if "nll" in metrics:
        positions = np.arange(seq)
    else:
        positions = np.unique(answer_pos)
    index = np.searchsorted(positions, answer_pos).astype(np.int32)
    pos_j = jnp.asarray(positions, jnp.int32)
    idx_j = jnp.asarray(index)
    onehot = np.zeros((len(clean), positions.size), np.float32)
    onehot[np.arange(len(clean)), index] = 1.0
    out: dict[str, AbstractMetric] = {}
    if "kl_div" in metrics:
        out["kl_div"] = kl_metric(model, clean_a, pos_j, onehot)
    c_ids, c_valid = _pad_answers(correct)
    if "logprob" in metrics:
        out["logprob"] = AnswerLogProb(index=idx_j, correct=c_ids, correct_valid=c_valid)
    if incorrect is not None:
        i_ids, i_valid = _pad_answers(incorrect)
        if "logit_diff" in metrics:
            out["logit_diff"] = AnswerLogitDiff(idx_j, c_ids, c_valid, i_ids, i_valid)
        if "prob_diff" in metrics:
            out["prob_diff"] = AnswerProbDiff(idx_j, c_ids, c_valid, i_ids, i_valid)
    if "nll" in metrics:
        targets = np.zeros((len(clean), seq), np.int32)
        targets[:, :-1] = clean_a[:, 1:]
        weights = (np.arange(seq)[None, :] < lengths_a[:, None] - 1).astype(np.float32)
        out["nll"] = NLLMetric(targets=jnp.asarray(targets), weights=jnp.asarray(weights))
    return Task(
        clean=jnp.asarray(clean_a),
        corrupted=jnp.asarray(corr_a),
        corrupted_positions=None,
        logit_positions=pos_j,
        metrics=out,
        lengths=jnp.asarray(lengths_a),
    )


def _rows_to_bundle(
    model: Transformer,
    tokenizer,
    rows: list[dict],
    *,
    source: str,
    name: str,
    metrics: Sequence[str],
    test_fraction: float,
    seed: int,
    bos: int | None,
    pad_id: int,
    first_token: bool,
    default_metric: str | None,
) -> TaskBundle:
    if not rows:
        raise ValueError(f"{source}: no prompts; give at least one row.")
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in TEXT_METRICS]
    if unknown or not metrics:
        raise ValueError(
            f"Unknown metric(s) {unknown or metrics}; text tasks offer {', '.join(TEXT_METRICS)}."
        )
    columns = set(rows[0])
    for i, row in enumerate(rows):
        if set(row) != columns:
            raise ValueError(
                f"{_where(source, i)} has columns {sorted(row)}, the first row {sorted(columns)}."
            )
    c_col = "correct" if "correct" in columns else "correct_idx"
    i_col = "incorrect" if "incorrect" in columns else "incorrect_idx"
    missing = [c for c in ("clean", "corrupted") if c not in columns]
    if c_col not in columns:
        missing.append("correct")
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {', '.join(missing)}; found {', '.join(sorted(columns))}."
            " A prompt file needs clean, corrupted and correct (or correct_idx), optionally "
            "incorrect, position and split."
        )
    has_incorrect = i_col in columns
    tokenize = as_tokenize(tokenizer)
    n_ctx, d_vocab = model.cfg.n_ctx, model.cfg.d_vocab
    clean, corrupted, lengths, answer_pos, correct, incorrect, splits = [], [], [], [], [], [], []
    for i, row in enumerate(rows):
        where = _where(source, i)
        pair = []
        for col in ("clean", "corrupted"):
            text = row[col]
            if not isinstance(text, str) or not text:
                raise ValueError(f"{where}: {col!r} must be a non-empty string, got {text!r}.")
            toks = ([] if bos is None else [int(bos)]) + [int(t) for t in tokenize(text)]
            pair.append(toks)
        if len(pair[0]) != len(pair[1]):
            raise ValueError(
                f"{where}: clean and corrupted prompts tokenize to different lengths "
                f"({len(pair[0])} vs {len(pair[1])} tokens): {row['clean']!r} vs "
                f"{row['corrupted']!r}. Each pair must have the same number of tokens."
            )
        if len(pair[0]) > n_ctx:
            raise ValueError(
                f"{where}: the prompt is {len(pair[0])} tokens, longer than the model's context "
                f"(n_ctx {n_ctx}). Shorten it."
            )
        for toks, col in zip(pair, ("clean", "corrupted")):
            if toks and (min(toks) < 0 or max(toks) >= d_vocab):
                raise ValueError(
                    f"{where}: {col!r} tokenizes to ids outside the model's vocabulary "
                    f"[0, {d_vocab}); use the model's own tokenizer."
                )
        n = len(pair[0])
        pos = row.get("position", -1)
        if isinstance(pos, str):
            try:
                pos = int(pos) if pos.strip() else -1
            except ValueError:
                raise ValueError(f"{where}: 'position' must be an integer, got {pos!r}.") from None
        if isinstance(pos, bool) or not isinstance(pos, int) or not -n <= pos < n:
            raise ValueError(
                f"{where}: 'position' must be an integer in [{-n}, {n}) (the prompt has {n} "
                f"tokens), got {pos!r}."
            )
        answers = []
        for col, ids_only in ((c_col, c_col.endswith("_idx")), (i_col, i_col.endswith("_idx"))):
            if col == i_col and not has_incorrect:
                answers.append(None)
                continue
            ids = _answer_ids(row[col], tokenize, where, col, first_token, ids_only)
            bad = [t for t in ids if not 0 <= t < model.cfg.vocab_out]
            if bad:
                raise ValueError(
                    f"{where}: answer token ids {bad} in {col!r} are outside the model's output "
                    f"vocabulary [0, {model.cfg.vocab_out})."
                )
            answers.append(ids)
        split = row.get("split")
        if split is not None:
            split = str(split).strip().lower()
            split = {"validation": "val", "valid": "val", "dev": "val"}.get(split, split)
            if split not in ("val", "test"):
                raise ValueError(f"{where}: 'split' must be val or test, got {row['split']!r}.")
        clean.append(pair[0])
        corrupted.append(pair[1])
        lengths.append(n)
        answer_pos.append(pos % n)
        correct.append(answers[0])
        incorrect.append(answers[1])
        splits.append(split)
    if not model.cfg.causal and len(set(lengths)) > 1:
        raise ValueError(
            f"{source}: prompts of different token lengths ({min(lengths)} to {max(lengths)}) "
            "need a causal model; this model attends in both directions, so padding would "
            "change every position. Give prompts of one length."
        )
    wanted = [m for m in metrics if has_incorrect or m not in ("logit_diff", "prob_diff")]
    if len(wanted) < len(metrics):
        dropped = sorted(set(metrics) - set(wanted))
        if default_metric in dropped:
            raise ValueError(
                f"Metric {default_metric!r} needs the wrong answers: add an 'incorrect' column."
            )
    if default_metric is None:
        default_metric = "kl_div" if "kl_div" in wanted else wanted[0]
    elif default_metric not in wanted:
        raise ValueError(f"default_metric {default_metric!r} is not among {wanted}.")
    n = len(rows)
    if any(s is not None for s in splits):
        if any(s is None for s in splits):
            raise ValueError(f"{source}: every row needs a 'split' when one row has it.")
        val_ids = [i for i, s in enumerate(splits) if s == "val"]
        test_ids = [i for i, s in enumerate(splits) if s == "test"]
        if not val_ids:
            raise ValueError(f"{source}: no row has split 'val'; discovery needs a validation set.")
    else:
        if not 0.0 <= test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction}.")
        order = np.random.default_rng(seed).permutation(n)
        n_test = int(np.floor(n * test_fraction))
        test_ids, val_ids = sorted(order[:n_test].tolist()), sorted(order[n_test:].tolist())
    if not test_ids:  # too few rows to hold some out: the test split repeats the validation one
        test_ids = val_ids

    def build(ids):
        pick = lambda xs: [xs[i] for i in ids]  # noqa: E731
        return _split_task(
            model, pick(clean), pick(corrupted), pick(lengths), pick(answer_pos), pick(correct),
            pick(incorrect) if has_incorrect else None, wanted, pad_id,
        )  # fmt: skip

    return TaskBundle(
        name=name,
        model=model,
        val=build(val_ids),
        test=build(test_ids),
        default_metric=default_metric,
        canonical=None,
        info={
            "source": source,
            "n_prompts": n,
            "val_rows": [int(i) for i in val_ids],
            "test_rows": [int(i) for i in test_ids],
            "seed": seed,
            "metrics": wanted,
        },
    )


def from_prompts(
    model: Transformer,
    tokenizer,
    clean: Sequence[str],
    corrupted: Sequence[str],
    correct: Sequence[Any],
    incorrect: Sequence[Any] | None = None,
    *,
    positions: Sequence[int] | None = None,
    splits: Sequence[str] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    test_fraction: float = 0.5,
    seed: int = 0,
    bos: int | None = None,
    pad_id: int = 0,
    first_token: bool = False,
    default_metric: str | None = None,
    name: str = "prompts",
) -> TaskBundle:
    """A [`jacdc.tasks.TaskBundle`][] from lists of prompts (the rules of this module's
    docstring).

    **Arguments:**

    - `model`: the [`jacdc.models.Transformer`][] to run.
    - `tokenizer`: the model's tokenizer: an object with `encode(text) -> list[int]` (e.g.
        [`jacdc.models.GPT2Tokenizer`][]) or a callable.
    - `clean`, `corrupted`: the prompts, pairwise of equal token length.
    - `correct`, `incorrect`: per prompt, an answer string, a list of them, a token id or a
        list of ids. Without `incorrect` there is no `logit_diff` / `prob_diff`.
    - `positions`: per prompt, the token index the metrics read (default: its last token).
    - `splits`: per prompt `"val"` or `"test"` (default: a seeded split, `test_fraction` of
        the prompts to test; with too few prompts the test split repeats the validation one).
    - `metrics`: names from `logit_diff`, `prob_diff`, `logprob`, `kl_div`, `nll`.
    - `bos`: a token id put in front of every prompt; `pad_id`: the right-padding token.
    - `first_token`: score the first token of a multi-token answer instead of refusing it.
    - `default_metric`: the metric discovery minimises by default (default `kl_div`).

    **Returns:** the bundle (`val`, `test` splits; no canonical circuit).
    """
    n = len(clean)
    cols = {"clean": clean, "corrupted": corrupted, "correct": correct}
    if incorrect is not None:
        cols["incorrect"] = incorrect
    if positions is not None:
        cols["position"] = positions
    if splits is not None:
        cols["split"] = splits
    for key, col in cols.items():
        if len(col) != n:
            raise ValueError(f"{key!r} has {len(col)} entries, clean has {n}.")
    rows = [{k: v[i] for k, v in cols.items()} for i in range(n)]
    return _rows_to_bundle(
        model, tokenizer, rows, source="prompts", name=name, metrics=metrics,
        test_fraction=test_fraction, seed=seed, bos=bos, pad_id=pad_id, first_token=first_token,
        default_metric=default_metric,
    )  # fmt: skip


def from_file(
    path: str | os.PathLike,
    model: Transformer,
    tokenizer,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    test_fraction: float = 0.5,
    seed: int = 0,
    bos: int | None = None,
    pad_id: int = 0,
    first_token: bool = False,
    default_metric: str | None = None,
    name: str | None = None,
) -> TaskBundle:
    """A [`jacdc.tasks.TaskBundle`][] from a `.csv` or `.jsonl` prompt file (columns in this
    module's docstring; EAP-IG's `correct_idx`/`incorrect_idx` CSVs read as they are). The
    other arguments are those of [`from_prompts`][]; `name` defaults to the file's stem."""
    path = Path(path)
    rows = _read_rows(path)
    return _rows_to_bundle(
        model, tokenizer, rows, source=path.name, name=name or path.stem, metrics=metrics,
        test_fraction=test_fraction, seed=seed, bos=bos, pad_id=pad_id, first_token=first_token,
        default_metric=default_metric,
    )  # fmt: skip


def prompt_tokens(
    path: str | os.PathLike,
    model: Transformer,
    tokenizer,
    *,
    column: str = "clean",
    bos: int | None = None,
    pad_id: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The right-padded token ids `(n, seq)` and lengths `(n,)` of one column of a prompt file
    (e.g. a mean-ablation reference set: only `column` is read)."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows or column not in rows[0]:
        found = ", ".join(sorted(rows[0])) if rows else "none"
        raise ValueError(f"{path.name}: missing column {column!r}; found {found}.")
    tokenize = as_tokenize(tokenizer)
    toks = []
    for i, row in enumerate(rows):
        text = row.get(column)
        if not isinstance(text, str) or not text:
            raise ValueError(f"{_where(path.name, i)}: {column!r} must be a non-empty string.")
        t = ([] if bos is None else [int(bos)]) + [int(x) for x in tokenize(text)]
        if len(t) > model.cfg.n_ctx:
            raise ValueError(
                f"{_where(path.name, i)}: the prompt is {len(t)} tokens, longer than the model's "
                f"context (n_ctx {model.cfg.n_ctx})."
            )
        toks.append(t)
    lengths = np.array([len(t) for t in toks], np.int32)
    if not model.cfg.causal and len(set(lengths.tolist())) > 1:
        raise ValueError(f"{path.name}: prompts of different lengths need a causal model.")
    return _pad(toks, int(lengths.max()), pad_id), lengths
