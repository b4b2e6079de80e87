"""Indirect Object Identification (IOI) on GPT-2 small (Wang et al. 2022).

**Prompts.** One ABBA template (the paper's template #0):

    "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to [A]"

with `A` (the indirect object, IO) and `B` (the subject, S) two different names. With GPT-2's
tokenizer the sentence is 16 tokens and no BOS; the final name is dropped, so the model reads 15
tokens and should predict " A". Names, places and objects are single tokens with a leading space
(checked against the tokenizer, failing loudly otherwise). 200 prompts are drawn; the first
`n_val` are the validation split, the next `n_test` the test split.

**Data.** `data="paper"` (the default) gives the original implementation's 200 prompts and
corruptions exactly (its 99 names, 8 places and 8 objects and its draws:
[`jacdc.tasks._paper_data.paper_ioi_sentences`][]; `seed` is the original's `IOIDataset`
seed, 0 in the paper). `data="jacdc"` draws jacdc's own prompts from larger word lists
([`IOI_NAMES`][], [`IOI_PLACES`][], [`IOI_OBJECTS`][]) with NumPy's `default_rng(seed)`.

**Corruption ("ABC").** The name slots IO, S1 and S2 replaced by random names: "Then, C and D
went to the [PLACE]. E gave a [OBJECT] to". In jacdc's data C, D and E are three distinct names
other than IO and S. The original's (paper data) draws C other than IO and S, then D = E
freely, then D again freely, so a corrupted prompt can repeat a name.

**Metrics** (minimised, at the last position): `kl_div`, KL(original model || circuit); and
`logit_diff`, `-(logit(IO) - logit(S))` averaged over the batch
([`jacdc.tasks.LogitDiffMetric`][]).

The canonical circuit (1,041 edges) is [`jacdc.tasks.ioi_circuit`][].
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from jacdc.models import Transformer

from ._base import TaskBundle
from ._canonical import GPT2_SHAPE, ioi_circuit
from ._common import (
    GPT2_SMALL,
    LogitDiffMetric,
    as_tokenize,
    check_data,
    check_single_tokens,
    check_token_range,
    check_vocab,
    default_gpt2_tokenizer,
    prompt_bundle,
    resolve_model,
    tokenize_all,
    vocab_size_of,
)
from ._paper_data import (
    PAPER_IOI_NAMES,
    PAPER_IOI_OBJECTS,
    PAPER_IOI_PLACES,
    paper_ioi_sentences,
)
from ._registry import TaskSpec, register_task


IOI_TEMPLATE = "Then, {A} and {B} went to the {PLACE}. {B} gave a {OBJECT} to {A}"
IOI_LENGTH = 15
"""Tokens the model reads: the 16-token sentence without its final name."""

# Common English first names, each a single GPT-2 token with a leading space.
IOI_NAMES = (
    "Mary", "John", "James", "Michael", "David", "Robert", "William", "Richard", "Thomas",
    "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Paul", "Steven", "Andrew", "Kevin",
    "Brian", "George", "Edward", "Ronald", "Timothy", "Jason", "Jeffrey", "Ryan", "Jacob",
    "Gary", "Nicholas", "Eric", "Jonathan", "Stephen", "Larry", "Justin", "Scott", "Brandon",
    "Benjamin", "Samuel", "Frank", "Gregory", "Raymond", "Alexander", "Patrick", "Jack",
    "Dennis", "Jerry", "Tyler", "Aaron", "Henry", "Adam", "Peter", "Nathan", "Douglas", "Kyle",
    "Walter", "Ethan", "Jeremy", "Harold", "Keith", "Roger", "Patricia", "Jennifer", "Linda",
    "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah", "Karen", "Nancy", "Lisa", "Betty",
    "Margaret", "Sandra", "Ashley", "Kimberly", "Emily", "Donna", "Michelle", "Dorothy",
    "Carol", "Amanda", "Melissa", "Deborah", "Stephanie", "Rebecca", "Sharon", "Laura",
    "Cynthia", "Kathleen", "Amy", "Helen", "Anna", "Brenda", "Pamela", "Nicole", "Emma",
    "Rachel", "Catherine", "Julie",
)  # fmt: skip
IOI_PLACES = (
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station", "park",
    "beach", "library", "market", "church", "museum", "airport", "hotel",
)  # fmt: skip
# Consonant-initial, so that "gave a [OBJECT]" reads naturally.
IOI_OBJECTS = (
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack", "book",
    "letter", "gift", "ball", "key", "phone", "camera", "bottle", "flower", "card", "cake",
    "sandwich", "pen", "hat", "coat", "bag", "box", "cup", "watch", "guitar", "ticket", "map",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class IOIPrompts:
    """Host-side IOI data (strings and NumPy arrays; never passed to jitted code).

    - `clean`, `corrupted`: the prompts as read by the model (final name dropped).
    - `clean_full`, `corrupted_full`: the complete sentences (ending with the IO name, the
        corrupted IO name in `corrupted_full`).
    - `io_names`, `s_names`: the IO (answer) and S names, without the leading space.
    - `clean_tokens`, `corrupted_tokens`: `(n, 15)` int32.
    - `io_tokens`, `s_tokens`: `(n,)` int32, the tokens of `" " + name`.
    """

    clean: list[str]
    corrupted: list[str]
    clean_full: list[str]
    corrupted_full: list[str]
    io_names: list[str]
    s_names: list[str]
    clean_tokens: np.ndarray
    corrupted_tokens: np.ndarray
    io_tokens: np.ndarray
    s_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.clean)


def _prompt(io: str, s1: str, s2: str, place: str, obj: str) -> str:
    """[`IOI_TEMPLATE`][] without its final name; S1 and S2 differ only in the ABC corruption."""
    return f"Then, {io} and {s1} went to the {place}. {s2} gave a {obj} to"


def make_ioi_prompts(tokenizer, *, n: int = 200, seed: int = 0, data: str = "paper") -> IOIPrompts:
    """Draws `n` IOI prompts (ABBA template #0) and their ABC corruptions.

    **Arguments:**

    - `tokenizer`: a callable `str -> list[int]` or an object with `.encode` (GPT-2's BPE).
    - `n`: number of prompts.
    - `seed`: seed of the draw (keyword-only): the original's `IOIDataset` seed for
        `data="paper"` (0: the paper's prompts), a NumPy seed for `data="jacdc"`.
    - `data`: `"paper"` (the original's prompts) or `"jacdc"` (see the module docstring).

    **Raises:** `ValueError` if a name, place or object is not a single token with a leading
    space, or a prompt does not tokenize to 15 tokens (16 with the answer) with the names where
    the template puts them.
    """
    tokenize = as_tokenize(tokenizer)
    check_data(data, "IOI")
    names, places, objects = (
        (PAPER_IOI_NAMES, PAPER_IOI_PLACES, PAPER_IOI_OBJECTS)
        if data == "paper"
        else (IOI_NAMES, IOI_PLACES, IOI_OBJECTS)
    )
    name_ids = dict(zip(names, check_single_tokens(tokenize, names, what="IOI names")))
    check_single_tokens(tokenize, places, what="IOI places")
    check_single_tokens(tokenize, objects, what="IOI objects")
    if n < 1:
        raise ValueError(f"Need at least one IOI prompt, got n={n}.")

    if data == "paper":
        sentences = paper_ioi_sentences(n, seed=seed)
        clean_full, corrupted_full = sentences.clean, sentences.corrupted
        io_names, s_names = sentences.io_names, sentences.s_names
    else:
        clean_full, corrupted_full, io_names, s_names = _jacdc_sentences(n, seed)
    clean = [text.rsplit(" ", 1)[0] for text in clean_full]
    corrupted = [text.rsplit(" ", 1)[0] for text in corrupted_full]

    length = IOI_LENGTH + 1
    full_tokens = tokenize_all(tokenize, clean_full, length, what="IOI sentences")
    corrupted_full_tokens = tokenize_all(
        tokenize, corrupted_full, length, what="corrupted IOI sentences"
    )
    clean_tokens = np.ascontiguousarray(full_tokens[:, :IOI_LENGTH])
    corrupted_tokens = np.ascontiguousarray(corrupted_full_tokens[:, :IOI_LENGTH])
    io_tokens = np.array([name_ids[x] for x in io_names], np.int32)
    s_tokens = np.array([name_ids[x] for x in s_names], np.int32)
    # The model reads what the original reads: the first 15 tokens of the full sentence.
    # "Then"(0) ","(1) " A"(2) " and"(3) " B"(4) ... "."(9) " B"(10) " gave"(11) ... " to"(14)
    if not (
        np.array_equal(clean_tokens[:, 2], io_tokens)
        and np.array_equal(clean_tokens[:, 4], s_tokens)
        and np.array_equal(clean_tokens[:, 10], s_tokens)
        and np.array_equal(full_tokens[:, IOI_LENGTH], io_tokens)
    ):
        raise ValueError(
            "IOI prompts tokenize with the names away from positions 2, 4, 10 and 15 that the "
            "template puts them at; is this GPT-2's tokenizer?"
        )
    return IOIPrompts(
        clean=clean,
        corrupted=corrupted,
        clean_full=list(clean_full),
        corrupted_full=list(corrupted_full),
        io_names=list(io_names),
        s_names=list(s_names),
        clean_tokens=clean_tokens,
        corrupted_tokens=corrupted_tokens,
        io_tokens=io_tokens,
        s_tokens=s_tokens,
    )


def _jacdc_sentences(n: int, seed: int):
    """jacdc's own draw: complete clean and corrupted sentences, IO and S names."""
    rng = np.random.default_rng(seed)
    names = np.array(IOI_NAMES)
    clean, corrupted, io_names, s_names = [], [], [], []
    for _ in range(n):
        io, s = rng.choice(names, 2, replace=False)
        place = IOI_PLACES[rng.integers(len(IOI_PLACES))]
        obj = IOI_OBJECTS[rng.integers(len(IOI_OBJECTS))]
        c, d, e = rng.choice(names, 3, replace=False)
        clean.append(_prompt(str(io), str(s), str(s), place, obj) + f" {io}")
        corrupted.append(_prompt(str(c), str(d), str(e), place, obj) + f" {c}")
        io_names.append(str(io))
        s_names.append(str(s))
    return clean, corrupted, io_names, s_names


def make_ioi_task(
    model: Transformer,
    tokenizer,
    *,
    seed: int = 0,
    n_val: int = 100,
    n_test: int = 100,
    data: str = "paper",
) -> TaskBundle:
    """The IOI task for `model` (GPT-2 small, or any model with GPT-2's vocabulary).

    **Arguments:**

    - `model`: the [`jacdc.models.Transformer`][] (for the KL baseline).
    - `tokenizer`: GPT-2's tokenizer (callable or object with `.encode`; if it declares a
        vocabulary size, that is checked against `model.cfg.d_vocab`).
    - `seed`: seed of the prompt draw (0: the paper's setting).
    - `n_val`, `n_test`: split sizes; the first `n_val` prompts validate, the next `n_test` test.
    - `data`: `"paper"` (the original's prompts; default) or `"jacdc"` (jacdc's own draws).

    **Returns:** a [`jacdc.tasks.TaskBundle`][] with metrics `kl_div` (default) and
    `logit_diff`, the canonical circuit when `model` has GPT-2 small's graph, and the prompts in
    `info`.
    """
    check_vocab(model, vocab_size_of(tokenizer), tokenizer_name="the IOI tokenizer")
    prompts = make_ioi_prompts(tokenizer, n=n_val + n_test, seed=seed, data=data)
    check_token_range(model, prompts.clean_tokens, "IOI prompts")

    def metrics(lo: int, hi: int):
        correct, wrong = prompts.io_tokens[lo:hi], prompts.s_tokens[lo:hi]
        return {"logit_diff": LogitDiffMetric(correct=jnp.asarray(correct),
                                              wrong=jnp.asarray(wrong))}  # fmt: skip

    return prompt_bundle(
        "ioi",
        model,
        prompts.clean_tokens,
        prompts.corrupted_tokens,
        metrics,
        position=IOI_LENGTH - 1,
        n_val=n_val,
        n_test=n_test,
        canonical=ioi_circuit() if model.graph_shape == GPT2_SHAPE else None,
        info={
            "data": data,
            "seed": seed,
            "template": IOI_TEMPLATE,
            "val_prompts": prompts.clean[:n_val],
            "test_prompts": prompts.clean[n_val:],
            "val_corrupted": prompts.corrupted[:n_val],
            "test_corrupted": prompts.corrupted[n_val:],
            "val_answers": [" " + x for x in prompts.io_names[:n_val]],
            "test_answers": [" " + x for x in prompts.io_names[n_val:]],
        },
    )


def build_ioi(
    weights: str | None = None,
    seed: int = 0,
    n_val: int = 100,
    n_test: int = 100,
    model: Transformer | None = None,
    tokenizer=None,
    data: str = "paper",
) -> TaskBundle:
    """Registry builder of `"ioi"`: loads GPT-2 small from `weights` (a Hugging Face folder or
    hub id; `"random"` / `"random-small"` for a random model of the same kind, meaningless for
    circuits) or takes `model`, and GPT-2's tokenizer unless `tokenizer` is given; `data` is
    `"paper"` (the original's prompts) or `"jacdc"`."""
    check_data(data, "IOI")
    model = resolve_model(GPT2_SMALL, weights, model, seed=seed)
    tokenizer = default_gpt2_tokenizer() if tokenizer is None else tokenizer
    return make_ioi_task(model, tokenizer, seed=seed, n_val=n_val, n_test=n_test, data=data)


register_task(
    TaskSpec(
        name="ioi",
        description="Indirect object identification on GPT-2 small (ABBA template, ABC "
        "corruption; the original's prompts by default); canonical circuit of 1,041 edges.",
        build=build_ioi,
        metrics=("kl_div", "logit_diff"),
        default_metric="kl_div",
        needs_weights=True,
    )
)
