"""Induction on redwood_attn_2l: predict the continuation of a repeated token sequence.

**Data.** The paper uses rows of OpenWebText from `validation_data.pt` (HF
`ArthurConmy/redwood_attn_2l`) with a mask of "repeat candidate" positions; that file cannot be
fetched here. By default this task generates its own data instead
([`repeated_token_sequences`][]): each sequence (default 300 tokens) is an optional BOS, a
random block of tokens and the same block again. The mask marks the positions whose next token
can be predicted by induction: every position of the second block except its last (position
`t` holds the token whose logits predict token `t + 1`). The first `n_val` rows validate, the
next `n_test` test (each split drawn with its own seed).

You can pass your own data as `data=PATH`: a `.npy` array of token ids `(rows, seq)`, or an
`.npz` with `tokens` and optionally `mask` (bool or 0/1, same shape). Without a mask, a position
`t` is marked when the bigram `(tokens[t], tokens[t + 1])` already occurred earlier in the row
([`induction_mask`][]). The last position is never scored (it has no next token).

**Corruption.** The same batch with its rows shuffled (a derangement drawn with seed 42), within
each split.

**Metrics** (minimised), read at the *metric positions* = the union of the masked positions over
the split, each example weighted by its own mask: `kl_div`, KL(original model || circuit)
averaged over every masked (example, position) pair; and `nll`, the mean negative log-likelihood
of the true next token at the same pairs ([`jacdc.tasks.NLLMetric`][]).

There is no canonical circuit. (The ACDC demo recovers "embed -> 0.0 v -> 1.6 k" on
redwood_attn_2l: a previous-token head in layer 0 feeding an induction head's key in layer 1.)

Memory: the KL baseline stores the clean log-probabilities at the metric positions,
`batch x pos x d_vocab` floats: for 50 rows of 300 tokens and a 50,259-token vocabulary about
1.5 GB per split. Use shorter sequences (`seq_len=`) on small machines.
"""

import os

import jax.numpy as jnp
import numpy as np

from jacdc.models import Transformer

from ._base import TaskBundle
from ._common import ModelKind, NLLMetric, make_split, resolve_model, small_config
from ._registry import TaskSpec, register_task


SHUFFLE_SEED = 42
# GPT-2's <|endoftext|>: random tokens for GPT-2-vocabulary models are drawn below it.
GPT2_EOT = 50256


