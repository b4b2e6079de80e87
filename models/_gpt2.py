"""GPT-2 from Hugging Face files: a folder with `config.json` and `model.safetensors`.

Shape names used below: `d` = `n_embd` (d_model), `H` = `n_head`, `e` = `d // H` (d_head),
`m` = `n_inner` (d_mlp), `V` = `vocab_size`, `P` = `n_positions`.

Hugging Face stores GPT-2's linear layers as `Conv1D` modules whose weight is `(in, out)`, so
`y = x @ W + b`. The attention input projection `c_attn` packs q, k and v side by side along the
output axis, `[q | k | v]`, each `H * e` wide and head-major (head 0's `e` columns first). The
functions `c_attn_weight_to_qkv` etc. below turn these into the TransformerLens layouts that
[`jacdc.models.Transformer.from_params`][] takes; each has an inverse, and each pair is tested by
a round trip and against the `Conv1D` arithmetic.

`config.json` is read through an allow-list: every key is either used, checked against the one
value this forward pass implements, or knowingly ignored (dropout rates, token ids, generation
settings, metadata). Anything else is reported, with all other problems, in one `ValueError`.
"""

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from ._config import HF_METADATA_KEYS, TransformerConfig
from ._safetensors import read_safetensors
from ._transformer import Transformer


__all__ = [
    "load_gpt2",
    "gpt2_config",
    "c_attn_weight_to_qkv",
    "qkv_to_c_attn_weight",
    "c_attn_bias_to_qkv",
    "qkv_to_c_attn_bias",
    "c_proj_weight_to_w_o",
    "w_o_to_c_proj_weight",
    "wte_to_w_u",
    "w_u_to_wte",
]

_CONFIG_FILE = "config.json"
_WEIGHTS_FILE = "model.safetensors"
_ACTIVATIONS = ("gelu_new", "gelu", "relu")

# Keys that set a size or a numeric constant of the forward pass.
_USED_KEYS = frozenset(
    {
        "n_layer",
        "n_head",
        "n_embd",
        "n_positions",
        "vocab_size",
        "n_inner",
        "activation_function",
        "layer_norm_epsilon",
        "scale_attn_weights",
        "tie_word_embeddings",
    }
)
# Keys whose only supported value is the one GPT-2 uses; any other value changes the forward pass
# in a way `Transformer` does not implement.
_REQUIRED_VALUES: dict[str, Any] = {
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "is_encoder_decoder": False,
    "pruned_heads": {},
}
# Keys that do not affect the eval-mode forward pass from tokens to logits.
_IGNORED_KEYS = (
    frozenset(
        {
            # identification, checked separately
            "model_type",
            "architectures",
            # dropout (inactive at inference) and initialisation
            "attn_pdrop",
            "embd_pdrop",
            "resid_pdrop",
            "summary_first_dropout",
            "initializer_range",
            # the sequence-classification / double-heads summary head, not used by the LM
            "summary_activation",
            "summary_proj_to_labels",
            "summary_type",
            "summary_use_proj",
            # legacy: the causal-mask buffer size, always >= n_positions in practice
            "n_ctx",
            # legacy OpenAI-GPT fields
            "n_special",
            "predict_special_tokens",
            # special tokens and generation settings
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
            "sep_token_id",
            "decoder_start_token_id",
            "task_specific_params",
            "max_length",
            "do_sample",
            "use_cache",
        }
    )
    | HF_METADATA_KEYS
)
# `transformers` model classes whose weights are a GPT-2 LM (possibly with an extra head).
_GPT2_ARCHITECTURES = frozenset(
    {"GPT2LMHeadModel", "GPT2Model", "GPT2DoubleHeadsModel", "GPT2ForSequenceClassification"}
)


# ----------------------------------------------------------------------------------------------
# Tensor layouts: Hugging Face Conv1D <-> TransformerLens.


