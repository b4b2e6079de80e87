"""Induction on redwood_attn_2l: predict the continuation of a repeated token sequence.

**Paper data** (`data="paper"`, the default). The original implementation's data: rows of
OpenWebText in `validation_data.pt` and a boolean mask of "repeat candidate" positions in
`mask_repeat_candidates.pkl`, both `torch.save` files of the same shape `(rows, columns)` in the
hub repo `ArthurConmy/redwood_attn_2l` (next to the model; read without torch by
`tasks/_torch_files.py`). Get them with `hf download ArthurConmy/redwood_attn_2l
validation_data.pt mask_repeat_candidates.pkl --local-dir DIR` and pass `data_dir=DIR` (or keep
them in the folder of the weights). As in the original, the validation split is rows
`0..n_val-1` and the test split the next `n_test` rows, each cut to its first `seq_len` (300)
tokens; the label of position `t` is column `t + 1` of the file, so every masked position is
scored, **the last one included**. The corrupted batch is each split with its rows permuted by
`torch.manual_seed(42); torch.randperm(rows)` (emulated without torch; the same permutation for
both splits, and it may leave a row in place, as the original's does).

**jacdc data** (`data="jacdc"`). Generated sequences ([`repeated_token_sequences`][]): each
(default 300 tokens) is an optional BOS, a random block of tokens and the same block again. The
mask marks the positions whose next token can be predicted by induction: every position of the
second block except its last (position `t` holds the token whose logits predict token `t + 1`).
The first `n_val` rows validate, the next `n_test` test (each split drawn with its own seed).
The corrupted batch is each split with its rows deranged (seed 42).

**Your own data** (`data=PATH`): a `.npy` array of token ids `(rows, seq)`, or an `.npz` with
`tokens` and optionally `mask` (bool or 0/1, same shape). Without a mask, a position `t` is
marked when the bigram `(tokens[t], tokens[t + 1])` already occurred earlier in the row
([`induction_mask`][]). The last position is never scored (it has no next token). Rows are
deranged as for jacdc's data.

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
from ._torch_files import read_torch_tensor
from ._torch_rng import torch_randperm


SHUFFLE_SEED = 42
PAPER_INDUCTION_REPO = "ArthurConmy/redwood_attn_2l"
PAPER_INDUCTION_FILES = ("validation_data.pt", "mask_repeat_candidates.pkl")
"""The original's token rows and repeat-candidate mask, in the hub repo of redwood_attn_2l."""
_GET_PAPER_DATA = (
    f"`hf download {PAPER_INDUCTION_REPO} {' '.join(PAPER_INDUCTION_FILES)} --local-dir DIR` "
    "on a machine with network access, then pass data_dir=DIR (or keep the files in the folder "
    "of the weights)"
)
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
        raise FileNotFoundError(
            f"No induction data file {path!r}. Pass data='paper' (the original's data, with "
            "data_dir=), data='jacdc' (generated sequences) or the path of a .npy/.npz file."
        )
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


def check_induction_arrays(tokens, mask, *, tokens_name: str, mask_name: str):
    """`(tokens, mask)` as `int64` and `bool` arrays after checking that `tokens` is a 2-D
    array of non-negative integer ids and `mask` a boolean (or 0/1) array of the same shape;
    one-line `ValueError`s naming the fix otherwise."""
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer) or tokens.size == 0:
        raise ValueError(
            f"{tokens_name} must hold a non-empty 2-D integer array of token ids (rows, "
            f"positions); got {tokens.dtype} of shape {tokens.shape}. Pass the original's "
            f"{PAPER_INDUCTION_FILES[0]} (or token ids of that shape)."
        )
    if tokens.min() < 0:
        raise ValueError(f"{tokens_name} holds negative token ids ({tokens.min()}).")
    if mask.shape != tokens.shape:
        raise ValueError(
            f"{mask_name} has shape {mask.shape} but {tokens_name} has {tokens.shape}; pass the "
            f"mask that belongs to these tokens (the original's {PAPER_INDUCTION_FILES[1]} "
            f"goes with its {PAPER_INDUCTION_FILES[0]})."
        )
    if mask.dtype != np.bool_:
        if not np.issubdtype(mask.dtype, np.integer) or not np.isin(mask, (0, 1)).all():
            raise ValueError(
                f"{mask_name} must be boolean (or 0/1), got {mask.dtype} with values other "
                "than 0 and 1; pass the repeat-candidate mask of these tokens."
            )
    return tokens.astype(np.int64), mask.astype(bool)


