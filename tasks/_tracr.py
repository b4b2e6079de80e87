"""tracr tasks: compiled RASP programs whose circuits are known from the program itself.

Each task compiles its program once per process ([`tracr_model`][], cached), builds fixed data
(NumPy generators seeded by the builder's `seed`, default 0, so every threshold of a sweep and
every rebuild sees identical arrays), and offers the metric `l2` (MSE between the circuit's and
the original model's outputs at the metric positions; all minimised) plus `kl_div` where the
output is categorical.

**Token ids** are the compiled model's own (tracr's input encoder, values sorted): e.g. reverse
`{1: 0, 2: 1, 3: 2, "BOS": 3, "compiler_pad": 4}`, proportion
`{"BOS": 0, "compiler_pad": 1, "w": 2, "x": 3, "y": 4, "z": 5}` (`bundle.info["input_encoding"]`).
Every sequence starts with BOS at position 0, which tracr models require (position 0 has no
positional embedding, and every attention head falls back on BOS); the one exception is
`tracr-proportion` with `original_ids=True`. Metrics never read position 0.

**Outputs.** The logits are tracr's output-space values (see `jacdc.models._tracr`): one column
per output category, or one column for numerical programs. The original implementation used an
identity unembedding onto the first `d_vocab - 2` residual dimensions instead; with tracr-pypi's
sorted residual basis that reads `indices:0..2` for reverse, so it is not reproduced.

**Corrupted positions** (corrupted-activation ablation only; zero ablation ignores them): every
builder takes `positions="none" | "shuffled"`, recorded in `bundle.info["positions"]`.

- `"none"` (the default): the corrupted run uses the ordinary positions. This is what produced
  the paper's published tracr numbers: the original's positional shuffle was then a no-op (it
  permuted the batch axis of a one-row tensor; fixed later in its history), and its SP and HISP
  never shuffle positions. With it, `jacdc paper` reproduces the published tracr AUCs.
- `"shuffled"`: the original's current code (`scramble_positions`:
  `shuffle_tensor(pos_embed[0], seed=49)` on `hook_pos_embed`): position `p` of every corrupted
  sequence reads the positional embedding of position `perm[p]`, with
  `perm = torch.manual_seed(49); torch.randperm(seq)` (emulated without torch; `[2, 3, 0, 1]` for
  4 positions, `[0, 2, 4, 1, 3]` for 5). SP's cache never uses it (the original's SP does not).

Tasks:

- `tracr-reverse` (reference §3): `make_reverse(tokens)`, vocab {1,2,3}, max_seq_len 5. Data: the
    6 permutations of (1, 2, 3) after BOS (seq 4); validation = test. Corrupted: a derangement of
    the 6 rows (no row maps to itself). Metric positions 1..3; `l2` over all 3 output dims.
- `tracr-proportion` (reference §3): `make_frac_prevs(tokens == "x")`, vocab {w,x,y,z},
    max_seq_len 5. Data: 100 distinct strings of length 4 drawn from all 256, BOS in front
    (seq 5); the first 50 are validation, the last 50 test. Corrupted: a random row permutation
    within each split (fixed points allowed, as in the original). **BOS choice:** the compiled
    model needs BOS at position 0, so the whole string follows BOS and the metric reads all four
    string positions 1..4 (BOS takes the role of the original's skipped position 0). `l2` reads
    output dim 0 (the fraction; it is the only one). No `kl_div`: a softmax over one numerical
    output is constant. **The original's ids:** it fed the strings without BOS as ids
    `ord(c) - ord("w")` = 0..3, which in the compiled model's encoding are BOS, pad, `w` and
    `x` (not w, x, y, z). `original_ids=True` rebuilds exactly that data (seq 4, positions
    1..3); see [`make_tracr_proportion`][] and the canonical-circuit notes below.
- `tracr-sort-unique`: `make_sort_unique(tokens, tokens)`, vocab {1,..,5}, max_seq_len 4. Data:
    all 120 sequences of 4 distinct tokens (sorting needs unique keys), shuffled; 60 validation,
    60 test; corrupted: a derangement within each split. Positions 1..4; `l2` (all 5 output dims)
    and `kl_div`.
- `tracr-hist`: `make_hist()`, vocab {a,b,c}, max_seq_len 4. Data: 80 distinct strings of length
    4 out of 81; 40 / 40; corrupted: a derangement within each split. Positions 1..4; outputs are
    counts 0..4 (categorical); `l2` and `kl_div`.
- `tracr-pair-balance`: `make_pair_balance(tokens, "(", ")")`, vocab {(, )}, max_seq_len 5. Data:
    all 32 strings of length 5, shuffled; 16 / 16; corrupted: a derangement within each split.
    Positions 1..5; numerical output (fraction of opens minus fraction of closes); `l2`. Its
    compiled model has two heads in a layer (the two `frac_prevs`).

**Canonical circuits and ground truth.** `TaskBundle.canonical` is the published circuit for
reverse (15 counted edges) and proportion (10), reference §4.5, written below in jacdc names; for
the other tasks it is the program-derived ground truth ([`jacdc.models.program_ground_truth`][]),
which every bundle also carries in `info["ground_truth"]`. The canonical circuits are subsets of
the ground truth:

- proportion: ground truth = canonical (10 edges). Two of them,
  `blocks.1.hook_{q,k}_input[0] <- hook_embed`, are tracr's *BOS fallback* (below), inert on the
  default data; the original kept them because its data put BOS tokens (id 0) in the middle of
  sequences, where a BOS key outscores every match. So zero-ablation ACDC recovers the published
  10 edges on `original_ids=True` data and 8 on the default data.
- reverse: ground truth 21 edges = canonical 15 + 6:
  - `blocks.3.hook_q_input[0] <- hook_embed` (`one`) and `blocks.3.hook_k_input[0] <- hook_embed`
    (`tokens:BOS`): the BOS fallback of the final aggregate.
  - `blocks.0.hook_{q,k}_input[0] <- hook_embed` and the q and k DIRECT edges of head 0.0: the
    selector of `length` is `Select(tokens, tokens, TRUE)`. Its q/k weights are nonzero, but
    every query matches every key, so the pattern is uniform, which is also what a zero-ablated
    q or k gives. These four edges are exactly inert (change 0.0).

**BOS fallback.** Every tracr attention head adds `one` (query) x `tokens:BOS` (key) to its
scores, half a match, so that a query with no match attends to BOS (default output). Whenever
some key matches, the match outscores BOS by a large margin and the fallback changes outputs by
< 1e-6. On valid inputs of reverse, frac_prevs, sort-unique (unique keys) and pair-balance every
non-BOS query has a match, so these edges only act at the BOS position, which no metric reads.

**Single-edge exceptions** (ground-truth edges whose removal, by zero ablation from the
ground-truth circuit, changes no output at the metric positions by more than 1e-4 on the task
data; every other ground-truth edge changes some output by more than 1e-2), in `EXPECTED_INERT`
and asserted exactly by the tests:

- reverse: the four head-0.0 q/k edges (TRUE selector) and the two BOS-fallback edges of head 3.0;
- proportion, sort-unique: `blocks.1.hook_{q,k}_input[0] <- hook_embed` (BOS fallback);
- pair-balance: `blocks.1.hook_{q,k}_input[h] <- hook_embed` for both heads (BOS fallback);
- hist: none (its only head is a selector width, for which BOS attention is the mechanism).
"""

