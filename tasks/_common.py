"""Pieces the language-model tasks share: task-specific metrics, tokenizer checks, model loading.

**Metrics.** Every metric here is an [`jacdc.tasks.AbstractMetric`][] (an Equinox module whose
fields are arrays), reads the logits only at the task's metric positions, `(batch, pos, vocab)`,
and is **minimised**:

| class | task | value |
| --- | --- | --- |
| [`LogitDiffMetric`][] | IOI | `-(logit(IO) - logit(S))` at the last metric position |
| [`ProbDiffMetric`][] | Greater-Than | `-(P(YY > yy) - P(YY <= yy))` over the 100 year tokens |
| [`DocstringMetric`][] | Docstring | `-(logit(correct) - max logit over the wrong names)` |
| [`NLLMetric`][] | Induction | negative log-likelihood of the next token at weighted positions |

The first three average over the batch; the NLL averages over every weighted (example, position)
pair, as [`jacdc.tasks.KLMetric`][] does.

**Tokenizers.** Task builders take a tokenizer as a plain callable `str -> list[int]` (or an
object with `.encode`). [`check_single_tokens`][] and [`tokenize_all`][] fail loudly, listing
every offending word or prompt, when a tokenizer does not split text as a template requires;
[`check_vocab`][] refuses a tokenizer whose vocabulary does not fit the model.

**Models.** [`resolve_model`][] turns a builder's `weights=` / `model=` options into a
[`jacdc.models.Transformer`][]: a checkpoint path or hub id goes to the loaders in
`jacdc.models`; `"random"` gives a randomly initialised model of the task's architecture (useful
for demos and tests, meaningless for circuits); `"random-small"` a much smaller model with the
same kind of architecture and vocabulary.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int

from jacdc.models import Transformer, TransformerConfig

from ._base import AbstractMetric, Task, TaskBundle, kl_metric


Tokenize = Callable[[str], Sequence[int]]

TASK_DATA = ("paper", "jacdc")
"""The `data=` choices of IOI, Greater-Than and Docstring: `"paper"`, the original
implementation's prompts exactly (`tasks/_paper_data.py`), or `"jacdc"`, jacdc's own draws."""


def check_data(data: str, task: str) -> str:
    """`data` if it is one of [`TASK_DATA`][]; a one-line `ValueError` otherwise."""
    if data not in TASK_DATA:
        raise ValueError(
            f"Unknown {task} data {data!r}: pass data='paper' (the original implementation's "
            "prompts, the default) or data='jacdc' (jacdc's own draws)."
        )
    return data


# ---------------------------------------------------------------------------------------------
# Metrics


class LogitDiffMetric(AbstractMetric):
    """IOI's logit difference, negated: `-(logit(IO) - logit(S))` at the last metric position,
    averaged over the batch. Lower is better; the clean GPT-2 small scores about -4 on IOI.

    - `correct`: `(batch,)` the IO token of each prompt.
    - `wrong`: `(batch,)` the S token of each prompt.
    """

    correct: Int[Array, " batch"]
    wrong: Int[Array, " batch"]

    def per_example(self, logits: Float[Array, "batch pos vocab"]) -> Float[Array, " batch"]:
        last = logits[:, -1].astype(jnp.float32)
        rows = jnp.arange(last.shape[0])
        return -(last[rows, self.correct] - last[rows, self.wrong])


class ProbDiffMetric(AbstractMetric):
    """Greater-Than's probability difference, negated: `-(P(YY > yy) - P(YY <= yy))`, where
    `P` is the full-vocabulary softmax at the last metric position, summed over the 100
    two-digit year tokens `"00"`..`"99"`, and `yy` is the prompt's start year within its
    century. Averaged over the batch. Lower is better (at best -1).

    - `year_tokens`: `(100,)` the token id of `"00"`, `"01"`, ..., `"99"`, in that order.
    - `start_year`: `(batch,)` the start year's last two digits (`yy`, 0..99).
    """

    year_tokens: Int[Array, " 100"]
    start_year: Int[Array, " batch"]

    def per_example(self, logits: Float[Array, "batch pos vocab"]) -> Float[Array, " batch"]:
        probs = jax.nn.softmax(logits[:, -1].astype(jnp.float32), axis=-1)
        year_probs = probs[:, self.year_tokens]  # (batch, 100)
        later = jnp.arange(100)[None, :] > self.start_year[:, None]
        greater = jnp.where(later, year_probs, 0.0).sum(-1)
        not_greater = jnp.where(later, 0.0, year_probs).sum(-1)
        return -(greater - not_greater)


class DocstringMetric(AbstractMetric):
    """The docstring metric: `-(logit(correct) - max over wrong names of logit(wrong))` at the
    last metric position, averaged over the batch. Lower is better.

    - `correct`: `(batch,)` the token of the correct parameter name.
    - `wrong`: `(batch, n_wrong)` the tokens of the wrong names (13 in the paper's setting).
    """

    correct: Int[Array, " batch"]
    wrong: Int[Array, "batch n_wrong"]

    def per_example(self, logits: Float[Array, "batch pos vocab"]) -> Float[Array, " batch"]:
        last = logits[:, -1].astype(jnp.float32)
        rows = jnp.arange(last.shape[0])
        correct = last[rows, self.correct]
        wrong = jnp.take_along_axis(last, self.wrong, axis=-1).max(-1)
        return -(correct - wrong)


class NLLMetric(AbstractMetric):
    """Negative log-likelihood (nats) of the true next token at the weighted positions.

    `__call__` averages over all weighted (example, position) pairs (so each scored token counts
    once, whichever row it is in); `per_example` averages within each row.

    - `targets`: `(batch, pos)` the token that follows each metric position.
    - `weights`: `(batch, pos)` 1 where a position is scored, 0 elsewhere.
    """

    targets: Int[Array, "batch pos"]
    weights: Float[Array, "batch pos"]

    def _nll(self, logits):
        logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return -jnp.take_along_axis(logprobs, self.targets[..., None], axis=-1)[..., 0]

    def per_example(self, logits: Float[Array, "batch pos vocab"]) -> Float[Array, " batch"]:
        nll = self._nll(logits)
        return (nll * self.weights).sum(-1) / jnp.maximum(self.weights.sum(-1), 1e-30)

    def __call__(self, logits: Float[Array | np.ndarray, "batch pos vocab"]) -> Float[Array, ""]:
        total = self.weights.sum()
        value = (self._nll(logits) * self.weights).sum() / jnp.maximum(total, 1e-30)
        return jnp.where(total > 0, value, 0.0)


# ---------------------------------------------------------------------------------------------
# Tokenizers


def as_tokenize(tokenizer: Any) -> Tokenize:
    """A `str -> list[int]` callable from a callable or from an object with `.encode` (a
    `tokenizers.Tokenizer`'s `Encoding` is unwrapped to its `.ids`)."""
    encode = getattr(tokenizer, "encode", None)
    if encode is None:
        if not callable(tokenizer):
            raise TypeError(
                f"Expected a tokenizer: a callable str -> list[int] or an object with .encode, "
                f"got {type(tokenizer).__name__}."
            )
        encode = tokenizer

    def tokenize(text: str) -> list[int]:
        out = encode(text)
        ids = getattr(out, "ids", out)  # tokenizers.Encoding
        return [int(i) for i in ids]

    return tokenize


def vocab_size_of(tokenizer: Any) -> int | None:
    """The vocabulary size a tokenizer declares (`vocab_size`, `n_vocab`, `d_vocab` or
    `get_vocab_size()`), or `None` for a bare callable."""
    for name in ("vocab_size", "n_vocab", "d_vocab"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, (int, np.integer)):
            return int(value)
    getter = getattr(tokenizer, "get_vocab_size", None)
    if callable(getter):
        return int(getter())
    return None


# Models pad their embedding beyond the tokenizer (redwood_attn_2l: 50,259 rows for GPT-2's 50,257
# tokens), so a few extra rows are allowed; a bigger gap means a different tokenizer.
MAX_VOCAB_PADDING = 64


def check_vocab(model: Transformer, tokenizer_vocab: int | None, *, tokenizer_name: str) -> None:
    """Raises a `ValueError` if a tokenizer of `tokenizer_vocab` tokens cannot be the model's:
    more tokens than the model's `d_vocab`, or fewer by more than [`MAX_VOCAB_PADDING`][]."""
    if tokenizer_vocab is None:
        return
    d_vocab = model.cfg.d_vocab
    if tokenizer_vocab > d_vocab or d_vocab - tokenizer_vocab > MAX_VOCAB_PADDING:
        raise ValueError(
            f"Tokenizer mismatch: {tokenizer_name} has {tokenizer_vocab} tokens but the model's "
            f"d_vocab is {d_vocab}. Use the tokenizer the model was trained with (or a model "
            "built for this tokenizer)."
        )


def check_token_range(model: Transformer, tokens, what: str) -> None:
    """Raises a `ValueError` if any token id lies outside the model's vocabulary."""
    arr = np.asarray(tokens)
    if arr.size and (arr.min() < 0 or arr.max() >= model.cfg.d_vocab):
        raise ValueError(
            f"Tokenizer mismatch: {what} hold token ids in [{arr.min()}, {arr.max()}] but the "
            f"model's vocabulary is [0, {model.cfg.d_vocab}). Use the model's own tokenizer."
        )


def check_single_tokens(
    tokenize: Tokenize, words: Sequence[str], *, what: str, prefix: str = " "
) -> list[int]:
    """The token id of `prefix + word` for each word, checking that each is exactly one token.
    Raises one `ValueError` listing every word that is not."""
    ids, bad = [], []
    for word in words:
        toks = list(tokenize(prefix + word))
        if len(toks) != 1:
            bad.append(f"{prefix + word!r} -> {toks}")
        else:
            ids.append(int(toks[0]))
    if bad:
        raise ValueError(
            f"These {what} are not single tokens for this tokenizer (each must be one token "
            f"with the prefix {prefix!r}): " + "; ".join(bad) + ". Is this the tokenizer the "
            "task was written for (GPT-2's BPE)? Remove them from the list or use that tokenizer."
        )
    return ids


def tokenize_all(
    tokenize: Tokenize, prompts: Sequence[str], length: int, *, what: str, bos: int | None = None
) -> np.ndarray:
    """Tokenizes every prompt (with `bos` in front if given) and checks that each has exactly
    `length` tokens (BOS included). Returns an `int32` array `(n, length)`; raises one
    `ValueError` listing (up to five) offending prompts otherwise."""
    rows, bad = [], []
    for i, prompt in enumerate(prompts):
        toks = ([] if bos is None else [bos]) + [int(t) for t in tokenize(prompt)]
        if len(toks) != length:
            bad.append(f"#{i} {prompt!r} -> {len(toks)} tokens")
        rows.append(toks)
    if bad:
        raise ValueError(
            f"{len(bad)} of {len(prompts)} {what} do not tokenize to the template's {length} "
            "tokens: " + "; ".join(bad[:5]) + ("; ..." if len(bad) > 5 else "") + ". The "
            "tokenizer splits some word differently from the one the template was checked with."
        )
    return np.asarray(rows, np.int32).reshape(len(prompts), length)


def default_gpt2_tokenizer():
    """GPT-2's BPE tokenizer from files installed with a package (no download)."""
    from jacdc.models import gpt2_tokenizer

    return gpt2_tokenizer()


# ---------------------------------------------------------------------------------------------
# Models


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """How a task gets its model: the architecture, a loader and a how-to for the weights.

    - `name`: e.g. `"gpt2"`.
    - `config`: the full-size architecture (for `weights="random"`).
    - `small`: a small model of the same kind and vocabulary (for `weights="random-small"`).
    - `load`: `load(weights) -> Transformer` for a path or hub id (imported lazily).
    - `how_to`: what to pass as `--weights`.
    """

    name: str
    config: Callable[[], TransformerConfig]
    small: Callable[[], TransformerConfig]
    load: Callable[[str], Transformer]
    how_to: str


def small_config(cfg: TransformerConfig, n_layers: int | None = None) -> TransformerConfig:
    """A small model of the same kind as `cfg`: same vocabulary, positional scheme and MLP-ness,
    width 64, 4 heads."""
    return dataclasses.replace(
        cfg,
        n_layers=cfg.n_layers if n_layers is None else n_layers,
        n_heads=4,
        d_model=64,
        d_head=16,
        d_mlp=None if cfg.d_mlp is None else 256,
        n_ctx=min(cfg.n_ctx, 1024),
    )


def resolve_model(
    kind: ModelKind, weights: str | None, model: Transformer | None, *, seed: int = 0
) -> Transformer:
    """The model a builder runs on: `model` if given, else loaded from `weights`.

    `weights` is a checkpoint path or hub id, `"random"` (the real architecture, random weights:
    for demos and tests only, its circuits mean nothing) or `"random-small"` (a small model of
    the same kind; quick)."""
    if model is not None:
        if weights is not None:
            raise ValueError("Pass either `model=` or `weights=`, not both.")
        return model
    if weights is None:
        raise ValueError(
            f"This task runs on {kind.name} and needs its weights: {kind.how_to} "
            "Or pass `--weights random` (the same architecture with random weights; fine for "
            "trying the pipeline, meaningless for circuits)."
        )
    if weights in ("random", "random-small"):
        cfg = kind.config() if weights == "random" else kind.small()
        return Transformer(cfg, key=jr.key(seed))
    return kind.load(weights)


# ---------------------------------------------------------------------------------------------
# Splits


def make_split(
    model: Transformer,
    clean,
    corrupted,
    logit_positions,
    metrics: dict[str, AbstractMetric],
    *,
    kl_weights=None,
) -> Task:
    """A [`jacdc.tasks.Task`][] with a `kl_div` metric (against `model`'s own clean
    distribution at `logit_positions`) plus the given task metrics."""
    clean = jnp.asarray(clean, jnp.int32)
    positions = jnp.asarray(logit_positions, jnp.int32)
    all_metrics: dict[str, AbstractMetric] = {
        "kl_div": kl_metric(model, clean, positions, kl_weights)
    }
    all_metrics.update(metrics)
    return Task(
        clean=clean,
        corrupted=jnp.asarray(corrupted, jnp.int32),
        corrupted_positions=None,
        logit_positions=positions,
        metrics=all_metrics,
    )


def prompt_bundle(
    name: str,
    model: Transformer,
    clean_tokens,
    corrupted_tokens,
    metrics: Callable[[int, int], dict[str, AbstractMetric]],
    *,
    position: int,
    n_val: int,
    n_test: int,
    canonical,
    info: dict,
) -> TaskBundle:
    """A bundle of fixed-length prompts whose metrics read one `position`: the first `n_val`
    rows are the validation split, the next `n_test` the test split; `metrics(lo, hi)` gives the
    task metrics of rows `lo:hi` (a `kl_div` metric is always added; it is the default)."""

    def split(lo: int, hi: int) -> Task:
        return make_split(
            model, clean_tokens[lo:hi], corrupted_tokens[lo:hi], [position], metrics(lo, hi)
        )

    return TaskBundle(
        name=name,
        model=model,
        val=split(0, n_val),
        test=split(n_val, n_val + n_test),
        default_metric="kl_div",
        canonical=canonical,
        info=info,
    )


# ---------------------------------------------------------------------------------------------
# GPT-2 small (IOI, Greater-Than)


def gpt2_small_config() -> TransformerConfig:
    """GPT-2 small's architecture (124M parameters)."""
    return TransformerConfig(
        n_layers=12,
        n_heads=12,
        d_model=768,
        d_head=64,
        d_mlp=3072,
        d_vocab=50257,
        n_ctx=1024,
        act_fn="gelu_new",
        normalization="LN",
        positional="standard",
    )


def _load_gpt2(weights: str) -> Transformer:
    from jacdc.models import load_gpt2

    return load_gpt2(weights)


GPT2_SMALL = ModelKind(
    name="GPT-2 small",
    config=gpt2_small_config,
    small=lambda: small_config(gpt2_small_config(), n_layers=2),
    load=_load_gpt2,
    how_to=(
        "pass `--weights PATH` (Python: `weights=PATH`) with PATH a folder holding GPT-2's "
        "Hugging Face `config.json` and `model.safetensors` (e.g. `hf download "
        "openai-community/gpt2 config.json model.safetensors --local-dir PATH` on a machine "
        "with network access), or a hub id such as `openai-community/gpt2` when online."
    ),
)
