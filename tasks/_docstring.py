'''Docstring on attn-only-4l (Heimersheim & Janiak 2023): predict the next `:param` name.

**Prompts** (the "rest" style; BOS in front), e.g.:

    <BOS>
    def load(self, files, mode, size, batch, token, stream):
        """sound region capital

        :param size: tax wall
        :param batch: film bank
        :param

The def has 6 arguments: 2 prefix, 3 "matching", 1 suffix. The description has 3 words and
each of the 2 `:param` lines documents one of the first 2 matching arguments with 2 words. The
answer is `" " + the 3rd matching argument` (here `" token"`); the 13 wrong names are every
other sampled argument name (prefix, suffix, the other matching ones and the 7 names the
corruptions and the "random answer" variant use), not the method name. Prompts `0..n_val-1`
validate, the next `n_test` test (the paper: 50/50).

**Data.** `data="paper"` (the default) gives the original implementation's 100 prompts exactly:
its word lists (111 argument names, 687 nouns) and, for prompt `i`, Python's `random` seeded
`seed + i` (`seed=0` is the paper's; [`jacdc.tasks._paper_data.paper_docstring_prompt`][]).
`data="jacdc"` draws jacdc's own prompts ([`VARIABLE_NAMES`][], [`DESCRIPTION_WORDS`][]) with
NumPy's `default_rng([seed, i])`.

**Corruption ("random_random").** The 3 matching def arguments and the 2 documented names are
replaced by 5 fresh random names (everything else kept).

**Tokenizer.** attn-only-4l was trained with `NeelNanda/gpt-neox-tokenizer-digits` (48,262
tokens), which is not bundled with any package here and cannot be downloaded at run time. Pass
it yourself: `tokenizer=PATH` to its `tokenizer.json` (loaded with the `tokenizers` library;
get it with `hf download NeelNanda/gpt-neox-tokenizer-digits tokenizer.json`), or any callable
`str -> list[int]` with `bos=` its BOS id. The paper data use the original's word lists as
they are (every prompt is 41 tokens with BOS with the original tokenizer, 53 with GPT-2's).
jacdc's data *filter* the word lists per tokenizer: argument names and description words must be
one token with a leading space (the first description word, which follows `"""`, also without
one); dropped words are listed in `info["dropped_words"]`. Every prompt must have the same
length or the build fails. A tokenizer whose vocabulary does not fit
the model's `d_vocab` (e.g. GPT-2's 50,257 tokens for attn-only-4l's 48,262) is refused.
With `weights="random"` and no tokenizer, GPT-2's tokenizer is used and the random model gets
GPT-2's vocabulary size (a stand-in for demos and tests only).

**Metrics** (minimised, at the last position): `kl_div`; and `docstring_metric`,
`-(logit(correct) - max logit over the 13 wrong names)` averaged over the batch
([`jacdc.tasks.DocstringMetric`][]).

The canonical circuit (37 edges) is [`jacdc.tasks.docstring_circuit`][].
'''

import dataclasses
import os

import jax.numpy as jnp
import jax.random as jr
import numpy as np

from jacdc.models import Transformer

from ._base import TaskBundle
from ._canonical import ATTN_4L_SHAPE, docstring_circuit
from ._common import (
    DocstringMetric,
    as_tokenize,
    check_data,
    check_token_range,
    check_vocab,
    default_gpt2_tokenizer,
    make_split,
    small_config,
    tokenize_all,
    vocab_size_of,
)
from ._paper_data import paper_docstring_prompts
from ._registry import TaskSpec, register_task