def load_paper_induction_data(data_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The original's `(tokens, mask)` from `data_dir`/[`PAPER_INDUCTION_FILES`][] (torch
    files, read without torch), checked with [`check_induction_arrays`][]."""
    paths = [os.path.join(os.fspath(data_dir), name) for name in PAPER_INDUCTION_FILES]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"The paper's Induction data are missing: no {', '.join(missing)}. Get them with "
            f"{_GET_PAPER_DATA}; or pass data='jacdc' for generated repeated-token sequences."
        )
    tokens, mask = (read_torch_tensor(p) for p in paths)
    return check_induction_arrays(tokens, mask, tokens_name=paths[0], mask_name=paths[1])


def _split(
    model: Transformer,
    tokens: np.ndarray,
    mask: np.ndarray,
    corrupted: np.ndarray,
    targets: np.ndarray,
):
    """A split scoring `mask`'s positions; `targets[b, t]` is the token that follows position
    `t` of row `b`."""
    positions = np.nonzero(mask.any(axis=0))[0]
    if positions.size == 0:
        raise ValueError(
            "The induction mask marks no position (except perhaps the last, which has no next "
            "token here); nothing to score."
        )
    weights = mask[:, positions].astype(np.float32)
    nll = NLLMetric(targets=jnp.asarray(targets[:, positions]), weights=jnp.asarray(weights))
    return make_split(model, tokens, corrupted, positions, {"nll": nll}, kl_weights=weights)


def _own_split(model: Transformer, tokens: np.ndarray, mask: np.ndarray, shuffle_seed: int):
    """jacdc's data or the user's: the last position has no next token and is not scored; the
    corrupted rows are a derangement."""
    mask = mask.copy()
    mask[:, -1] = False
    targets = np.concatenate([tokens[:, 1:], tokens[:, -1:]], axis=1)  # last column unused
    corrupted = tokens[derangement(len(tokens), seed=shuffle_seed)]
    return _split(model, tokens, mask, corrupted, targets)


def _paper_split(
    model: Transformer,
    tokens: np.ndarray,
    mask: np.ndarray,
    rows: slice,
    seq_len: int,
    shuffle_seed: int,
):
    """The original's split: rows `rows` cut to `seq_len` positions, labels from the next
    column (so the last position is scored too), rows permuted by torch's `randperm`."""
    clean = tokens[rows, :seq_len].astype(np.int32)
    targets = tokens[rows, 1 : seq_len + 1].astype(np.int32)
    corrupted = clean[torch_randperm(len(clean), seed=shuffle_seed)]
    return _split(model, clean, mask[rows, :seq_len], corrupted, targets)


def _check_model_fits(
    model: Transformer, name: str, tokens: np.ndarray, n_positions: int | None = None
) -> None:
    """Token ids within the vocabulary; `n_positions` (default: every column) within n_ctx."""
    if tokens.max() >= model.cfg.d_vocab or tokens.min() < 0:
        raise ValueError(
            f"Tokenizer mismatch: the induction {name} tokens lie in [{tokens.min()}, "
            f"{tokens.max()}] but the model's vocabulary is [0, {model.cfg.d_vocab})."
        )
    n_positions = tokens.shape[1] if n_positions is None else n_positions
    if n_positions > model.cfg.n_ctx:
        raise ValueError(
            f"Induction sequences of {n_positions} tokens exceed the model's n_ctx "
            f"{model.cfg.n_ctx}; pass a smaller seq_len."
        )


def _paper_arrays(data_dir) -> tuple[np.ndarray, np.ndarray]:
    if data_dir is None:
        raise ValueError(
            "The paper's Induction data are the original's "
            f"{' and '.join(PAPER_INDUCTION_FILES)} from {PAPER_INDUCTION_REPO}: get them with "
            f"{_GET_PAPER_DATA}. Or pass data='jacdc' for generated repeated-token sequences."
        )
    return load_paper_induction_data(data_dir)