def c_attn_weight_to_qkv(
    w: Float[np.ndarray, "d three_he"], n_heads: int
) -> tuple[Float[np.ndarray, "H d e"], Float[np.ndarray, "H d e"], Float[np.ndarray, "H d e"]]:
    """Splits `attn.c_attn.weight`, `(d, 3 * H * e)` laid out `[q | k | v]` along the output
    axis, into `w_q, w_k, w_v`, each `(H, d, e)`.

    So that `x @ w[:, :H*e]` reshaped to `(H, e)` equals `einsum("d,hde->he", x, w_q)`.
    """
    d, out = w.shape
    if out % (3 * n_heads):
        raise ValueError(
            f"c_attn.weight has {out} output columns, which is not 3 * n_head * d_head for "
            f"n_head={n_heads}."
        )
    e = out // (3 * n_heads)
    # (d, 3, H, e) -> (3, H, d, e)
    qkv = np.transpose(w.reshape(d, 3, n_heads, e), (1, 2, 0, 3))
    return qkv[0], qkv[1], qkv[2]


def qkv_to_c_attn_weight(
    w_q: Float[np.ndarray, "H d e"],
    w_k: Float[np.ndarray, "H d e"],
    w_v: Float[np.ndarray, "H d e"],
) -> Float[np.ndarray, "d 3*H*e"]:
    """Inverse of [`c_attn_weight_to_qkv`][]: packs `(H, d, e)` weights into `(d, 3 * H * e)`."""
    H, d, e = w_q.shape
    qkv = np.stack([w_q, w_k, w_v])  # (3, H, d, e)
    return np.transpose(qkv, (2, 0, 1, 3)).reshape(d, 3 * H * e)