# Common Python identifiers (argument and method names).
VARIABLE_NAMES = (
    "data", "name", "file", "value", "test", "result", "line", "user", "key", "default",
    "request", "path", "output", "node", "item", "url", "model", "response", "text", "version",
    "function", "log", "string", "field", "start", "number", "values", "index", "error",
    "context", "image", "message", "check", "json", "size", "event", "state", "row", "obj",
    "parser", "end", "files", "form", "query", "fields", "instance", "label", "run", "action",
    "target", "array", "code", "num", "table", "source", "msg", "config", "options", "update",
    "module", "status", "group", "content", "client", "filename", "results", "last", "command",
    "val", "base", "format", "color", "settings", "order", "count", "match", "tag", "title",
    "parent", "call", "session", "token", "server", "host", "date", "description", "mode",
    "project", "info", "page", "header", "option", "task", "shape", "load", "names", "port",
    "root", "buffer", "cache", "length", "width", "height", "offset", "limit", "filter",
    "prefix", "suffix", "pattern", "callback", "handler", "logger", "stream", "socket",
    "channel", "queue", "batch", "weights", "layer", "scale", "step", "seed", "epoch", "loss",
    "rate", "score", "kind", "flag", "mask",
)  # fmt: skip
# Common English nouns for the descriptions.
DESCRIPTION_WORDS = (
    "price", "control", "action", "cost", "issue", "process", "position", "course", "minute",
    "education", "type", "research", "subject", "age", "force", "order", "value", "matter",
    "health", "lot", "street", "class", "mind", "condition", "paper", "bank", "century",
    "section", "activity", "table", "building", "sense", "sort", "staff", "team", "student",
    "language", "town", "plan", "management", "morning", "product", "practice", "evidence",
    "ground", "letter", "foot", "game", "food", "union", "role", "event", "land", "art",
    "support", "range", "stage", "trade", "voice", "club", "field", "history", "parent",
    "account", "material", "care", "manager", "project", "record", "example", "training",
    "window", "air", "light", "quality", "rule", "story", "tax", "worker", "nature", "method",
    "unit", "detail", "date", "wall", "computer", "amount", "bit", "chapter", "property",
    "director", "leader", "board", "production", "operation", "share", "contract", "picture",
    "security", "source", "future", "site", "loss", "shop", "animal", "heart", "purpose",
    "standard", "page", "doctor", "factor", "music", "charge", "pattern", "design", "piece",
    "population", "tree", "knowledge", "performance", "plant", "pressure", "fire",
    "environment", "size", "analysis", "rest", "success", "thought", "region", "list", "space",
    "statement", "demand", "step", "capital", "choice", "player", "station", "film", "feature",
    "income", "cup", "technology", "machine", "cell", "degree", "energy", "growth", "treatment",
    "risk", "sound",
)  # fmt: skip

N_DEF_PREFIX, N_MATCHING, N_DEF_SUFFIX = 2, 3, 1
N_DESCRIPTION_WORDS, N_PARAM_WORDS = 3, 2
N_WRONG = 13
ATTN_ONLY_4L_TOKENIZER = "NeelNanda/gpt-neox-tokenizer-digits"


def docstring_prompt(
    method: str,
    description: list[str],
    def_args: list[str],
    doc_args: list[str],
    doc_descriptions: list[list[str]],
) -> str:
    """One prompt in the "rest" style (without BOS), ending at the open `:param`."""
    indent = "    "
    params = "".join(
        f"{indent}:param {arg}: {' '.join(words)}\n"
        for arg, words in zip(doc_args, doc_descriptions)
    )
    return (
        f"\ndef {method}(self, {', '.join(def_args)}):\n"
        f'{indent}"""{" ".join(description)}\n\n'
        f"{params}{indent}:param"
    )


@dataclasses.dataclass(frozen=True)
class DocstringPrompts:
    """Host-side Docstring data.

    - `clean`, `corrupted`: prompt strings (without BOS).
    - `answers`: `" " + correct name`; `wrong_answers`: the 13 wrong names, each with a space.
    - `clean_tokens`, `corrupted_tokens`: `(n, seq)` int32 with BOS.
    - `correct_tokens`: `(n,)`; `wrong_tokens`: `(n, 13)`.
    - `dropped_words`: list entries that are not single tokens for this tokenizer.
    """

    clean: list[str]
    corrupted: list[str]
    answers: list[str]
    wrong_answers: list[list[str]]
    clean_tokens: np.ndarray
    corrupted_tokens: np.ndarray
    correct_tokens: np.ndarray
    wrong_tokens: np.ndarray
    dropped_words: list[str]

    def __len__(self) -> int:
        return len(self.clean)


def _single(tokenize, word: str, prefix: str) -> int | None:
    toks = list(tokenize(prefix + word))
    return int(toks[0]) if len(toks) == 1 else None


