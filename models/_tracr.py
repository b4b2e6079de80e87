"""tracr models as jacdc transformers, and the circuit a tracr program actually uses.

[tracr](https://github.com/google-deepmind/tracr) compiles a RASP program into a transformer with
no LayerNorm, ReLU MLPs and one-hot residual subspaces, each named by a *residual label*
(`"tokens:3"`, `"indices:0"`, `"one"`, `"frac_prevs_7"`, ...). Every tracr layer has one attention
block and one MLP; blocks the program does not use are zero-filled, which fits jacdc's fixed
per-layer node set.

**Loading.** [`load_tracr_model`][] reads only the *structure* of an
`AssembledTransformerModel`: the Haiku params (`transformer/layer_{i}/attn/{query,key,value,
linear}`, `transformer/layer_{i}/mlp/{linear_1,linear_2}`, each `{"w", "b"}` with Haiku's
`(in, out)` orientation and heads concatenated on the `out` axis; `token_embed`, `pos_embed`),
`model_config`, `residual_labels` and the two encoders. It imports neither tracr nor Haiku.
tracr's unembedding is *not* in the params (it is a closure inside `compiler/assemble.py`), so it
is rebuilt here: `w_u[:, j]` is the one-hot of the residual label of output category `j` (in the
order of the output encoder), or of the single numerical output direction. The logits are
therefore exactly tracr's pre-argmax output. Token and position embeddings become the two graph
sources `hook_embed` and `hook_pos_embed`.

**Token ids** are tracr's own: the input encoder's `encoding_map` (sorted values, so e.g.
`{1: 0, 2: 1, 3: 2, "BOS": 3, "compiler_pad": 4}`). Every sequence starts with BOS at position 0;
position 0 has no positional embedding (tracr's `pos_embed` row 0 is zero, row `p` holds
`indices:{p-1}`), and `n_ctx = max_seq_len + 1`. Padding is not supported: a pad only means
"ignore me" if attention masks pad keys (tracr's model has a `pad_token` option for that, which
tracr-pypi 1.0.0's assembler leaves unset), and jacdc's attention has no key mask. Pad tokens and
ids are rejected by [`TracrMetadata.encode`][] and [`TracrMetadata.check_ids`][].

**Ground truth.** [`program_ground_truth`][] reads the weights to find the edges along which the
compiled model moves information. With `W(s)` the residual labels a source writes and `R(r)` the
labels a receiver reads:

- `W`: embeddings: the nonzero columns of their tables; a head: the nonzero columns of `W_O`
  restricted to its *active* value dims (a nonzero column of `W_V` or `b_V`); an MLP: the nonzero
  columns of `W_out` restricted to active hidden units, plus nonzero `b_out` entries.
- `R`: q/k/v inputs: the nonzero rows of `W_Q`/`W_K`/`W_V`; an MLP input: the nonzero rows of
  `W_in`; the output: the nonzero rows of the rebuilt `W_U`.
- Liveness, from the output backwards (one pass in reverse topological order suffices, because a
  receiver's liveness depends only on its own node): the output is live; a source is live iff it
  has a ground-truth edge into a live receiver; the q/k/v inputs of a live head and the input of
  a live MLP are live.
- An ADDITION edge `s -> r` is in the ground truth iff `r` is live and `W(s) & R(r)` is not
  empty. A DIRECT edge `x_input -> x` is in it iff its head is live and at least one ADDITION
  edge into `x_input` is.

By construction, zero-ablating every other edge changes no receiver's input inside the subspace
the receiver reads, so the outputs are unchanged (tested). The converse, that every ground-truth
edge matters on the task data, holds up to the exceptions listed in `jacdc.tasks._tracr`.

**Canonical circuits vs. ground truth** (the canonical circuits are the outputs of an ACDC run
with zero ablation and the l2 metric, reference §4.5; the full list of differences and their
causes is in `jacdc.tasks._tracr`): proportion's ground truth equals its canonical circuit;
reverse's holds 6 more edges: the BOS-fallback edges of its last head (every tracr head scores
`one` x `tokens:BOS`, so that a query without a match attends to BOS) and the q/k edges of its
`length` head, whose selector is always TRUE, so the pattern stays uniform without them.
"""

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jacdc._graph import QKV, Edge, graph_of

from ._config import TransformerConfig
from ._transformer import Sources, Transformer


class TracrCompileError(ValueError):
    """tracr could not compile a RASP program (unsupported expression, missing `tokens`, ...)."""


