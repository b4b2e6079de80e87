"""Greater-Than on GPT-2 small (Hanna et al. 2023).

**Prompts.** "The {noun} lasted from the year {XXYY} to {XX}", no BOS, 10 GPT-2 tokens:

    "The" " {noun}" " lasted" " from" " the" " year" " XX" "YY" " to" " XX"

and the model should continue with a two-digit year `"ZZ"` greater than `YY`. Nouns are single
GPT-2 tokens with a leading space (checked). Years are `XX02`..`XX98` for the centuries 11..17,
kept only if `" XXYY"` tokenizes as `" XX"` + `"YY"`, and without the first and last such year of
each century ([`greater_than_years`][], the original's rule). 200 prompts are drawn; the first
`n_val` validate, the next `n_test` test.

**Data.** `data="paper"` (the default) gives the original implementation's prompts exactly: its
120 nouns ([`jacdc.tasks._paper_data.PAPER_GREATER_THAN_NOUNS`][]) drawn, then the years, with
torch's generator after `manual_seed(54 + seed)` (emulated without torch; `seed=0` is the
paper's). `data="jacdc"` draws jacdc's own nouns ([`GREATER_THAN_NOUNS`][]) and years with
NumPy's `default_rng(54 + seed)`.

**Corruption.** Token 7 (the `YY` of the start year) replaced by the token `"01"` (GPT-2 id 486),
making every continuation a later year.

**Metrics** (minimised, at the last position): `kl_div`; and `greaterthan`,
`-(P(ZZ > YY) - P(ZZ <= YY))` with `P` summed over the 100 tokens `"00"`..`"99"`, averaged over
the batch ([`jacdc.tasks.ProbDiffMetric`][]).

The canonical circuit (262 edges) is [`jacdc.tasks.greater_than_circuit`][].
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from jacdc.models import Transformer

from ._base import TaskBundle
from ._canonical import GPT2_SHAPE, greater_than_circuit
from ._common import (
    GPT2_SMALL,
    ProbDiffMetric,
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
from ._paper_data import PAPER_GREATER_THAN_NOUNS, paper_greater_than_draws
from ._registry import TaskSpec, register_task


GREATER_THAN_TEMPLATE = "The {noun} lasted from the year {year} to {century}"
GREATER_THAN_LENGTH = 10
GREATER_THAN_SEED = 54
CORRUPTED_YY = "01"
"""The corruption writes this two-digit token over the start year's `YY` (GPT-2 id 486)."""
CENTURIES = tuple(range(11, 18))

# Things that last, each a single GPT-2 token with a leading space.
GREATER_THAN_NOUNS = (
    'war', 'reign', 'dynasty', 'drought', 'famine', 'plague', 'siege', 'campaign',
    'expedition', 'journey', 'voyage', 'festival', 'ceremony', 'conflict', 'rebellion',
    'revolt', 'revolution', 'uprising', 'crisis', 'depression', 'recession', 'strike',
    'protest', 'movement', 'occupation', 'invasion', 'crusade', 'empire', 'kingdom',
    'republic', 'regime', 'government', 'administration', 'alliance', 'treaty', 'truce',
    'peace', 'partnership', 'marriage', 'friendship', 'relationship', 'rivalry', 'feud',
    'competition', 'tournament', 'season', 'series', 'program', 'project', 'study', 'survey',
    'investigation', 'inquiry', 'experiment', 'mission', 'tour', 'trip', 'pilgrimage', 'exile',
    'imprisonment', 'captivity', 'sentence', 'career', 'tenure', 'term', 'presidency',
    'ministry', 'parliament', 'council', 'assembly', 'congress', 'conference', 'negotiation',
    'construction', 'restoration', 'renovation', 'expansion', 'development', 'reform',
    'transition', 'period', 'era', 'phase', 'cycle', 'tradition', 'ban', 'embargo', 'blockade',
    'quarantine', 'shortage', 'flood', 'storm', 'epidemic', 'outbreak', 'winter', 'frost',
    'eruption', 'migration', 'settlement', 'colony', 'trade', 'industry', 'business',
    'company', 'venture', 'contract', 'agreement', 'struggle', 'fight', 'battle', 'raid',
    'offensive', 'dominance', 'monopoly', 'collaboration', 'union', 'league', 'exhibition',
    'production', 'broadcast',
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class GreaterThanPrompts:
    """Host-side Greater-Than data.

    - `clean`, `corrupted`: prompt strings.
    - `nouns`, `years`: the noun and start year (e.g. 1732) of each prompt.
    - `clean_tokens`, `corrupted_tokens`: `(n, 10)` int32.
    - `year_tokens`: `(100,)` the tokens `"00"`..`"99"`.
    """

    clean: list[str]
    corrupted: list[str]
    nouns: list[str]
    years: list[int]
    clean_tokens: np.ndarray
    corrupted_tokens: np.ndarray
    year_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.clean)