def make_docstring_prompts(
    tokenizer, *, n: int = 100, seed: int = 0, bos: int | None = None, data: str = "paper"
) -> DocstringPrompts:
    """Draws `n` docstring prompts and their "random_random" corruptions.

    **Arguments:**

    - `tokenizer`: callable `str -> list[int]` or object with `.encode`.
    - `n`: number of prompts.
    - `seed`: prompt `i` is drawn with Python's `random.seed(seed + i)` for `data="paper"`
        (`seed=0`: the paper's prompts), with `np.random.default_rng([seed, i])` for
        `data="jacdc"`.
    - `bos`: BOS token id put in front of every prompt (`None`: no BOS).
    - `data`: `"paper"` (the original's prompts and word lists) or `"jacdc"` (jacdc's draws
        from word lists filtered to this tokenizer's single tokens).

    An answer's token is the first token of `" " + name`, as in the original (with the
    tokenizer the task was written for every name is one token).

    **Raises:** `ValueError` if (jacdc data) too few names or words are single tokens, or the
    prompts do not all tokenize to the same length.
    """
    tokenize = as_tokenize(tokenizer)
    check_data(data, "docstring")
    if data == "paper":
        if n < 1:
            raise ValueError(f"Need at least one docstring prompt, got n={n}.")
        drawn = paper_docstring_prompts(n, seed=seed)
        clean, corrupted = [p.clean for p in drawn], [p.corrupted for p in drawn]
        answers, wrong_answers = [p.correct for p in drawn], [p.wrong for p in drawn]
        dropped: list[str] = []
    else:
        clean, corrupted, answers, wrong_answers, dropped = _jacdc_draws(tokenize, n, seed)
    if any(len(w) != N_WRONG for w in wrong_answers):
        raise AssertionError("internal: every docstring prompt has 13 wrong names")

    prefix_len = 0 if bos is None else 1
    length = prefix_len + len(list(tokenize(clean[0])))
    clean_tokens = tokenize_all(tokenize, clean, length, what="docstring prompts", bos=bos)
    corrupted_tokens = tokenize_all(
        tokenize, corrupted, length, what="corrupted docstring prompts", bos=bos
    )
    first = {w: _first_token(tokenize, w) for w in {*answers, *sum(wrong_answers, [])}}
    return DocstringPrompts(
        clean=clean,
        corrupted=corrupted,
        answers=answers,
        wrong_answers=wrong_answers,
        clean_tokens=clean_tokens,
        corrupted_tokens=corrupted_tokens,
        correct_tokens=np.array([first[a] for a in answers], np.int32),
        wrong_tokens=np.array([[first[w] for w in ws] for ws in wrong_answers], np.int32),
        dropped_words=dropped,
    )


def _first_token(tokenize, text: str) -> int:
    toks = list(tokenize(text))
    if not toks:
        raise ValueError(f"The tokenizer gives no token for the docstring answer {text!r}.")
    return int(toks[0])