import functools as ft
import inspect
import itertools
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from jacdc.models import Transformer, clean_run
from jacdc.models._tracr import (
    TracrMetadata,
    cached_tracr_model,
    compile_rasp,
    program_ground_truth,
)

from ._base import KLMetric, L2Metric, Task, TaskBundle
from ._registry import TaskSpec, register_task


BOS = "BOS"
POSITION_SEED = 49  # the original's fixed seed for the shuffled positional embedding
POSITIONS = ("none", "shuffled")  # the positional-corruption options (module docstring)

REVERSE_CANONICAL = (
    "blocks.3.hook_resid_post <- blocks.3.attn.hook_result[0]",
    "blocks.3.hook_q_input[0] <- blocks.2.hook_mlp_out",
    "blocks.3.attn.hook_q[0] <- blocks.3.hook_q_input[0]",
    "blocks.3.hook_k_input[0] <- hook_pos_embed",
    "blocks.3.attn.hook_k[0] <- blocks.3.hook_k_input[0]",
    "blocks.3.hook_v_input[0] <- hook_embed",
    "blocks.3.attn.hook_v[0] <- blocks.3.hook_v_input[0]",
    "blocks.2.hook_mlp_in <- blocks.1.hook_mlp_out",
    "blocks.1.hook_mlp_in <- blocks.0.hook_mlp_out",
    "blocks.1.hook_mlp_in <- hook_embed",
    "blocks.1.hook_mlp_in <- hook_pos_embed",
    "blocks.0.hook_mlp_in <- blocks.0.attn.hook_result[0]",
    "blocks.0.hook_mlp_in <- hook_embed",
    "blocks.0.hook_v_input[0] <- hook_embed",
    "blocks.0.attn.hook_v[0] <- blocks.0.hook_v_input[0]",
)