def make_paper_induction_task(
    model: Transformer,
    tokens,
    mask,
    *,
    n_val: int = 50,
    n_test: int = 50,
    seq_len: int = 300,
    shuffle_seed: int = SHUFFLE_SEED,
    source: "str | list[str]" = "given",
) -> TaskBundle:
    """The Induction task on the original's data as arrays: `tokens` `(rows, columns)` and
    their repeat-candidate `mask` of the same shape (as read from [`PAPER_INDUCTION_FILES`][]
    by [`load_paper_induction_data`][]), split and scored as the original does (see the module
    docstring). `source` is recorded in `info["data_files"]`."""
    tokens, mask = check_induction_arrays(
        tokens, mask, tokens_name="the induction tokens", mask_name="the induction mask"
    )
    if seq_len > tokens.shape[1] - 1:
        raise ValueError(
            f"seq_len={seq_len} needs rows of at least {seq_len + 1} tokens (the last "
            f"position's label is the next token); the data have {tokens.shape[1]}. Pass "
            f"seq_len <= {tokens.shape[1] - 1}."
        )
    if len(tokens) < n_val + n_test:
        raise ValueError(
            f"The induction data have {len(tokens)} rows; n_val + n_test = {n_val + n_test}."
        )
    val_rows, test_rows = slice(0, n_val), slice(n_val, n_val + n_test)
    for name, rows in (("validation", val_rows), ("test", test_rows)):
        _check_model_fits(model, name, tokens[rows, : seq_len + 1], seq_len)  # + the labels
    return TaskBundle(
        name="induction",
        model=model,
        val=_paper_split(model, tokens, mask, val_rows, seq_len, shuffle_seed),
        test=_paper_split(model, tokens, mask, test_rows, seq_len, shuffle_seed),
        default_metric="kl_div",
        canonical=None,
        info={
            "data": "paper",
            "data_files": source,
            "seq_len": seq_len,
            "shuffle_seed": shuffle_seed,
            "val_scored_positions": int(mask[val_rows, :seq_len].sum()),
            "test_scored_positions": int(mask[test_rows, :seq_len].sum()),
        },
    )


def make_induction_task(
    model: Transformer,
    *,
    seed: int = 0,
    n_val: int = 50,
    n_test: int = 50,
    seq_len: int = 300,
    data: "str | os.PathLike | tuple[np.ndarray, np.ndarray]" = "paper",
    data_dir: str | os.PathLike | None = None,
    bos: int | None = None,
    token_range: tuple[int, int] | None = None,
    shuffle_seed: int = SHUFFLE_SEED,
) -> TaskBundle:
    """The Induction task for `model`.

    **Arguments:**

    - `model`: the [`jacdc.models.Transformer`][] (redwood_attn_2l in the paper).
    - `seed`: seed of generated sequences (`data="jacdc"`: validation uses `seed`, test
        `seed + 1`).
    - `n_val`, `n_test`: rows per split.
    - `seq_len`: positions per row (generated, or cut from the paper's rows; the paper: 300).
    - `data`: `"paper"` (the original's files, from `data_dir`), `"jacdc"` (generated
        sequences), a path to your own tokens or a `(tokens, mask)` pair (see the module
        docstring; their rows are used whole).
    - `data_dir`: the folder holding [`PAPER_INDUCTION_FILES`][] (`data="paper"`).
    - `bos`: a BOS token put first in each generated sequence (`None`: none).
    - `token_range`: `[low, high)` of the random tokens; default [`default_token_range`][].
    - `shuffle_seed`: seed of the row permutation that makes the corrupted batch (torch's
        `randperm` for the paper's data, a derangement otherwise).

    **Returns:** a [`jacdc.tasks.TaskBundle`][] with metrics `kl_div` (default) and `nll`, no
    canonical circuit.
    """
    if isinstance(data, str) and data == "paper":
        tokens, mask = _paper_arrays(data_dir)
        return make_paper_induction_task(
            model,
            tokens,
            mask,
            n_val=n_val,
            n_test=n_test,
            seq_len=seq_len,
            shuffle_seed=shuffle_seed,
            source=[os.path.join(os.fspath(data_dir), name) for name in PAPER_INDUCTION_FILES],
        )
    info: dict = {"seed": seed, "shuffle_seed": shuffle_seed}
    if isinstance(data, str) and data == "jacdc":
        rng_range = default_token_range(model.cfg.d_vocab) if token_range is None else token_range
        val_data = repeated_token_sequences(n_val, seq_len, rng_range, seed=seed, bos=bos)
        test_data = repeated_token_sequences(n_test, seq_len, rng_range, seed=seed + 1, bos=bos)
        info["data"] = "jacdc"
    else:
        if isinstance(data, (str, os.PathLike)):
            tokens, mask = load_induction_data(data)
            info["data"] = os.fspath(data)
        else:
            tokens, mask = np.asarray(data[0], np.int32), np.asarray(data[1], bool)
            info["data"] = "given"
        if len(tokens) < n_val + n_test:
            raise ValueError(
                f"The induction data has {len(tokens)} rows; n_val + n_test = {n_val + n_test}."
            )
        val_data = tokens[:n_val], mask[:n_val]
        test_data = tokens[n_val : n_val + n_test], mask[n_val : n_val + n_test]
    for name, (tokens, _) in (("validation", val_data), ("test", test_data)):
        _check_model_fits(model, name, tokens)
    val = _own_split(model, *val_data, shuffle_seed)
    test = _own_split(model, *test_data, shuffle_seed)
    info.update(
        seq_len=int(val_data[0].shape[1]),
        val_scored_positions=int(val_data[1][:, :-1].sum()),
        test_scored_positions=int(test_data[1][:, :-1].sum()),
    )
    return TaskBundle(
        name="induction",
        model=model,
        val=val,
        test=test,
        default_metric="kl_div",
        canonical=None,
        info=info,
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
        data_files = (*PAPER_INDUCTION_FILES, "good_induction_candidates.pt")  # not weights
        ckpts = sorted(
            p
            for p in os.listdir(path)
            if p.endswith((".pth", ".pt", ".npz", ".safetensors")) and p not in data_files
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


def paper_data_dir(weights: str | os.PathLike | None) -> str | None:
    """Where the paper's Induction files are looked for when `data_dir` is not given: the
    folder of local `weights` (the folder itself, or the one holding the file); for a hub id,
    the files downloaded from that repo with `huggingface_hub` when it is installed and online;
    `None` otherwise."""
    if weights is None or weights in ("random", "random-small"):
        return None
    path = os.fspath(weights)
    if os.path.isdir(path):
        return path
    if os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path))
    try:
        import huggingface_hub

        files = [huggingface_hub.hf_hub_download(path, name) for name in PAPER_INDUCTION_FILES]
    except Exception:  # not installed, offline, not a repo id, no such files
        return None
    return os.path.dirname(files[0])