def _jacdc_draws(tokenize, n: int, seed: int):
    """jacdc's own docstring draws: clean and corrupted prompts, answers, wrong answers and
    the words dropped from the lists for not being single tokens."""
    name_ids = {w: _single(tokenize, w, " ") for w in VARIABLE_NAMES}
    word_ids = {w: _single(tokenize, w, " ") for w in DESCRIPTION_WORDS}
    names = [w for w, t in name_ids.items() if t is not None]
    words = [w for w, t in word_ids.items() if t is not None]
    first_words = [w for w in words if _single(tokenize, w, "") is not None]
    dropped = [w for w, t in {**name_ids, **word_ids}.items() if t is None]
    n_names = 1 + 1 + 2 * N_MATCHING + 2 * (N_MATCHING - 1) + N_DEF_PREFIX + N_DEF_SUFFIX
    if len(names) < 2 * n_names or len(words) < 2 * N_DESCRIPTION_WORDS or not first_words:
        raise ValueError(
            f"Only {len(names)} of {len(VARIABLE_NAMES)} argument names and {len(words)} of "
            f"{len(DESCRIPTION_WORDS)} description words are single tokens (with a leading "
            "space) for this tokenizer; the docstring task needs a code tokenizer in which "
            f"common identifiers are one token (attn-only-4l's is {ATTN_ONLY_4L_TOKENIZER})."
        )
    if n < 1:
        raise ValueError(f"Need at least one docstring prompt, got n={n}.")

    clean, corrupted, answers, wrong_answers = [], [], [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        picked = [names[j] for j in rng.choice(len(names), n_names, replace=False)]
        method, random_answer, *rest = picked
        rr_def, rest = rest[:N_MATCHING], rest[N_MATCHING:]
        rr_doc, rest = rest[: N_MATCHING - 1], rest[N_MATCHING - 1 :]
        not_matching, rest = rest[: N_MATCHING - 1], rest[N_MATCHING - 1 :]
        matching, rest = rest[:N_MATCHING], rest[N_MATCHING:]
        prefix, suffix = rest[:N_DEF_PREFIX], rest[N_DEF_PREFIX:]
        first = first_words[rng.integers(len(first_words))]
        others = [w for w in words if w != first]
        description = [first] + [
            others[j] for j in rng.choice(len(others), N_DESCRIPTION_WORDS - 1, replace=False)
        ]
        doc_descriptions = [
            [words[j] for j in rng.choice(len(words), N_PARAM_WORDS, replace=False)]
            for _ in range(N_MATCHING - 1)
        ]
        clean.append(
            docstring_prompt(
                method, description, prefix + matching + suffix, matching[:-1], doc_descriptions
            )
        )
        corrupted.append(
            docstring_prompt(
                method, description, prefix + rr_def + suffix, rr_doc, doc_descriptions
            )
        )
        answers.append(" " + matching[-1])
        wrong = [random_answer] + rr_def + rr_doc + not_matching + matching[:-1] + prefix + suffix
        wrong_answers.append([" " + w for w in wrong])
    return clean, corrupted, answers, wrong_answers, dropped


def make_docstring_task(
    model: Transformer,
    tokenizer,
    *,
    bos: int | None,
    seed: int = 0,
    n_val: int = 50,
    n_test: int = 50,
    data: str = "paper",
) -> TaskBundle:
    """The Docstring task for `model` (attn-only-4l with its own tokenizer).

    **Arguments:**

    - `model`: the [`jacdc.models.Transformer`][].
    - `tokenizer`: the model's tokenizer (callable or object with `.encode`; if it declares a
        vocabulary size, that is checked against `model.cfg.d_vocab`).
    - `bos`: the BOS id put in front of every prompt (`None`: none).
    - `seed`, `n_val`, `n_test`: the draw and the split sizes.
    - `data`: `"paper"` (the original's prompts; default) or `"jacdc"` (jacdc's own draws).

    **Returns:** a [`jacdc.tasks.TaskBundle`][] with metrics `kl_div` (default) and
    `docstring_metric`; the canonical circuit when `model` has attn-only-4l's graph.
    """
    check_vocab(model, vocab_size_of(tokenizer), tokenizer_name="the docstring tokenizer")
    prompts = make_docstring_prompts(tokenizer, n=n_val + n_test, seed=seed, bos=bos, data=data)
    check_token_range(model, prompts.clean_tokens, "docstring prompts")
    check_token_range(model, prompts.wrong_tokens, "docstring answers")
    last = prompts.clean_tokens.shape[1] - 1

    def split(lo: int, hi: int):
        metric = DocstringMetric(
            correct=jnp.asarray(prompts.correct_tokens[lo:hi]),
            wrong=jnp.asarray(prompts.wrong_tokens[lo:hi]),
        )
        return make_split(
            model,
            prompts.clean_tokens[lo:hi],
            prompts.corrupted_tokens[lo:hi],
            [last],
            {"docstring_metric": metric},
        )

    return TaskBundle(
        name="docstring",
        model=model,
        val=split(0, n_val),
        test=split(n_val, n_val + n_test),
        default_metric="kl_div",
        canonical=docstring_circuit() if model.graph_shape == ATTN_4L_SHAPE else None,
        info={
            "data": data,
            "seed": seed,
            "seq_len": int(prompts.clean_tokens.shape[1]),
            "bos": bos,
            "val_prompts": prompts.clean[:n_val],
            "test_prompts": prompts.clean[n_val:],
            "val_answers": prompts.answers[:n_val],
            "test_answers": prompts.answers[n_val:],
            "dropped_words": prompts.dropped_words,
        },
    )


class FileTokenizer:
    """A `tokenizer.json` (Hugging Face `tokenizers` format) as a task tokenizer: `encode`
    returns the ids of the text alone (no special tokens added), `vocab_size` counts added
    tokens, and `bos_token_id` is the id of `<|BOS|>` or else `<|endoftext|>` (`None` if the
    file has neither)."""

    def __init__(self, path: str | os.PathLike):
        try:
            import tokenizers
        except ImportError as err:
            raise ImportError(
                "Reading a tokenizer.json needs the `tokenizers` package: pip install tokenizers."
            ) from err
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No tokenizer file {os.fspath(path)!r}. Pass the model's tokenizer.json (for "
                f"attn-only-4l: `hf download {ATTN_ONLY_4L_TOKENIZER} tokenizer.json`)."
            )
        self._tokenizer = tokenizers.Tokenizer.from_file(os.fspath(path))
        self.vocab_size: int = self._tokenizer.get_vocab_size(with_added_tokens=True)
        ids = [self._tokenizer.token_to_id(t) for t in ("<|BOS|>", "<|endoftext|>")]
        self.bos_token_id: int | None = next((int(i) for i in ids if i is not None), None)

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)