PROPORTION_CANONICAL = (
    "blocks.1.hook_resid_post <- blocks.1.attn.hook_result[0]",
    "blocks.1.hook_q_input[0] <- hook_embed",
    "blocks.1.hook_q_input[0] <- hook_pos_embed",
    "blocks.1.attn.hook_q[0] <- blocks.1.hook_q_input[0]",
    "blocks.1.hook_k_input[0] <- hook_embed",
    "blocks.1.hook_k_input[0] <- hook_pos_embed",
    "blocks.1.attn.hook_k[0] <- blocks.1.hook_k_input[0]",
    "blocks.1.hook_v_input[0] <- blocks.0.hook_mlp_out",
    "blocks.1.attn.hook_v[0] <- blocks.1.hook_v_input[0]",
    "blocks.0.hook_mlp_in <- hook_embed",
)

if len(REVERSE_CANONICAL) != 15 or len(PROPORTION_CANONICAL) != 10:
    raise AssertionError("internal: the published canonical circuits have 15 and 10 edges")

# Ground-truth edges whose single removal changes no output on the task data (see docstring).
EXPECTED_INERT: dict[str, tuple[str, ...]] = {
    "tracr-reverse": (
        "blocks.0.hook_q_input[0] <- hook_embed",
        "blocks.0.attn.hook_q[0] <- blocks.0.hook_q_input[0]",
        "blocks.0.hook_k_input[0] <- hook_embed",
        "blocks.0.attn.hook_k[0] <- blocks.0.hook_k_input[0]",
        "blocks.3.hook_q_input[0] <- hook_embed",
        "blocks.3.hook_k_input[0] <- hook_embed",
    ),
    # On the BOS-first data; on the paper's data (BOS tokens mid-sequence) these edges matter.
    "tracr-proportion-bos": (
        "blocks.1.hook_q_input[0] <- hook_embed",
        "blocks.1.hook_k_input[0] <- hook_embed",
    ),
    "tracr-sort-unique": (
        "blocks.1.hook_q_input[0] <- hook_embed",
        "blocks.1.hook_k_input[0] <- hook_embed",
    ),
    "tracr-hist": (),
    "tracr-pair-balance": (
        "blocks.1.hook_q_input[0] <- hook_embed",
        "blocks.1.hook_k_input[0] <- hook_embed",
        "blocks.1.hook_q_input[1] <- hook_embed",
        "blocks.1.hook_k_input[1] <- hook_embed",
    ),
}


def reverse_canonical_circuit() -> list[str]:
    """The published tracr-reverse circuit (reference §4.5): 15 counted edges."""
    return list(REVERSE_CANONICAL)


def proportion_canonical_circuit() -> list[str]:
    """The published tracr-proportion circuit (reference §4.5): 10 counted edges."""
    return list(PROPORTION_CANONICAL)


# ---- programs ----------------------------------------------------------------------------------


def _reverse():
    from tracr.compiler import lib
    from tracr.rasp import rasp

    return lib.make_reverse(rasp.tokens), {1, 2, 3}, 5


def _proportion():
    from tracr.compiler import lib
    from tracr.rasp import rasp

    return lib.make_frac_prevs(rasp.tokens == "x"), {"w", "x", "y", "z"}, 5


def _sort_unique():
    from tracr.compiler import lib
    from tracr.rasp import rasp

    return lib.make_sort_unique(rasp.tokens, rasp.tokens), {1, 2, 3, 4, 5}, 4