@dataclasses.dataclass(frozen=True)
class TracrMetadata:
    """Host-side facts about a compiled tracr program (kept out of the model pytree).

    - `program_name`: a name for the program (default: the RASP label of its output SOp; tracr
        labels carry a process-dependent id suffix, e.g. `reverse_1`).
    - `input_encoding`: token -> id (tracr's input encoder; includes BOS and pad).
    - `output_decoding`: output id -> value for categorical programs, `None` for numerical ones.
    - `numerical`: whether the output is numerical (one output dimension, no argmax).
    - `residual_labels`: the label of every residual dimension, in order.
    - `output_labels`: the residual labels the unembedding reads, in output order.
    - `bos_token`, `bos_id`: the BOS token and its id (always at position 0).
    - `pad_token`, `pad_id`: tracr's pad token and id (rejected in inputs).
    - `max_seq_len`: the longest program input, *without* BOS (sequences hold up to
        `max_seq_len + 1` ids).
    - `causal`: whether the compiled attention is causal.
    """

    program_name: str
    input_encoding: dict[Any, int]
    output_decoding: dict[int, Any] | None
    numerical: bool
    residual_labels: tuple[str, ...]
    output_labels: tuple[str, ...]
    bos_token: Any
    bos_id: int
    pad_token: Any
    pad_id: int | None
    max_seq_len: int
    causal: bool = False

    @property
    def vocab(self) -> list:
        """The program's input vocabulary (without BOS and pad), in id order."""
        specials = {self.bos_token, self.pad_token}
        return [
            t
            for t, _ in sorted(self.input_encoding.items(), key=lambda kv: kv[1])
            if t not in specials
        ]

    def encode(self, inputs: Sequence) -> np.ndarray:
        """Token ids `(len(inputs) + 1,)` of one program input, with BOS put in front.

        `inputs` are the program's tokens *without* BOS. Raises a `ValueError` for tokens
        outside the vocabulary, BOS or pad tokens inside `inputs`, and inputs longer than
        `max_seq_len`.
        """
        inputs = list(inputs)
        if len(inputs) > self.max_seq_len:
            raise ValueError(
                f"Program {self.program_name!r} was compiled for inputs of at most "
                f"{self.max_seq_len} tokens (plus BOS), got {len(inputs)}: {inputs!r}. Shorten "
                "the input or recompile with a larger `max_seq_len`."
            )
        for i, tok in enumerate(inputs):
            if tok == self.bos_token:
                raise ValueError(
                    f"Input position {i} holds the BOS token {tok!r}; `encode` adds BOS itself. "
                    "Pass only the program's tokens."
                )
            if tok == self.pad_token:
                raise ValueError(
                    f"Input position {i} holds the pad token {tok!r}. Padding is not supported "
                    "(jacdc's attention has no key mask, so a pad would be attended like any "
                    "token): batch sequences of equal length instead."
                )
            if tok not in self.input_encoding:
                raise ValueError(
                    f"Token {tok!r} at input position {i} is not in the vocabulary of program "
                    f"{self.program_name!r}: expected one of {self.vocab!r}. Map it to a "
                    "vocabulary token or recompile with a larger vocabulary."
                )
        return np.array([self.bos_id] + [self.input_encoding[t] for t in inputs], np.int32)

    def encode_batch(self, inputs: Sequence[Sequence]) -> np.ndarray:
        """Token ids `(batch, seq)` of equally long program inputs (BOS put in front)."""
        rows = [self.encode(x) for x in inputs]
        lengths = sorted({len(r) for r in rows})
        if len(lengths) != 1:
            raise ValueError(
                f"All inputs of a batch must have the same length (padding is not supported), "
                f"got lengths {[n - 1 for n in lengths]}. Group the inputs by length."
            )
        return np.stack(rows)

    def check_ids(self, ids) -> None:
        """Checks token ids `(seq,)` or `(batch, seq)` for this model: ids in range, BOS at
        position 0 and nowhere else, no pad ids, at most `max_seq_len + 1` positions."""
        ids = np.asarray(ids)
        if ids.ndim not in (1, 2) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"Expected integer token ids of shape (seq,) or (batch, seq), got shape "
                f"{ids.shape} and dtype {ids.dtype}. Build them with `metadata.encode`."
            )
        ids = ids.reshape(-1, ids.shape[-1])
        seq = ids.shape[1]
        n_vocab = len(self.input_encoding)
        if seq > self.max_seq_len + 1 or seq < 1:
            raise ValueError(
                f"Sequences hold BOS plus at most {self.max_seq_len} tokens ({self.max_seq_len + 1}"
                f" positions) for program {self.program_name!r}; got {seq} positions. Shorten "
                "the inputs or recompile with a larger `max_seq_len`."
            )
        if ids.min() < 0 or ids.max() >= n_vocab:
            raise ValueError(
                f"Token ids must lie in [0, {n_vocab}) for program {self.program_name!r}, got "
                f"min {ids.min()} and max {ids.max()}. Encode tokens with `metadata.encode`."
            )
        if (ids[:, 0] != self.bos_id).any():
            raise ValueError(
                f"Every sequence must start with BOS (id {self.bos_id}); got first ids "
                f"{sorted(set(ids[:, 0].tolist()))}. tracr models rely on BOS at position 0; "
                "use `metadata.encode`, which puts it there."
            )
        if (ids[:, 1:] == self.bos_id).any():
            raise ValueError(
                f"BOS (id {self.bos_id}) may appear only at position 0, but appears later in "
                "some sequence. Remove it from the program's tokens."
            )
        if self.pad_id is not None and (ids == self.pad_id).any():
            raise ValueError(
                f"Pad id {self.pad_id} ({self.pad_token!r}) found in the input. Padding is not "
                "supported (jacdc's attention has no key mask, so a pad would be attended like "
                "any token): batch sequences of equal length instead."
            )

    def decode(self, logits) -> list:
        """Decodes logits `(seq, d_vocab_out)` (or a batch of them) like tracr's `.decoded`:
        the argmax category (categorical) or the value (numerical) at every position, with the
        BOS token at position 0."""
        logits = np.asarray(logits)
        if logits.ndim == 3:
            return [self.decode(x) for x in logits]
        if logits.ndim != 2 or logits.shape[-1] != len(self.output_labels):
            raise ValueError(
                f"Expected logits of shape (seq, {len(self.output_labels)}) or (batch, seq, "
                f"{len(self.output_labels)}), got {logits.shape}."
            )
        if self.numerical:
            values = [float(v) for v in logits[:, 0]]
        else:
            values = [self.output_decoding[int(i)] for i in logits.argmax(-1)]
        return [self.bos_token] + values[1:]