def repeated_token_sequences(
    n: int,
    seq_len: int,
    token_range: tuple[int, int],
    *,
    seed: int,
    bos: int | None = None,
    distinct: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """`n` sequences of `seq_len` tokens: `[bos] + block + block (+ one random token if the
    length is odd)`, with `block` uniform in `[token_range[0], token_range[1])`; with
    `distinct`, the tokens of a block are all different (so that every repeated token has one
    unambiguous continuation; needs a range at least as long as the block).

    **Returns:** `tokens` `(n, seq_len)` int32 and `mask` `(n, seq_len)` bool, true at every
    position of the second block except its last.
    """
    low, high = token_range
    if high - low < 2:
        raise ValueError(f"token_range must hold at least 2 tokens, got {token_range}.")
    n_bos = 0 if bos is None else 1
    half = (seq_len - n_bos) // 2
    if half < 2:
        raise ValueError(
            f"seq_len={seq_len} is too short for a repeated block of at least 2 tokens."
        )
    rng = np.random.default_rng(seed)
    if distinct:
        if high - low < half:
            raise ValueError(
                f"distinct=True needs at least {half} tokens in token_range, got {token_range}."
            )
        block = np.stack([low + rng.permutation(high - low)[:half] for _ in range(n)])
    else:
        block = rng.integers(low, high, size=(n, half))
    parts = [block, block]
    if (seq_len - n_bos) % 2:
        parts.append(rng.integers(low, high, size=(n, 1)))
    if bos is not None:
        parts.insert(0, np.full((n, 1), bos))
    tokens = np.concatenate(parts, axis=1).astype(np.int32)
    mask = np.zeros((n, seq_len), bool)
    mask[:, n_bos + half : n_bos + 2 * half - 1] = True
    return tokens, mask


def induction_mask(tokens) -> np.ndarray:
    """Marks position `t` of each row when the bigram `(tokens[t], tokens[t + 1])` occurred
    earlier in that row, i.e. when an induction head could predict token `t + 1`."""
    tokens = np.asarray(tokens)
    mask = np.zeros(tokens.shape, bool)
    for r, row in enumerate(tokens):
        seen = set()
        for t in range(len(row) - 1):
            bigram = (int(row[t]), int(row[t + 1]))
            mask[r, t] = bigram in seen
            seen.add(bigram)
    return mask


def load_induction_data(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads `(tokens, mask)` from a `.npy` (tokens) or `.npz` (`tokens`, optional `mask`) file;
    a missing mask is computed with [`induction_mask`][]."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No induction data file {path!r}.")
    mask = None
    if path.endswith(".npz"):
        with np.load(path) as f:
            if "tokens" not in f.files:
                raise ValueError(
                    f"{path} has arrays {f.files}; expected `tokens` (and optionally `mask`)."
                )
            tokens = f["tokens"]
            mask = f["mask"] if "mask" in f.files else None
    elif path.endswith(".npy"):
        tokens = np.load(path)
    else:
        raise ValueError(f"Induction data must be a .npy or .npz file, got {path!r}.")
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(
            f"{path}: `tokens` must be an integer array (rows, seq), got {tokens.dtype} "
            f"{tokens.shape}."
        )
    if mask is None:
        mask = induction_mask(tokens)
    elif mask.shape != tokens.shape:
        raise ValueError(f"{path}: mask shape {mask.shape} differs from tokens {tokens.shape}.")
    return tokens.astype(np.int32), mask.astype(bool)


def derangement(n: int, *, seed: int = SHUFFLE_SEED) -> np.ndarray:
    """A random permutation of `range(n)` with no fixed point (`n >= 2`), from NumPy seed
    `seed`; the identity for `n == 1`."""
    if n == 1:
        return np.zeros(1, np.int64)
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


def default_token_range(d_vocab: int) -> tuple[int, int]:
    """Token ids random sequences draw from: all of a small vocabulary, or GPT-2's ordinary
    tokens (below `<|endoftext|>`) for GPT-2-sized ones."""
    return (0, GPT2_EOT) if d_vocab > GPT2_EOT else (0, d_vocab)


def _split(model: Transformer, tokens: np.ndarray, mask: np.ndarray, shuffle_seed: int):
    mask = mask.copy()
    mask[:, -1] = False  # no next token to score
    positions = np.nonzero(mask.any(axis=0))[0]
    if positions.size == 0:
        raise ValueError(
            "The induction mask marks no position (except perhaps the last); nothing to score."
        )
    weights = mask[:, positions].astype(np.float32)
    corrupted = tokens[derangement(len(tokens), seed=shuffle_seed)]
    nll = NLLMetric(targets=jnp.asarray(tokens[:, positions + 1]), weights=jnp.asarray(weights))
    return make_split(model, tokens, corrupted, positions, {"nll": nll}, kl_weights=weights)


def make_induction_task(
    model: Transformer,
    *,
    seed: int = 0,
    n_val: int = 50,
    n_test: int = 50,
    seq_len: int = 300,
    data: "str | os.PathLike | tuple[np.ndarray, np.ndarray] | None" = None,
    bos: int | None = None,
    token_range: tuple[int, int] | None = None,
    shuffle_seed: int = SHUFFLE_SEED,
) -> TaskBundle:
    """The Induction task for `model`.

    **Arguments:**

    - `model`: the [`jacdc.models.Transformer`][] (redwood_attn_2l in the paper).
    - `seed`: seed of the generated sequences (validation uses `seed`, test `seed + 1`).
    - `n_val`, `n_test`: rows per split.
    - `seq_len`: length of generated sequences.
    - `data`: a path (see the module docstring) or a `(tokens, mask)` pair instead of generated
        sequences; its first `n_val` rows validate and the next `n_test` test.
    - `bos`: a BOS token put first in each generated sequence (`None`: none).
    - `token_range`: `[low, high)` of the random tokens; default [`default_token_range`][].
    - `shuffle_seed`: seed of the row derangement that makes the corrupted batch.

    **Returns:** a [`jacdc.tasks.TaskBundle`][] with metrics `kl_div` (default) and `nll`, no
    canonical circuit.
    """
    if data is None:
        rng_range = default_token_range(model.cfg.d_vocab) if token_range is None else token_range
        val = repeated_token_sequences(n_val, seq_len, rng_range, seed=seed, bos=bos)
        test = repeated_token_sequences(n_test, seq_len, rng_range, seed=seed + 1, bos=bos)
        source = "generated"
    else:
        tokens, mask = (
            load_induction_data(data)
            if isinstance(data, (str, os.PathLike))
            else (np.asarray(data[0], np.int32), np.asarray(data[1], bool))
        )
        if len(tokens) < n_val + n_test:
            raise ValueError(
                f"The induction data has {len(tokens)} rows; n_val + n_test = {n_val + n_test}."
            )
        val = tokens[:n_val], mask[:n_val]
        test = tokens[n_val : n_val + n_test], mask[n_val : n_val + n_test]
        source = os.fspath(data) if isinstance(data, (str, os.PathLike)) else "given"
    for name, (tokens, _) in (("validation", val), ("test", test)):
        if tokens.max() >= model.cfg.d_vocab or tokens.min() < 0:
            raise ValueError(
                f"Tokenizer mismatch: the induction {name} tokens lie in [{tokens.min()}, "
                f"{tokens.max()}] but the model's vocabulary is [0, {model.cfg.d_vocab})."
            )
        if tokens.shape[1] > model.cfg.n_ctx:
            raise ValueError(
                f"Induction sequences of {tokens.shape[1]} tokens exceed the model's n_ctx "
                f"{model.cfg.n_ctx}; pass a smaller seq_len."
            )
    return TaskBundle(
        name="induction",
        model=model,
        val=_split(model, *val, shuffle_seed),
        test=_split(model, *test, shuffle_seed),
        default_metric="kl_div",
        canonical=None,
        info={
            "data": source,
            "seed": seed,
            "seq_len": int(val[0].shape[1]),
            "shuffle_seed": shuffle_seed,
            "val_scored_positions": int(val[1][:, :-1].sum()),
            "test_scored_positions": int(test[1][:, :-1].sum()),
        },
    )


def _redwood_config():
    from jacdc.models import KNOWN_CONFIGS

    return KNOWN_CONFIGS["redwood_attn_2l"]


def load_induction_model(weights: str | os.PathLike) -> Transformer:
    """A TransformerLens checkpoint for the induction task: redwood_attn_2l by default (file,
    folder or hub id); a folder whose `config.json` describes another attention-only model
    (e.g. the one `examples/train_induction.py` writes) loads with that config."""
    import json

    from jacdc.models import load_redwood_attn_2l, transformer_lens_config

    path = os.fspath(weights)
    config = os.path.join(path, "config.json")
    if os.path.isdir(path) and os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            cfg = transformer_lens_config(json.load(f))
        ckpts = sorted(
            p for p in os.listdir(path) if p.endswith((".pth", ".pt", ".npz", ".safetensors"))
        )
        if cfg != _redwood_config() and len(ckpts) == 1:
            return load_redwood_attn_2l(os.path.join(path, ckpts[0]), cfg=cfg)
    return load_redwood_attn_2l(weights)


REDWOOD_ATTN_2L = ModelKind(
    name="redwood_attn_2l",
    config=_redwood_config,
    small=lambda: small_config(_redwood_config()),
    load=load_induction_model,
    how_to=(
        "pass `--weights PATH` (Python: `weights=PATH`) with PATH the TransformerLens checkpoint "
        "of ArthurConmy/redwood_attn_2l (a .pth file or its folder), or that hub id when online; "
        "or a folder written by examples/train_induction.py (a small model trained here)."
    ),
)


def build_induction(
    weights: str | None = None,
    seed: int = 0,
    n_val: int = 50,
    n_test: int = 50,
    model: Transformer | None = None,
    seq_len: int = 300,
    data: str | None = None,
    bos: int | None = None,
) -> TaskBundle:
    """Registry builder of `"induction"`: `weights` (a TransformerLens checkpoint, `"random"` or
    `"random-small"`) or `model`, then [`make_induction_task`][]."""
    model = resolve_model(REDWOOD_ATTN_2L, weights, model, seed=seed)
    return make_induction_task(
        model, seed=seed, n_val=n_val, n_test=n_test, seq_len=seq_len, data=data, bos=bos
    )


register_task(
    TaskSpec(
        name="induction",
        description="Induction on redwood_attn_2l with repeated random-token sequences (or "
        "your own token file); no canonical circuit.",
        build=build_induction,
        metrics=("kl_div", "nll"),
        default_metric="kl_div",
        needs_weights=True,
    )
)