def _hist():
    from tracr.compiler import lib

    return lib.make_hist(), {"a", "b", "c"}, 4


def _pair_balance():
    from tracr.compiler import lib
    from tracr.rasp import rasp

    return lib.make_pair_balance(rasp.tokens, "(", ")"), {"(", ")"}, 5


RASP = {  # for reports (`info["program"]`)
    "tracr-reverse": "make_reverse(tokens), vocab {1,2,3}, max_seq_len 5",
    "tracr-proportion": 'make_frac_prevs(tokens == "x"), vocab {w,x,y,z}, max_seq_len 5',
    "tracr-sort-unique": "make_sort_unique(tokens, tokens), vocab {1,2,3,4,5}, max_seq_len 4",
    "tracr-hist": "make_hist(), vocab {a,b,c}, max_seq_len 4",
    "tracr-pair-balance": 'make_pair_balance(tokens, "(", ")"), vocab {(,)}, max_seq_len 5',
}

PROGRAMS: dict[str, Callable] = {
    "tracr-reverse": _reverse,
    "tracr-proportion": _proportion,
    "tracr-sort-unique": _sort_unique,
    "tracr-hist": _hist,
    "tracr-pair-balance": _pair_balance,
}


@ft.lru_cache(maxsize=16)
def tracr_assembled(name: str):
    """`(assembled, output_label)`: tracr's compiled model of a task's program and the label of
    the program's output SOp. Compiled once per process (tracr takes seconds)."""
    name = name.removesuffix("-bos")  # tracr-proportion-bos: the same program
    if name not in PROGRAMS:
        raise ValueError(f"Unknown tracr program {name!r}; known: {sorted(PROGRAMS)}.")
    program, vocab, max_seq_len = PROGRAMS[name]()
    return compile_rasp(program, vocab, max_seq_len, compiler_bos=BOS), program.label


@ft.lru_cache(maxsize=16)
def tracr_model(name: str) -> tuple[Transformer, TracrMetadata]:
    """The jacdc model and metadata of a tracr task's program: built once per process, and
    compiled only when jacdc's on-disk cache does not hold it (keyed by the program's builder
    source and description, the compiler options and the tracr version; see
    [`jacdc.models.cached_tracr_model`][])."""
    program = name.removesuffix("-bos")
    if program not in PROGRAMS:
        raise ValueError(f"Unknown tracr program {name!r}; known: {sorted(PROGRAMS)}.")
    key = {
        "program": RASP[program],
        "builder": inspect.getsource(PROGRAMS[program]),
        "compiler": {"compiler_bos": BOS, "compiler_pad": "compiler_pad", "causal": False,
                     "mlp_exactness": 100},
    }  # fmt: skip
    return cached_tracr_model(key, lambda: tracr_assembled(name), program_name=name)