# ---- weight layout: Haiku (in, heads*out) <-> jacdc (head, in, out) --------------------------


def split_heads_in(w, n_heads: int) -> np.ndarray:
    """Haiku q/k/v weights `(d_model, head * d_head)` -> `(head, d_model, d_head)`."""
    w = np.asarray(w)
    d_model, width = w.shape
    return w.reshape(d_model, n_heads, width // n_heads).transpose(1, 0, 2)


def merge_heads_in(w) -> np.ndarray:
    """Inverse of [`split_heads_in`][]."""
    w = np.asarray(w)
    n_heads, d_model, d_head = w.shape
    return w.transpose(1, 0, 2).reshape(d_model, n_heads * d_head)


def split_heads_out(w, n_heads: int) -> np.ndarray:
    """Haiku output projection `(head * d_head, d_model)` -> `(head, d_head, d_model)`."""
    w = np.asarray(w)
    width, d_model = w.shape
    return w.reshape(n_heads, width // n_heads, d_model)


def merge_heads_out(w) -> np.ndarray:
    """Inverse of [`split_heads_out`][]."""
    w = np.asarray(w)
    n_heads, d_head, d_model = w.shape
    return w.reshape(n_heads * d_head, d_model)


def split_heads_bias(b, n_heads: int) -> np.ndarray:
    """Haiku q/k/v bias `(head * d_head,)` -> `(head, d_head)`."""
    b = np.asarray(b)
    return b.reshape(n_heads, b.shape[0] // n_heads)


def merge_heads_bias(b) -> np.ndarray:
    """Inverse of [`split_heads_bias`][]."""
    return np.asarray(b).reshape(-1)


# ---- loading -----------------------------------------------------------------------------------


def _param(params: Mapping, module: str, name: str) -> np.ndarray:
    if module not in params or name not in params[module]:
        have = sorted(params)
        raise ValueError(
            f"tracr params lack `{module}/{name}`; got modules {have[:6]}"
            f"{' ...' if len(have) > 6 else ''}. Pass the `AssembledTransformerModel` returned by "
            "`tracr.compiler.compiling.compile_rasp_to_model`."
        )
    return np.asarray(params[module][name], np.float32)


def _infer_output_labels(
    labels: Sequence[str], values: Sequence | None, written: np.ndarray, read: np.ndarray
) -> tuple[str, ...]:
    """The output subspace's labels when the caller did not name the program's output SOp."""
    fix = "Pass `output_label=program.label` (`compile_tracr` does this for you)."
    if values is not None:
        candidates = []
        prefixes = {lab.split(":", 1)[0] for lab in labels if ":" in lab}
        for name in sorted(prefixes):
            want = [f"{name}:{v}" for v in values]
            have = [lab for lab in labels if lab.startswith(name + ":")]
            if sorted(want) == sorted(have):
                candidates.append(name)
        if len(candidates) != 1:
            raise ValueError(
                f"Cannot tell which residual subspace holds the categorical output with values "
                f"{list(values)}: candidates {candidates}. {fix}"
            )
        return tuple(f"{candidates[0]}:{v}" for v in values)
    candidates = [
        lab
        for i, lab in enumerate(labels)
        if ":" not in lab and lab != "one" and written[i] and not read[i]
    ]
    if len(candidates) != 1:
        raise ValueError(
            f"Cannot tell which residual direction holds the numerical output: candidates "
            f"(written, never read) {candidates}. {fix}"
        )
    return (candidates[0],)


def load_tracr_model(
    assembled, *, output_label: str | None = None, program_name: str | None = None
) -> tuple[Transformer, TracrMetadata]:
    """A [`jacdc.models.Transformer`][] with the weights of a compiled tracr model.

    **Arguments:**

    - `assembled`: a tracr `AssembledTransformerModel` (from
        `tracr.compiler.compiling.compile_rasp_to_model`). Only its structure is read.
    - `output_label`: the RASP label of the program's output SOp (`program.label`). If `None`, it
        is inferred from the residual labels and the output encoder; a `ValueError` says so when
        that is ambiguous.
    - `program_name`: stored in the metadata; defaults to the output label.

    **Returns:**

    `(model, metadata)`. The model has `positional="separate"` (token and position embeddings
    are two graph sources), no normalization, ReLU MLPs, tracr's `causal` flag and attention
    scale `sqrt(key_size)`; its logits are tracr's output-space values (`d_vocab_out` categories,
    or 1 for numerical programs). See [`TracrMetadata`][] for encoding and decoding.
    """
    cfg, params, metadata = _tracr_parts(assembled, output_label, program_name)
    return Transformer.from_params(cfg, **params), metadata


def _tracr_parts(assembled, output_label, program_name):
    """`(cfg, from_params keyword arguments, metadata)` of a tracr model (see
    [`load_tracr_model`][]): NumPy arrays only, so they can be cached on disk."""
    params = getattr(assembled, "params", None)
    tcfg = getattr(assembled, "model_config", None)
    labels = getattr(assembled, "residual_labels", None)
    in_enc = getattr(assembled, "input_encoder", None)
    out_enc = getattr(assembled, "output_encoder", None)
    if params is None or tcfg is None or labels is None or in_enc is None:
        raise ValueError(
            f"Expected a tracr `AssembledTransformerModel` (with params, model_config, "
            f"residual_labels and input_encoder), got {type(assembled).__name__}. Compile with "
            "`tracr.compiler.compiling.compile_rasp_to_model` or use `compile_tracr`."
        )
    if getattr(tcfg, "layer_norm", False):
        raise ValueError(
            "This tracr model uses LayerNorm, which tracr's compiler never emits and this loader "
            "does not support. Load a model straight from `compile_rasp_to_model`."
        )
    if getattr(tcfg, "activation_function", jax.nn.relu) is not jax.nn.relu:
        raise ValueError(
            f"Expected tracr's ReLU MLPs, got activation {tcfg.activation_function!r}. Load a "
            "model straight from `compile_rasp_to_model`."
        )
    L, H, d_head = int(tcfg.num_layers), int(tcfg.num_heads), int(tcfg.key_size)
    w_e = _param(params, "token_embed", "embeddings")
    w_pos = _param(params, "pos_embed", "embeddings")
    d_vocab, d_model = w_e.shape
    labels = tuple(str(lab) for lab in labels)
    if len(labels) != d_model:
        raise ValueError(
            f"Expected one residual label per residual dimension ({d_model}), got {len(labels)}."
        )

    blocks = []
    d_mlp = None
    for layer in range(L):
        attn, mlp = f"transformer/layer_{layer}/attn", f"transformer/layer_{layer}/mlp"
        w_in = _param(params, f"{mlp}/linear_1", "w")
        d_mlp = w_in.shape[1]
        blocks.append(
            dict(
                ln1=None,
                w_q=split_heads_in(_param(params, f"{attn}/query", "w"), H),
                b_q=split_heads_bias(_param(params, f"{attn}/query", "b"), H),
                w_k=split_heads_in(_param(params, f"{attn}/key", "w"), H),
                b_k=split_heads_bias(_param(params, f"{attn}/key", "b"), H),
                w_v=split_heads_in(_param(params, f"{attn}/value", "w"), H),
                b_v=split_heads_bias(_param(params, f"{attn}/value", "b"), H),
                w_o=split_heads_out(_param(params, f"{attn}/linear", "w"), H),
                b_o=_param(params, f"{attn}/linear", "b"),
                ln2=None,
                w_in=w_in,
                b_in=_param(params, f"{mlp}/linear_1", "b"),
                w_out=_param(params, f"{mlp}/linear_2", "w"),
                b_out=_param(params, f"{mlp}/linear_2", "b"),
            )
        )

    # Which labels some layer writes / reads (only needed to infer a numerical output label).
    written = np.zeros(d_model, bool)
    read = np.zeros(d_model, bool)
    for blk in blocks:
        written |= (blk["w_o"] != 0).any((0, 1)) | (blk["w_out"] != 0).any(0)
        read |= (blk["w_q"] != 0).any((0, 2)) | (blk["w_k"] != 0).any((0, 2))
        read |= (blk["w_v"] != 0).any((0, 2)) | (blk["w_in"] != 0).any(1)

    categorical = out_enc is not None and hasattr(out_enc, "encoding_map")
    out_values = None
    if categorical:
        # Category id j is column j of the unembedding (tracr's argmax index).
        pairs = sorted(out_enc.encoding_map.items(), key=lambda kv: kv[1])
        if [i for _, i in pairs] != list(range(len(pairs))):
            raise ValueError(
                f"Unexpected output encoding {out_enc.encoding_map}: ids must be 0..n-1."
            )
        out_values = [v for v, _ in pairs]
    if output_label is not None:
        if categorical:
            out_labels = tuple(f"{output_label}:{v}" for v in out_values)
        else:
            out_labels = (output_label,)
    else:
        out_labels = _infer_output_labels(labels, out_values, written, read)
    index = {lab: i for i, lab in enumerate(labels)}
    missing = [lab for lab in out_labels if lab not in index]
    if missing:
        raise ValueError(
            f"The output labels {missing} are not residual labels of this model (labels look like "
            f"{list(labels[:4])}). Check that `output_label` is the program's `label`."
        )
    # tracr's unembedding is `x @ project(residual_space, output_space)`: one-hot columns.
    w_u = np.zeros((d_model, len(out_labels)), np.float32)
    for j, lab in enumerate(out_labels):
        w_u[index[lab], j] = 1.0

    cfg = TransformerConfig(
        n_layers=L,
        n_heads=H,
        d_model=d_model,
        d_head=d_head,
        d_mlp=d_mlp,
        d_vocab=d_vocab,
        n_ctx=w_pos.shape[0],
        d_vocab_out=len(out_labels),
        act_fn="relu",
        normalization="none",
        positional="separate",
        causal=bool(getattr(tcfg, "causal", False)),
        attn_scale=math.sqrt(d_head),
    )
    params = dict(w_e=w_e, w_pos=w_pos, blocks=blocks, ln_final=None, w_u=w_u, b_u=None)
    encoding = dict(in_enc.encoding_map)
    bos = in_enc.bos_token
    pad = getattr(in_enc, "pad_token", None)
    if bos is None or bos not in encoding:
        raise ValueError(
            "This tracr model was compiled without a BOS token; jacdc's tracr support needs one "
            "(compile with `compiler_bos=...`)."
        )
    name = program_name or (output_label if output_label else out_labels[0].split(":", 1)[0])
    metadata = TracrMetadata(
        program_name=name,
        input_encoding=encoding,
        output_decoding=dict(enumerate(out_values)) if categorical else None,
        numerical=not categorical,
        residual_labels=labels,
        output_labels=out_labels,
        bos_token=bos,
        bos_id=encoding[bos],
        pad_token=pad,
        pad_id=None if pad is None else encoding.get(pad),
        max_seq_len=w_pos.shape[0] - 1,
        causal=cfg.causal,
    )
    return cfg, params, metadata


def compile_rasp(
    program,
    vocab,
    max_seq_len: int,
    compiler_bos: str = "BOS",
    compiler_pad: str = "compiler_pad",
    *,
    causal: bool = False,
    mlp_exactness: int = 100,
):
    """Compiles a RASP program with tracr's compiler and returns tracr's
    `AssembledTransformerModel` (load it with [`load_tracr_model`][], or use
    [`compile_tracr`][] for both steps). Checks the arguments first and raises
    [`TracrCompileError`][] (a `ValueError`) when tracr cannot compile the program."""
    vocab = set(vocab)
    if not vocab:
        raise ValueError("`vocab` is empty; pass the set of input tokens, e.g. {1, 2, 3}.")
    if not isinstance(max_seq_len, int) or isinstance(max_seq_len, bool) or max_seq_len < 1:
        raise ValueError(f"`max_seq_len` must be a positive int, got {max_seq_len!r}.")
    for special, what in ((compiler_bos, "compiler_bos"), (compiler_pad, "compiler_pad")):
        if special in vocab:
            raise ValueError(
                f"{what}={special!r} is also a vocabulary token; choose a special token outside "
                f"the vocabulary {sorted(vocab, key=str)}."
            )
    from tracr.compiler import compiling
    from tracr.rasp import rasp

    if not isinstance(program, rasp.SOp):
        raise TypeError(f"Expected a RASP SOp (tracr.rasp.rasp.SOp), got {type(program).__name__}.")
    try:
        return compiling.compile_rasp_to_model(
            program,
            vocab=vocab,
            max_seq_len=max_seq_len,
            causal=causal,
            compiler_bos=compiler_bos,
            compiler_pad=compiler_pad,
            mlp_exactness=mlp_exactness,
        )
    except Exception as err:  # tracr raises many kinds; all mean "cannot compile this"
        raise TracrCompileError(
            f"tracr could not compile program {program.label!r} (vocab {sorted(vocab, key=str)}, "
            f"max_seq_len {max_seq_len}): {type(err).__name__}: {err}. Check that the program "
            "uses `rasp.tokens`, categorical Select keys/queries, and the RASP features listed "
            "in `tracr.compiler.validating`."
        ) from err


def compile_tracr(
    program,
    vocab,
    max_seq_len: int,
    compiler_bos: str = "BOS",
    compiler_pad: str = "compiler_pad",
    *,
    causal: bool = False,
    mlp_exactness: int = 100,
) -> tuple[Transformer, TracrMetadata]:
    """Compiles a RASP program with tracr and loads it (see [`load_tracr_model`][]).

    **Arguments:**

    - `program`: a `tracr.rasp.rasp.SOp` (the program's output).
    - `vocab`: the set of input tokens (without BOS and pad).
    - `max_seq_len`: the longest input, without BOS.
    - `compiler_bos`, `compiler_pad`: tracr's special tokens; must not be in `vocab`.
    - `causal`, `mlp_exactness`: passed to tracr's compiler.

    **Returns:** `(model, metadata)`.

    Raises [`TracrCompileError`][] (a `ValueError`) when tracr cannot compile the program. Takes
    seconds: cache the result (the tasks use `functools.lru_cache`).
    """
    assembled = compile_rasp(
        program,
        vocab,
        max_seq_len,
        compiler_bos,
        compiler_pad,
        causal=causal,
        mlp_exactness=mlp_exactness,
    )
    return load_tracr_model(assembled, output_label=program.label, program_name=program.label)


# ---- the on-disk cache -------------------------------------------------------------------------


_TOKEN_TYPES = {"int": int, "str": str, "float": float, "bool": bool}


def _token_to_json(tok):
    kind = type(tok).__name__
    if kind not in _TOKEN_TYPES:
        raise TypeError(f"token {tok!r} of type {kind} cannot be cached")
    return [kind, tok]


def _token_from_json(pair):
    kind, value = pair
    return _TOKEN_TYPES[kind](value)


_BLOCK_ARRAYS = ("w_q", "b_q", "w_k", "b_k", "w_v", "b_v", "w_o", "b_o", "w_in", "b_in",
                 "w_out", "b_out")  # fmt: skip


def _to_entry(cfg: TransformerConfig, params: dict, md: TracrMetadata) -> tuple[dict, dict]:
    arrays = {"w_e": params["w_e"], "w_pos": params["w_pos"], "w_u": params["w_u"]}
    for i, blk in enumerate(params["blocks"]):
        for name in _BLOCK_ARRAYS:
            arrays[f"blocks.{i}.{name}"] = np.asarray(blk[name], np.float32)
    decoding = md.output_decoding
    meta = {
        "cfg": dataclasses.asdict(cfg),
        "metadata": {
            "program_name": md.program_name,
            "input_encoding": [[_token_to_json(t), i] for t, i in md.input_encoding.items()],
            "output_decoding": None if decoding is None
            else [[i, _token_to_json(v)] for i, v in decoding.items()],
            "numerical": md.numerical,
            "residual_labels": list(md.residual_labels),
            "output_labels": list(md.output_labels),
            "bos_token": _token_to_json(md.bos_token),
            "bos_id": md.bos_id,
            "pad_token": None if md.pad_token is None else _token_to_json(md.pad_token),
            "pad_id": md.pad_id,
            "max_seq_len": md.max_seq_len,
            "causal": md.causal,
        },
    }  # fmt: skip
    return meta, arrays


def _from_entry(meta: dict, arrays: dict) -> tuple[Transformer, TracrMetadata]:
    """The model and metadata of a cache entry; raises if its structure is not what
    [`_to_entry`][] writes (the shapes are checked by `Transformer.from_params`)."""
    cfg = TransformerConfig(**meta["cfg"])
    if cfg.normalization != "none" or cfg.positional != "separate" or not cfg.has_mlp:
        raise ValueError("not a tracr configuration")
    want = {"w_e", "w_pos", "w_u"} | {
        f"blocks.{i}.{n}" for i in range(cfg.n_layers) for n in _BLOCK_ARRAYS
    }
    if set(arrays) != want:
        raise ValueError(f"unexpected arrays {sorted(set(arrays) ^ want)[:4]}")
    blocks = [
        dict({n: arrays[f"blocks.{i}.{n}"] for n in _BLOCK_ARRAYS}, ln1=None, ln2=None)
        for i in range(cfg.n_layers)
    ]
    model = Transformer.from_params(
        cfg, w_e=arrays["w_e"], w_pos=arrays["w_pos"], blocks=blocks, ln_final=None,
        w_u=arrays["w_u"], b_u=None,
    )  # fmt: skip
    m = meta["metadata"]
    decoding = m["output_decoding"]
    md = TracrMetadata(
        program_name=m["program_name"],
        input_encoding={_token_from_json(t): int(i) for t, i in m["input_encoding"]},
        output_decoding=None if decoding is None
        else {int(i): _token_from_json(v) for i, v in decoding},
        numerical=bool(m["numerical"]),
        residual_labels=tuple(m["residual_labels"]),
        output_labels=tuple(m["output_labels"]),
        bos_token=_token_from_json(m["bos_token"]),
        bos_id=int(m["bos_id"]),
        pad_token=None if m["pad_token"] is None else _token_from_json(m["pad_token"]),
        pad_id=m["pad_id"],
        max_seq_len=int(m["max_seq_len"]),
        causal=bool(m["causal"]),
    )  # fmt: skip
    if len(md.residual_labels) != cfg.d_model or len(md.output_labels) != cfg.vocab_out:
        raise ValueError("metadata does not match the model's shape")
    return model, md


def tracr_version() -> str:
    """The installed tracr distribution's version (read without importing tracr)."""
    import importlib.metadata

    for dist in ("tracr-pypi", "tracr"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def cached_tracr_model(
    key: dict, build: Callable[[], tuple[Any, str]], program_name: str
) -> tuple[Transformer, TracrMetadata]:
    """A compiled tracr model from jacdc's on-disk cache ([`jacdc._cache`][]), compiled with
    `build` and stored if it is not there (or not valid: rebuilt with a `CacheWarning`).

    **Arguments:**

    - `key`: everything the compiled model depends on, JSON-serialisable: the program (e.g.
        its source and a description), vocabulary, maximum sequence length and compiler
        options. The tracr version and the cache format are added here.
    - `build`: `() -> (assembled, output_label)`, tracr's `AssembledTransformerModel` and the
        label of the program's output SOp; called only on a miss (it imports tracr).
    - `program_name`: stored in the metadata.

    **Returns:** `(model, metadata)`, as [`load_tracr_model`][]. Reading a hit imports neither
    tracr nor Haiku. With `JACDC_NO_CACHE=1` this is `load_tracr_model(*build())`.
    """
    import warnings

    from jacdc import _cache

    full_key = _cache.cache_key({"kind": "tracr-model", "tracr": tracr_version(),
                                 "program_name": program_name, **key})  # fmt: skip
    hit = _cache.read_entry("tracr", full_key)
    if hit is not None:
        try:
            return _from_entry(*hit)
        except Exception as err:  # structurally wrong: never trusted
            warnings.warn(
                f"Ignoring the jacdc cache entry for tracr program {program_name!r} "
                f"({type(err).__name__}: {err}); recompiling it.", _cache.CacheWarning,
                stacklevel=2,
            )  # fmt: skip
    assembled, label = build()
    cfg, params, md = _tracr_parts(assembled, label, program_name)
    try:
        meta, arrays = _to_entry(cfg, params, md)
    except TypeError:  # tokens JSON cannot type: not cached
        meta = None
    if meta is not None:
        _cache.write_entry("tracr", full_key, meta, arrays)
    return Transformer.from_params(cfg, **params), md


# ---- residual stream and ground truth ------------------------------------------------------------


def residuals_from_sources(model: Transformer, sources: Sources) -> np.ndarray:
    """The residual stream `(sublayer, *batch, seq, d_model)` after every sublayer (layer 0
    attention, layer 0 MLP, layer 1 attention, ...), from the source outputs of a pass: the sum
    of the sources written so far plus the attention output biases `b_O` (which belong to no
    node). For a clean pass this is tracr's `.residuals`. Computed with NumPy on the host."""
    shape, cfg = model.graph_shape, model.cfg
    resid = np.asarray(sources.resid)  # (*batch, src, seq, d_model)
    out = []
    bias = np.zeros((cfg.d_model,), resid.dtype)
    for layer, blk in enumerate(model.blocks):
        bias = bias + np.asarray(blk.b_o)
        out.append(resid[..., : shape.n_src_before_mlp(layer), :, :].sum(-3) + bias)
        if cfg.has_mlp:
            out.append(resid[..., : shape.n_src_before_layer(layer + 1), :, :].sum(-3) + bias)
    return np.stack(out)


def _nonzero(x, axis) -> np.ndarray:
    return (np.asarray(x) != 0).any(axis=axis)


def _read_write_sets(model: Transformer):
    """Boolean residual-dimension sets: what each source writes and each receiver reads."""
    shape, cfg = model.graph_shape, model.cfg
    writes = [_nonzero(model.w_e, 0), _nonzero(model.w_pos, 0)]
    reads: dict[tuple, np.ndarray] = {}
    for layer, blk in enumerate(model.blocks):
        for h in range(cfg.n_heads):
            active = _nonzero(blk.w_v[h], 0) | (np.asarray(blk.b_v[h]) != 0)  # (d_head,)
            writes.append(_nonzero(np.asarray(blk.w_o[h])[active], 0))
            for name in QKV:
                reads[(name, layer, h)] = _nonzero(getattr(blk, f"w_{name}")[h], 1)
        if cfg.has_mlp:
            active = _nonzero(blk.w_in, 0) | (np.asarray(blk.b_in) != 0)
            writes.append(_nonzero(np.asarray(blk.w_out)[active], 0) | (np.asarray(blk.b_out) != 0))
            reads[("mlp", layer)] = _nonzero(blk.w_in, 1)
    reads[("out",)] = _nonzero(model.w_u, 1)
    if len(writes) != shape.n_src:
        raise AssertionError(f"internal: {len(writes)} write sets for {shape.n_src} sources")
    return writes, reads


def ground_truth_subspaces(model: Transformer, metadata: TracrMetadata) -> dict[str, tuple]:
    """The program's ground-truth edges (see the module docstring), each mapped to the residual
    labels it carries (`()` for DIRECT edges), in edge-id order."""
    shape, cfg = model.graph_shape, model.cfg
    if shape.n_embed != 2:
        raise ValueError("Expected a tracr model (token and position embedding sources).")
    graph = graph_of(shape)
    labels = np.array(metadata.residual_labels, dtype=object)
    writes, reads = _read_write_sets(model)
    found: dict[Edge, tuple] = {}

    def add_edges(field, index_prefix, recv, n_before):
        any_edge = False
        for s in range(n_before):
            shared = writes[s] & recv
            if shared.any():
                found[Edge(field, index_prefix + (s,))] = tuple(labels[shared])
                any_edge = True
        return any_edge

    def feeds(s):  # a source is live iff an edge from it into a live receiver is found
        return any(e.field != "direct" and e.index[-1] == s for e in found)

    # Nodes in reverse topological order: all receivers of a source belong to later nodes, so
    # by the time a source is reached its liveness is final.
    add_edges("out", (), reads[("out",)], shape.n_src)
    for layer in reversed(range(cfg.n_layers)):
        if cfg.has_mlp:
            if feeds(shape.mlp_src(layer)):
                add_edges("mlp", (layer,), reads[("mlp", layer)], shape.n_src_before_mlp(layer))
        for h in reversed(range(cfg.n_heads)):
            if feeds(shape.head_src(layer, h)):
                for channel, name in enumerate(QKV):
                    n = shape.n_src_before_layer(layer)
                    if add_edges(name, (layer, h), reads[(name, layer, h)], n):
                        found[Edge("direct", (layer, h, channel))] = ()
    return {graph.name(i): found[e] for i, e in enumerate(graph.edges) if e in found}


def program_ground_truth(model: Transformer, metadata: TracrMetadata) -> list[str]:
    """The edges (names, in edge-id order) along which a compiled tracr program moves
    information; see the module docstring for the precise rule."""
    return list(ground_truth_subspaces(model, metadata))