def greater_than_years(tokenizer) -> list[int]:
    """The start years: `XX02`..`XX98` for `XX` in 11..17 such that `" XXYY"` tokenizes as
    `" XX"` + `"YY"`, minus the first and last such year of each century."""
    tokenize = as_tokenize(tokenizer)
    two_digit = check_single_tokens(
        tokenize, [f"{i:02d}" for i in range(100)], what="two-digit years", prefix=""
    )
    years = []
    for century in CENTURIES:
        head = list(tokenize(f" {century}"))
        valid = [
            century * 100 + yy
            for yy in range(2, 99)
            if len(head) == 1 and list(tokenize(f" {century * 100 + yy}")) == head + [two_digit[yy]]
        ]
        years += valid[1:-1]
    if not years:
        raise ValueError(
            "No year in 1102..1798 tokenizes as ' XX' + 'YY' with this tokenizer; the "
            "Greater-Than task needs GPT-2's tokenizer."
        )
    return years


def make_greater_than_prompts(
    tokenizer, *, n: int = 200, seed: int = GREATER_THAN_SEED, data: str = "paper"
) -> GreaterThanPrompts:
    """Draws `n` Greater-Than prompts and their "01" corruptions: with torch's generator seeded
    `seed` and the original's nouns for `data="paper"` (`seed=54`: the paper's prompts), with
    NumPy's seeded `seed` and jacdc's nouns for `data="jacdc"`.

    **Raises:** `ValueError` if a noun or a two-digit year is not a single token, or a prompt
    does not tokenize to the template's 10 tokens with the year split as `" XX"` + `"YY"`.
    """
    tokenize = as_tokenize(tokenizer)
    check_data(data, "Greater-Than")
    noun_list = PAPER_GREATER_THAN_NOUNS if data == "paper" else GREATER_THAN_NOUNS
    check_single_tokens(tokenize, noun_list, what="Greater-Than nouns")
    years = greater_than_years(tokenize)
    year_tokens = np.array(
        check_single_tokens(
            tokenize, [f"{i:02d}" for i in range(100)], what="two-digit years", prefix=""
        ),
        np.int32,
    )
    if n < 1:
        raise ValueError(f"Need at least one Greater-Than prompt, got n={n}.")

    if data == "paper":
        nouns, year_idx = paper_greater_than_draws(len(years), n, seed=seed)
    else:
        rng = np.random.default_rng(seed)
        noun_idx = rng.integers(len(GREATER_THAN_NOUNS), size=n)
        year_idx = rng.integers(len(years), size=n)
        nouns = [GREATER_THAN_NOUNS[i] for i in noun_idx]
    starts = [years[i] for i in year_idx]
    clean = [
        GREATER_THAN_TEMPLATE.format(noun=noun, year=year, century=year // 100)
        for noun, year in zip(nouns, starts)
    ]
    corrupted = [
        GREATER_THAN_TEMPLATE.format(
            noun=noun, year=f"{year // 100}{CORRUPTED_YY}", century=year // 100
        )
        for noun, year in zip(nouns, starts)
    ]
    clean_tokens = tokenize_all(tokenize, clean, GREATER_THAN_LENGTH, what="Greater-Than prompts")
    corrupted_tokens = tokenize_all(
        tokenize, corrupted, GREATER_THAN_LENGTH, what="corrupted Greater-Than prompts"
    )
    yy = np.array([y % 100 for y in starts])
    if not np.array_equal(clean_tokens[:, 7], year_tokens[yy]):
        raise ValueError(
            "Greater-Than prompts do not carry the start year's two digits at token 7; is this "
            "GPT-2's tokenizer?"
        )
    same_elsewhere = np.delete(clean_tokens, 7, axis=1) == np.delete(corrupted_tokens, 7, axis=1)
    if not same_elsewhere.all() or not (corrupted_tokens[:, 7] == year_tokens[1]).all():
        raise ValueError("internal: the corruption must change token 7 only, to '01'.")
    return GreaterThanPrompts(
        clean=clean,
        corrupted=corrupted,
        nouns=nouns,
        years=starts,
        clean_tokens=clean_tokens,
        corrupted_tokens=corrupted_tokens,
        year_tokens=year_tokens,
    )


def make_greater_than_task(
    model: Transformer,
    tokenizer,
    *,
    seed: int = 0,
    n_val: int = 100,
    n_test: int = 100,
    data: str = "paper",
) -> TaskBundle:
    """The Greater-Than task for `model` (GPT-2 small, or a model with GPT-2's vocabulary).

    **Arguments:**

    - `model`: the [`jacdc.models.Transformer`][].
    - `tokenizer`: GPT-2's tokenizer (callable or object with `.encode`).
    - `seed`: offsets the fixed data seed 54.
    - `n_val`, `n_test`: split sizes.
    - `data`: `"paper"` (the original's prompts; default) or `"jacdc"` (jacdc's own draws).

    **Returns:** a [`jacdc.tasks.TaskBundle`][] with metrics `kl_div` (default) and
    `greaterthan`; the canonical circuit when `model` has GPT-2 small's graph.
    """
    check_vocab(model, vocab_size_of(tokenizer), tokenizer_name="the Greater-Than tokenizer")
    prompts = make_greater_than_prompts(
        tokenizer, n=n_val + n_test, seed=GREATER_THAN_SEED + seed, data=data
    )
    check_token_range(model, prompts.clean_tokens, "Greater-Than prompts")
    check_token_range(model, prompts.year_tokens[None], "Greater-Than year tokens")
    yy = np.array([y % 100 for y in prompts.years], np.int32)

    def metrics(lo: int, hi: int):
        years = jnp.asarray(prompts.year_tokens)
        return {"greaterthan": ProbDiffMetric(year_tokens=years,
                                              start_year=jnp.asarray(yy[lo:hi]))}  # fmt: skip

    return prompt_bundle(
        "greater-than",
        model,
        prompts.clean_tokens,
        prompts.corrupted_tokens,
        metrics,
        position=GREATER_THAN_LENGTH - 1,
        n_val=n_val,
        n_test=n_test,
        canonical=greater_than_circuit() if model.graph_shape == GPT2_SHAPE else None,
        info={
            "data": data,
            "seed": GREATER_THAN_SEED + seed,
            "template": GREATER_THAN_TEMPLATE,
            "val_prompts": prompts.clean[:n_val],
            "test_prompts": prompts.clean[n_val:],
            "val_years": prompts.years[:n_val],
            "test_years": prompts.years[n_val:],
        },
    )


def build_greater_than(
    weights: str | None = None,
    seed: int = 0,
    n_val: int = 100,
    n_test: int = 100,
    model: Transformer | None = None,
    tokenizer=None,
    data: str = "paper",
) -> TaskBundle:
    """Registry builder of `"greater-than"` (options as for `"ioi"`)."""
    check_data(data, "Greater-Than")
    model = resolve_model(GPT2_SMALL, weights, model, seed=seed)
    tokenizer = default_gpt2_tokenizer() if tokenizer is None else tokenizer
    return make_greater_than_task(
        model, tokenizer, seed=seed, n_val=n_val, n_test=n_test, data=data
    )


register_task(
    TaskSpec(
        name="greater-than",
        description="Greater-Than on GPT-2 small ('The war lasted from the year 1732 to 17'; "
        "the original's prompts by default); canonical circuit of 262 edges.",
        build=build_greater_than,
        metrics=("kl_div", "greaterthan"),
        default_metric="kl_div",
        needs_weights=True,
    )
)