def bos_of(tokenizer) -> int | None:
    """The BOS id a tokenizer declares: its `bos_token_id` or `eot_token_id` attribute, or the
    `<|BOS|>` / `<|endoftext|>` token of a `tokenizers.Tokenizer`; `None` if it declares none."""
    for name in ("bos_token_id", "eot_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, (int, np.integer)):
            return int(value)
    token_to_id = getattr(tokenizer, "token_to_id", None)
    if callable(token_to_id):
        for token in ("<|BOS|>", "<|endoftext|>"):
            value = token_to_id(token)
            if value is not None:
                return int(value)
    return None


def _attn_only_4l_config():
    from jacdc.models import KNOWN_CONFIGS

    return KNOWN_CONFIGS["attn-only-4l"]


_NO_TOKENIZER = (
    f"The docstring task needs attn-only-4l's tokenizer ({ATTN_ONLY_4L_TOKENIZER}, 48,262 "
    "tokens), which is not bundled and cannot be downloaded here. Get its tokenizer.json on a "
    f"machine with network access (`hf download {ATTN_ONLY_4L_TOKENIZER} tokenizer.json "
    "--local-dir DIR`) and pass `tokenizer=DIR/tokenizer.json` (or a tokenizer object)."
)


def build_docstring(
    weights: str | None = None,
    seed: int = 0,
    n_val: int = 50,
    n_test: int = 50,
    model: Transformer | None = None,
    tokenizer=None,
    bos: int | None = None,
    data: str = "paper",
) -> TaskBundle:
    """Registry builder of `"docstring"`.

    - `weights`: an attn-only-4l TransformerLens checkpoint (file, folder or hub id), or
        `"random"` / `"random-small"` (random weights: demos and tests only).
    - `model`: a ready model instead of `weights`.
    - `tokenizer`: path to the model's `tokenizer.json`, or a tokenizer object / callable.
        Required with real weights (see the module docstring); defaults to GPT-2's with random
        weights, the random model then taking GPT-2's vocabulary size.
    - `bos`: BOS id; by default taken from the tokenizer ([`bos_of`][]).
    - `data`: `"paper"` (the original's prompts) or `"jacdc"`.
    """
    check_data(data, "docstring")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = FileTokenizer(tokenizer)
    if model is not None and weights is not None:
        raise ValueError("Pass either `model=` or `weights=`, not both.")
    random_weights = model is None and weights in ("random", "random-small")
    if tokenizer is None and not random_weights and weights is not None:
        raise ValueError(_NO_TOKENIZER)
    if model is None:
        if weights is None:
            raise ValueError(
                "The docstring task runs on attn-only-4l and needs its weights: pass `--weights "
                "PATH` (Python: `weights=PATH`) with PATH a TransformerLens checkpoint of "
                "NeelNanda/Attn_Only_4L512W_C4_Code (the file ending in final.pth, or its "
                "folder), or that hub id when online; and its tokenizer as `tokenizer=PATH` to "
                f"{ATTN_ONLY_4L_TOKENIZER}'s tokenizer.json. Or pass `--weights random` (random "
                "weights; fine for trying the pipeline, meaningless for circuits)."
            )
        if weights in ("random", "random-small"):
            if tokenizer is None:
                tokenizer = default_gpt2_tokenizer()
            cfg = _attn_only_4l_config()
            if weights == "random-small":
                cfg = small_config(cfg)
            vocab = vocab_size_of(tokenizer)
            if vocab is not None:
                cfg = dataclasses.replace(cfg, d_vocab=vocab)
            model = Transformer(cfg, key=jr.key(seed))
        else:
            from jacdc.models import load_attn_only_4l

            model = load_attn_only_4l(weights)
    if tokenizer is None:
        raise ValueError(_NO_TOKENIZER)
    if bos is None:
        bos = bos_of(tokenizer)
    return make_docstring_task(
        model, tokenizer, bos=bos, seed=seed, n_val=n_val, n_test=n_test, data=data
    )


register_task(
    TaskSpec(
        name="docstring",
        description="Docstring parameter-name induction on attn-only-4l (random_random "
        "corruption; the original's prompts by default); canonical circuit of 37 edges. Needs "
        "the model's tokenizer.",
        build=build_docstring,
        metrics=("kl_div", "docstring_metric"),
        default_metric="kl_div",
        needs_weights=True,
    )
)