def build_induction(
    weights: str | None = None,
    seed: int = 0,
    n_val: int = 50,
    n_test: int = 50,
    model: Transformer | None = None,
    seq_len: int = 300,
    data: str = "paper",
    data_dir: str | None = None,
    bos: int | None = None,
) -> TaskBundle:
    """Registry builder of `"induction"`: `weights` (a TransformerLens checkpoint, `"random"` or
    `"random-small"`) or `model`, then [`make_induction_task`][]. With `data="paper"` (the
    default) the original's files come from `data_dir`, or else from the folder of the weights
    ([`paper_data_dir`][])."""
    if data == "paper":
        if model is None and weights is None:
            resolve_model(REDWOOD_ATTN_2L, None, None)  # raises: name the weights first
        data_dir = paper_data_dir(weights) if data_dir is None else data_dir
        tokens, mask = _paper_arrays(data_dir)  # before loading any weights
        return make_paper_induction_task(
            resolve_model(REDWOOD_ATTN_2L, weights, model, seed=seed),
            tokens,
            mask,
            n_val=n_val,
            n_test=n_test,
            seq_len=seq_len,
            source=[os.path.join(os.fspath(data_dir), name) for name in PAPER_INDUCTION_FILES],
        )
    model = resolve_model(REDWOOD_ATTN_2L, weights, model, seed=seed)
    return make_induction_task(
        model,
        seed=seed,
        n_val=n_val,
        n_test=n_test,
        seq_len=seq_len,
        data=data,
        data_dir=data_dir,
        bos=bos,
    )


register_task(
    TaskSpec(
        name="induction",
        description="Induction on redwood_attn_2l: the original's OpenWebText rows and mask "
        "files by default (data_dir=), or generated repeated-token sequences (data=jacdc), or "
        "your own token file; no canonical circuit.",
        build=build_induction,
        metrics=("kl_div", "nll"),
        default_metric="kl_div",
        needs_weights=True,
    )
)