# ---- data helpers ------------------------------------------------------------------------------


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of `range(n)` with no fixed point (rejection sampling)."""
    if n < 2:
        raise ValueError(f"A derangement needs at least 2 rows, got {n}.")
    while True:
        perm = rng.permutation(n)
        if (perm != np.arange(n)).all():
            return perm


def shuffled_positions(batch: int, seq: int) -> np.ndarray:
    """Position ids `(batch, seq)` of the corrupted run under `positions="shuffled"`: the
    sequence's positions permuted by torch's `randperm(seq)` under `manual_seed(49)`, the same
    permutation for every batch item."""
    from ._torch_rng import torch_randperm

    perm = torch_randperm(seq, seed=POSITION_SEED)
    return np.broadcast_to(perm, (batch, seq)).astype(np.int32)


def check_positions(positions: str) -> str:
    """Checks a positional-corruption option; returns it."""
    if positions not in POSITIONS:
        raise ValueError(
            f"positions must be one of {', '.join(POSITIONS)} (tracr's positional corruption), "
            f"got {positions!r}."
        )
    return positions


def _split(model, clean, corrupted, positions, metric_dims, categorical, shuffle) -> Task:
    # The metric references are computed on the host: eager JAX ops would each compile once per
    # shape, and the builders run for every task (and every test session).
    clean = np.asarray(clean, np.int32)
    logits, _ = clean_run(model, jnp.asarray(clean))
    ref = np.asarray(logits)[:, positions]
    weights = jnp.asarray(np.ones(ref.shape[:2], np.float32))
    metrics: dict = {
        "l2": L2Metric(
            clean_logits=jnp.asarray(ref),
            weights=weights,
            dims=jnp.asarray(np.asarray(metric_dims, np.int32)),
        )
    }
    if categorical:  # what `kl_metric` computes: the clean log-softmax at the metric positions
        x = ref.astype(np.float64)
        x = x - x.max(-1, keepdims=True)
        logprobs = x - np.log(np.exp(x).sum(-1, keepdims=True))
        metrics["kl_div"] = KLMetric(
            clean_logprobs=jnp.asarray(logprobs.astype(np.float32)), weights=weights
        )
    return Task(
        clean=jnp.asarray(clean),
        corrupted=jnp.asarray(np.asarray(corrupted, np.int32)),
        corrupted_positions=jnp.asarray(shuffled_positions(*clean.shape)) if shuffle else None,
        logit_positions=jnp.asarray(np.asarray(positions, np.int32)),
        metrics=metrics,
    )


def _bundle(
    name, model, md, val_rows, test_rows, val_perm, test_perm, canonical, info, seed, positions
):
    """Builds the bundle from program inputs (lists of tokens, no BOS; or, for the original's
    proportion quirk, arrays of ids) and row permutations."""
    if isinstance(val_rows, np.ndarray):
        val_ids, test_ids = val_rows, test_rows
    else:
        val_ids, test_ids = md.encode_batch(val_rows), md.encode_batch(test_rows)
        md.check_ids(val_ids)
        md.check_ids(test_ids)
    seq = val_ids.shape[1]
    positions_read = np.arange(1, seq)
    dims = np.arange(model.cfg.vocab_out)
    categorical = not md.numerical
    shuffle = check_positions(positions) == "shuffled"
    val = _split(model, val_ids, val_ids[val_perm], positions_read, dims, categorical, shuffle)
    test = _split(model, test_ids, test_ids[test_perm], positions_read, dims, categorical, shuffle)
    ground_truth = program_ground_truth(model, md)
    info = dict(
        info,
        seed=seed,
        program=RASP[name.removesuffix("-bos")],
        output_sop=md.output_labels[0].split(":", 1)[0],
        input_encoding={str(k): v for k, v in md.input_encoding.items()},
        bos_id=md.bos_id,
        output_labels=list(md.output_labels),
        numerical=md.numerical,
        val_inputs=[[str(t) for t in row] for row in list(val_rows)],
        test_inputs=[[str(t) for t in row] for row in list(test_rows)],
        positions=positions,
        corrupted_positions=(
            None
            if val.corrupted_positions is None
            else [int(p) for p in np.asarray(val.corrupted_positions)[0]]
        ),
        ground_truth=ground_truth,
    )
    return TaskBundle(
        name=name,
        model=model,
        val=val,
        test=test,
        default_metric="l2",
        canonical=list(canonical) if canonical is not None else list(ground_truth),
        info=info,
    )


# ---- builders ----------------------------------------------------------------------------------


def make_tracr_reverse(weights=None, seed: int = 0, positions: str = "none") -> TaskBundle:
    """tracr-reverse (see the module docstring). `weights` is ignored (the model is compiled);
    `positions`: the positional corruption, `"none"` or `"shuffled"`."""
    del weights
    model, md = tracr_model("tracr-reverse")
    rows = [list(p) for p in itertools.permutations([1, 2, 3])]
    perm = derangement(len(rows), np.random.default_rng(seed))
    return _bundle(
        "tracr-reverse", model, md, rows, rows, perm, perm, REVERSE_CANONICAL,
        dict(validation_is_test=True), seed, positions,
    )  # fmt: skip


def make_tracr_proportion(
    weights=None, seed: int = 0, original_ids: bool = True, positions: str = "none"
) -> TaskBundle:
    """tracr-proportion (see the module docstring). `weights` is ignored; `positions` as for
    [`make_tracr_reverse`][].

    `original_ids=True` reproduces the original implementation's data instead: length-4 rows of
    ids 0-3 (`ord(c) - ord("w")`) with no BOS, metric positions 1..3. In the compiled model's
    encoding those ids are BOS, pad, `w` and `x`, so BOS and pad tokens appear anywhere in the
    sequence; a BOS inside the sequence captures the attention of later positions through the
    BOS-fallback edges `blocks.1.hook_{q,k}_input[0] <- hook_embed`, which is why the published
    circuit holds them (with the default data they are inert)."""
    del weights
    model, md = tracr_model("tracr-proportion")
    rng = np.random.default_rng(seed)
    if original_ids:
        everything = np.array(list(itertools.product(range(4), repeat=4)), np.int32)
        rows = everything[rng.permutation(len(everything))[:100]]
        info = dict(original_ids=True, bos="none: ids 0-3 are tracr's BOS, pad, w, x")
    else:
        everything = [list(s) for s in itertools.product("wxyz", repeat=4)]
        rows = [everything[i] for i in rng.permutation(len(everything))[:100]]
        info = dict(original_ids=False, bos="BOS before the 4-token string; positions 1..4")
    val_perm, test_perm = rng.permutation(50), rng.permutation(50)
    name = "tracr-proportion" if original_ids else "tracr-proportion-bos"
    return _bundle(
        name, model, md, rows[:50], rows[50:], val_perm, test_perm,
        PROPORTION_CANONICAL, info, seed, positions,
    )  # fmt: skip


def make_tracr_proportion_bos(weights=None, seed: int = 0, positions: str = "none") -> TaskBundle:
    """tracr-proportion-bos: the same program on well-formed inputs (BOS, then a 4-token string
    over {w,x,y,z}); see the module docstring."""
    return make_tracr_proportion(weights, seed, original_ids=False, positions=positions)


def _split_in_two(name, rows, n_val, seed, info, positions) -> TaskBundle:
    model, md = tracr_model(name)
    rng = np.random.default_rng(seed)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    val, test = rows[:n_val], rows[n_val : 2 * n_val]
    perms = derangement(len(val), rng), derangement(len(test), rng)
    return _bundle(name, model, md, val, test, *perms, None, info, seed, positions)


def make_tracr_sort_unique(weights=None, seed: int = 0, positions: str = "none") -> TaskBundle:
    """tracr-sort-unique (see the module docstring). `weights` is ignored."""
    del weights
    rows = [list(p) for p in itertools.permutations([1, 2, 3, 4, 5], 4)]
    return _split_in_two("tracr-sort-unique", rows, 60, seed, {}, positions)


def make_tracr_hist(weights=None, seed: int = 0, positions: str = "none") -> TaskBundle:
    """tracr-hist (see the module docstring). `weights` is ignored."""
    del weights
    rows = [list(s) for s in itertools.product("abc", repeat=4)]
    return _split_in_two("tracr-hist", rows, 40, seed, {}, positions)


def make_tracr_pair_balance(weights=None, seed: int = 0, positions: str = "none") -> TaskBundle:
    """tracr-pair-balance (see the module docstring). `weights` is ignored."""
    del weights
    rows = [list(s) for s in itertools.product("()", repeat=5)]
    return _split_in_two("tracr-pair-balance", rows, 16, seed, {}, positions)


_CATEGORICAL_METRICS = ("l2", "kl_div")
for _name, _desc, _build, _metrics in (
    ("tracr-reverse", "tracr make_reverse over {1,2,3} (4 layers)", make_tracr_reverse,
     _CATEGORICAL_METRICS),
    ("tracr-proportion", "tracr make_frac_prevs(tokens == 'x'), the paper's data (ids 0-3)",
     make_tracr_proportion, ("l2",)),
    ("tracr-proportion-bos", "tracr make_frac_prevs(tokens == 'x') on BOS + {w,x,y,z}^4",
     make_tracr_proportion_bos, ("l2",)),
    ("tracr-sort-unique", "tracr make_sort_unique over {1..5}", make_tracr_sort_unique,
     _CATEGORICAL_METRICS),
    ("tracr-hist", "tracr make_hist over {a,b,c}", make_tracr_hist, _CATEGORICAL_METRICS),
    ("tracr-pair-balance", "tracr make_pair_balance over {(,)} (two heads)",
     make_tracr_pair_balance, ("l2",)),
):  # fmt: skip
    register_task(
        TaskSpec(name=_name, description=_desc, build=_build, metrics=_metrics, default_metric="l2")
    )