def c_attn_bias_to_qkv(
    b: Float[np.ndarray, " three_he"], n_heads: int
) -> tuple[Float[np.ndarray, "H e"], Float[np.ndarray, "H e"], Float[np.ndarray, "H e"]]:
    """Splits `attn.c_attn.bias`, `(3 * H * e,)` laid out `[q | k | v]`, into `b_q, b_k, b_v`,
    each `(H, e)`."""
    (out,) = b.shape
    if out % (3 * n_heads):
        raise ValueError(
            f"c_attn.bias has {out} entries, which is not 3 * n_head * d_head for n_head={n_heads}."
        )
    qkv = b.reshape(3, n_heads, out // (3 * n_heads))
    return qkv[0], qkv[1], qkv[2]


def qkv_to_c_attn_bias(
    b_q: Float[np.ndarray, "H e"], b_k: Float[np.ndarray, "H e"], b_v: Float[np.ndarray, "H e"]
) -> Float[np.ndarray, " 3*H*e"]:
    """Inverse of [`c_attn_bias_to_qkv`][]."""
    return np.stack([b_q, b_k, b_v]).reshape(-1)


def c_proj_weight_to_w_o(w: Float[np.ndarray, "he d"], n_heads: int) -> Float[np.ndarray, "H e d"]:
    """Reshapes `attn.c_proj.weight`, `(H * e, d)` with head-major rows (the concatenated head
    outputs are its input), into `w_o`, `(H, e, d)`."""
    rows, d = w.shape
    if rows % n_heads:
        raise ValueError(
            f"attn.c_proj.weight has {rows} input rows, which is not n_head * d_head for "
            f"n_head={n_heads}."
        )
    return w.reshape(n_heads, rows // n_heads, d)


def w_o_to_c_proj_weight(w_o: Float[np.ndarray, "H e d"]) -> Float[np.ndarray, "H*e d"]:
    """Inverse of [`c_proj_weight_to_w_o`][]."""
    H, e, d = w_o.shape
    return w_o.reshape(H * e, d)


def wte_to_w_u(wte: Float[np.ndarray, "V d"]) -> Float[np.ndarray, "d V"]:
    """The unembedding of a model with tied embeddings: `W_U = wte.T`, `(d, V)`. (The same
    transpose turns an untied `lm_head.weight`, `(V, d)`, into `W_U`.)"""
    return np.ascontiguousarray(wte.T)


def w_u_to_wte(w_u: Float[np.ndarray, "d V"]) -> Float[np.ndarray, "V d"]:
    """Inverse of [`wte_to_w_u`][]."""
    return np.ascontiguousarray(w_u.T)


# The MLP needs no transform: `mlp.c_fc.weight` is `(d, m)` and `mlp.c_proj.weight` is `(m, d)`,
# already TransformerLens's `W_in` and `W_out`.


# ----------------------------------------------------------------------------------------------
# config.json


def gpt2_config(
    hf_config: Mapping[str, Any], *, ignore_keys: Iterable[str] = ()
) -> TransformerConfig:
    """Converts a Hugging Face GPT-2 `config.json` (as a dict) into a
    [`jacdc.models.TransformerConfig`][].

    **Arguments:**

    - `hf_config`: the parsed `config.json`.
    - `ignore_keys`: extra keys to ignore, for a key you know does not change the forward pass.

    **Returns:** the config (LayerNorm, learned positions added to the embedding, causal).

    **Raises:** `ValueError` naming the model type if the config is not GPT-2's, and otherwise one
    `ValueError` listing every unknown key, unsupported value and missing size.
    """
    _check_architecture(hf_config, f"this {_CONFIG_FILE}")
    ignored = _IGNORED_KEYS | frozenset(ignore_keys)
    problems: list[str] = []
    for key in sorted(hf_config):
        value = hf_config[key]
        if key in _USED_KEYS or key in ignored:
            continue
        if key in _REQUIRED_VALUES:
            want = _REQUIRED_VALUES[key]
            if value != want and not (want == {} and value is None):
                problems.append(
                    f"{key}={json.dumps(value)} is not supported (only {json.dumps(want)})"
                )
            continue
        problems.append(f"unknown key {key!r} (value {json.dumps(value)})")

    for key in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"):
        if key not in hf_config:
            problems.append(f"missing key {key!r}")
    act = hf_config.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        problems.append(f"activation_function={act!r} is not supported (one of {_ACTIVATIONS})")
    n_embd, n_head = hf_config.get("n_embd"), hf_config.get("n_head")
    if isinstance(n_embd, int) and isinstance(n_head, int) and n_head > 0 and n_embd % n_head:
        problems.append(f"n_embd={n_embd} is not divisible by n_head={n_head}")
    if problems:
        raise ValueError(
            f"Unsupported GPT-2 {_CONFIG_FILE}:\n  - "
            + "\n  - ".join(problems)
            + "\nFix: jacdc implements the standard GPT-2 forward pass only. If a reported key "
            "does not change the forward pass, pass it in `ignore_config_keys=` (or remove it "
            "from config.json)."
        )
    n_inner = hf_config.get("n_inner")
    return TransformerConfig(
        n_layers=hf_config["n_layer"],
        n_heads=n_head,
        d_model=n_embd,
        d_head=n_embd // n_head,
        d_mlp=4 * n_embd if n_inner is None else n_inner,
        d_vocab=hf_config["vocab_size"],
        n_ctx=hf_config["n_positions"],
        act_fn=act,
        normalization="LN",
        positional="standard",
        causal=True,
        ln_eps=float(hf_config.get("layer_norm_epsilon", 1e-5)),
        attn_scale=None if hf_config.get("scale_attn_weights", True) else 1.0,
    )


def _check_architecture(hf_config: Mapping[str, Any], where: str) -> None:
    model_type = hf_config.get("model_type")
    archs = hf_config.get("architectures") or []
    bad_archs = [a for a in archs if a not in _GPT2_ARCHITECTURES]
    if (model_type is not None and model_type != "gpt2") or bad_archs:
        raise ValueError(
            f"{where} describes a {model_type or 'non-GPT-2'} model "
            f"(model_type={model_type!r}, architectures={archs!r}), not GPT-2. `load_gpt2` reads "
            "GPT-2 checkpoints only (model_type 'gpt2'); for TransformerLens checkpoints use "
            "`jacdc.models.load_attn_only_4l` / `load_redwood_attn_2l`."
        )


# ----------------------------------------------------------------------------------------------
# model.safetensors


# The reader lives in `_safetensors` (shared with the other loaders); the old private name stays
# for the modules that import it from here.
_read_safetensors = read_safetensors


# ----------------------------------------------------------------------------------------------
# Loading


def _expected_shapes(cfg: TransformerConfig, tied: bool) -> dict[str, tuple[int, ...]]:
    d, m, V, P = cfg.d_model, cfg.d_mlp, cfg.d_vocab, cfg.n_ctx
    shapes = {"wte.weight": (V, d), "wpe.weight": (P, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for i in range(cfg.n_layers):
        p = f"h.{i}."
        shapes.update(
            {
                p + "ln_1.weight": (d,),
                p + "ln_1.bias": (d,),
                p + "attn.c_attn.weight": (d, 3 * d),
                p + "attn.c_attn.bias": (3 * d,),
                p + "attn.c_proj.weight": (d, d),
                p + "attn.c_proj.bias": (d,),
                p + "ln_2.weight": (d,),
                p + "ln_2.bias": (d,),
                p + "mlp.c_fc.weight": (d, m),
                p + "mlp.c_fc.bias": (m,),
                p + "mlp.c_proj.weight": (m, d),
                p + "mlp.c_proj.bias": (d,),
            }
        )
    if not tied:
        shapes["lm_head.weight"] = (V, d)
    return shapes


# Buffers (not parameters) that some exports include: the causal mask and its fill value.
_IGNORED_TENSOR = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


def _normalise_names(tensors: Mapping[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """Strips the `transformer.` prefix that `GPT2LMHeadModel` adds (files saved from `GPT2Model`
    have none)."""
    out: dict[str, np.ndarray] = {}
    for name, x in tensors.items():
        short = name.removeprefix("transformer.")
        if short in out:
            raise ValueError(
                f"{path} holds both {short!r} and 'transformer.{short}'; cannot tell which to use."
            )
        out[short] = x
    return out


def _weights_from_tensors(
    tensors: Mapping[str, np.ndarray], cfg: TransformerConfig, tied: bool, path: Path
) -> dict[str, Any]:
    tensors = _normalise_names(tensors, path)
    want = _expected_shapes(cfg, tied)
    problems = []
    missing = [k for k in want if k not in tensors]
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {', '.join(missing)}")
    unexpected = [
        k
        for k in tensors
        if k not in want and not _IGNORED_TENSOR.match(k) and not (tied and k == "lm_head.weight")
    ]
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {', '.join(sorted(unexpected))}")
    for k, shape in want.items():
        if k in tensors and tuple(tensors[k].shape) != shape:
            problems.append(f"{k}: shape {tuple(tensors[k].shape)}, expected {shape}")
    if problems:
        raise ValueError(
            f"{path} does not match its {_CONFIG_FILE} "
            f"(n_layer={cfg.n_layers}, n_embd={cfg.d_model}, n_inner={cfg.d_mlp}, "
            f"vocab_size={cfg.d_vocab}, n_positions={cfg.n_ctx}):\n  - "
            + "\n  - ".join(problems)
            + "\nFix: use the config.json that was saved with these weights."
        )

    def get(name):
        return np.asarray(tensors[name], dtype=np.float32)

    H = cfg.n_heads
    blocks = []
    for i in range(cfg.n_layers):
        p = f"h.{i}."
        w_q, w_k, w_v = c_attn_weight_to_qkv(get(p + "attn.c_attn.weight"), H)
        b_q, b_k, b_v = c_attn_bias_to_qkv(get(p + "attn.c_attn.bias"), H)
        blocks.append(
            dict(
                ln1=(get(p + "ln_1.weight"), get(p + "ln_1.bias")),
                w_q=w_q,
                b_q=b_q,
                w_k=w_k,
                b_k=b_k,
                w_v=w_v,
                b_v=b_v,
                w_o=c_proj_weight_to_w_o(get(p + "attn.c_proj.weight"), H),
                b_o=get(p + "attn.c_proj.bias"),
                ln2=(get(p + "ln_2.weight"), get(p + "ln_2.bias")),
                w_in=get(p + "mlp.c_fc.weight"),
                b_in=get(p + "mlp.c_fc.bias"),
                w_out=get(p + "mlp.c_proj.weight"),
                b_out=get(p + "mlp.c_proj.bias"),
            )
        )
    return dict(
        w_e=get("wte.weight"),
        w_pos=get("wpe.weight"),
        blocks=blocks,
        ln_final=(get("ln_f.weight"), get("ln_f.bias")),
        w_u=wte_to_w_u(get("wte.weight" if tied else "lm_head.weight")),
        b_u=np.zeros((cfg.d_vocab,), np.float32),  # GPT-2's LM head has no bias
    )


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


def _resolve_folder(source: str | os.PathLike) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(
            f"{source} is a file; `load_gpt2` takes the folder that holds {_CONFIG_FILE} and "
            f"{_WEIGHTS_FILE}."
        )
    if not isinstance(source, str) or not _REPO_ID.match(source):
        raise FileNotFoundError(
            f"No folder {str(source)!r}. Pass a folder holding {_CONFIG_FILE} and {_WEIGHTS_FILE}, "
            "or a Hugging Face Hub id such as 'openai-community/gpt2'."
        )
    return _download(source)


def _download(repo_id: str) -> Path:
    try:
        import huggingface_hub
    except ImportError as err:
        raise ImportError(
            f"{repo_id!r} is not a local folder, and downloading it needs huggingface_hub: "
            'pip install "jacdc[hf]", or pass a local folder.'
        ) from err
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, allow_patterns=[_CONFIG_FILE, _WEIGHTS_FILE]
        )
    except Exception as err:  # no network, unknown repo, offline mode, ...
        raise OSError(
            f"{repo_id!r} is not a local folder, and could not be downloaded from the Hugging "
            f"Face Hub ({type(err).__name__}: {err}).\n"
            f"If this machine is offline: on a machine with network access run\n"
            f"    hf download {repo_id} {_CONFIG_FILE} {_WEIGHTS_FILE} --local-dir DIR\n"
            f"(or save both files from https://huggingface.co/{repo_id}/tree/main), copy DIR "
            f"here, and call load_gpt2(DIR)."
        ) from err
    return Path(folder)


def load_gpt2(
    source: str | os.PathLike,
    *,
    ignore_config_keys: Iterable[str] = (),
    fold_value_biases: bool | None = None,
) -> Transformer:
    """Loads a GPT-2 model saved in the Hugging Face format.

    **Arguments:**

    - `source`: a folder holding `config.json` and `model.safetensors` (as written by
        `GPT2LMHeadModel.save_pretrained`, with or without the `transformer.` name prefix), or,
        if no such folder exists, a Hugging Face Hub id such as `"openai-community/gpt2"`,
        downloaded with `huggingface_hub.snapshot_download` (needs network and the `hf` extra).
    - `ignore_config_keys`: `config.json` keys to ignore in addition to the built-in allow-list.
    - `fold_value_biases`: fold `b_V` into `b_O` as TransformerLens's `from_pretrained` did for
        the paper (`None`: on, unless inside `jacdc.models.value_bias_folding(False)`); recorded
        in `cfg.fold_value_biases`. It changes zero-ablation and HISP results, not logits.

    **Returns:** a [`jacdc.models.Transformer`][] with the raw weights (value biases folded
    unless switched off; no LayerNorm folding or centring), so its logits equal
    `transformers`' to float32 precision. The unembedding is `wte.T` when the
    embeddings are tied (GPT-2's default), with a zero bias. The attention-mask buffers
    (`attn.bias`, `attn.masked_bias`) are ignored.

    **Raises:** `FileNotFoundError` for a missing folder or file; `ValueError` for a config that
    is not GPT-2's or has unsupported settings, and for weights that are truncated, missing,
    unexpected or of the wrong shape (each lists every problem at once); `OSError` when a hub
    download fails.
    """
    folder = _resolve_folder(source)
    config_path = folder / _CONFIG_FILE
    weights_path = folder / _WEIGHTS_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {_CONFIG_FILE}. A Hugging Face GPT-2 folder holds {_CONFIG_FILE} "
            f"and {_WEIGHTS_FILE}; save one with `GPT2LMHeadModel.save_pretrained(folder)`."
        )
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON ({err}).") from err
    if not isinstance(hf_config, dict):
        raise ValueError(f"{config_path} must hold a JSON object, got {type(hf_config).__name__}.")
    _check_architecture(hf_config, str(config_path))
    cfg = gpt2_config(hf_config, ignore_keys=ignore_config_keys)
    tied = bool(hf_config.get("tie_word_embeddings", True))
    if not weights_path.is_file():
        others = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".json", ".pt"))
        hint = (
            f" It has {', '.join(others)}: convert with `transformers`, e.g. "
            "GPT2LMHeadModel.from_pretrained(folder).save_pretrained(new_folder)."
            if any(n != _CONFIG_FILE for n in others)
            else ""
        )
        raise FileNotFoundError(f"{folder} has no {_WEIGHTS_FILE}.{hint}")
    tensors = _read_safetensors(weights_path)
    weights = _weights_from_tensors(tensors, cfg, tied, weights_path)
    model = Transformer.from_params(cfg, **weights)
    from ._processing import fold_value_biases as fold, resolve_folding

    return fold(model) if resolve_folding(fold_value_biases) else model
