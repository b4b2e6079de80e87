"""Hugging Face checkpoints of the families researchers use today: GPT-NeoX (Pythia), Llama,
Mistral, Qwen2 and Gemma-2, plus GPT-2 (routed to [`jacdc.models.load_gpt2`][]).

A model folder holds `config.json` and the weights, as `model.safetensors` or as shards named by
`model.safetensors.index.json` (`save_pretrained(max_shard_size=...)`), in float32, float16 or
bfloat16. [`load_hf`][] reads both; [`hf_transformer_config`][] maps a `config.json` alone to a
[`jacdc.models.TransformerConfig`][] (enough for the graph and its edge counts, or the memory
model, before any download).

**No silently different model.** Every `config.json` key is either mapped, checked against the
values this forward pass implements, or on a list of keys known not to change the eval-mode
forward pass from tokens to logits (dropout, initialisation, token ids, generation and framework
settings). Anything else -- an unknown key, an unsupported `rope_scaling` type, a `hidden_act`
the forward does not have, bidirectional attention -- is reported, all problems at once, in one
`ValueError` that names each key. Both config generations are read: `transformers` 4 (`rope_theta`
and `rope_scaling`, NeoX's `rotary_pct` / `rotary_emb_base`) and 5 (`rope_parameters`,
`layer_types`).

**Layouts.** `nn.Linear` stores `(out, in)`, so `y = x @ W.T + b`; q/k/v/o rows and columns are
head-major. These become TransformerLens layouts: `w_q (H, d, e)`, `w_k, w_v (K, d, e)` for `K`
key/value heads, `w_o (H, e, d)`, `w_in, w_gate (d, m)`, `w_out (m, d)`, `w_u (d, V)`. GPT-NeoX
packs `query_key_value` per head: its `3 H e` output rows are `(H, 3, e)` -- head 0's q, k, v,
then head 1's. Gemma's RMSNorm multiplies by `1 + w`; the loader stores `1 + w` so the forward
has one RMSNorm. HF's rotary embedding pairs dimension `i` with `i + rotary_dim / 2` of the
first `rotary_dim` dimensions (`rotate_half`), the convention of the forward, so q/k weights are
not permuted.
"""

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._config import HF_METADATA_KEYS, TransformerConfig
from ._safetensors import INDEX_FILE, WEIGHTS_FILE, read_safetensors, read_safetensors_index
from ._transformer import Transformer


__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "hf_transformer_config",
    "load_hf",
    "load_hf_config",
    "read_hf_weights",
]

_CONFIG_FILE = "config.json"

# architecture -> (model_type, family)
_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "GPT2LMHeadModel": ("gpt2", "gpt2"),
    "GPTNeoXForCausalLM": ("gpt_neox", "gpt_neox"),
    "LlamaForCausalLM": ("llama", "llama"),
    "MistralForCausalLM": ("mistral", "mistral"),
    "Qwen2ForCausalLM": ("qwen2", "qwen2"),
    "Gemma2ForCausalLM": ("gemma2", "gemma2"),
}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(_ARCHITECTURES)
_MODEL_TYPES = {mt: fam for mt, fam in _ARCHITECTURES.values()}

# Keys that never change the eval-mode forward from tokens to logits.
_IGNORED = (
    frozenset(
        {
            "model_type",
            "architectures",
            # dropout (inactive at inference) and initialisation
            "attention_dropout",
            "hidden_dropout",
            "classifier_dropout",
            "embd_pdrop",
            "resid_pdrop",
            "initializer_range",
            # special tokens and generation / cache settings
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
            "sep_token_id",
            "decoder_start_token_id",
            "use_cache",
            "cache_implementation",
            "task_specific_params",
            "max_length",
            "do_sample",
            # tensor-parallel slicing of pretraining: the same maths (transformers 5 ignores it)
            "pretraining_tp",
            "_attn_implementation_autoset",
            "pruned_heads",
        }
    )
    | HF_METADATA_KEYS
)
# Keys whose only supported value is the default one (falsy counts as the default).
_MUST_BE_FALSY = frozenset(
    {"is_encoder_decoder", "add_cross_attention", "use_bidirectional_attention", "use_mrope"}
)
# Keys each family maps (read below).
_ROPE_KEYS = {"rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor"}
_CORE_KEYS = {
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "tie_word_embeddings",
}
_FAMILY_KEYS: dict[str, frozenset[str]] = {
    "gpt_neox": frozenset(
        _CORE_KEYS
        | _ROPE_KEYS
        | {
            "hidden_act",
            "layer_norm_eps",
            "rotary_pct",
            "rotary_emb_base",
            "use_parallel_residual",
            "attention_bias",
            "head_dim",
        }
    ),
    "llama": frozenset(
        _CORE_KEYS
        | _ROPE_KEYS
        | {
            "num_key_value_heads",
            "hidden_act",
            "rms_norm_eps",
            "attention_bias",
            "mlp_bias",
            "head_dim",
        }
    ),
    "mistral": frozenset(
        _CORE_KEYS
        | _ROPE_KEYS
        | {"num_key_value_heads", "hidden_act", "rms_norm_eps", "head_dim", "sliding_window"}
    ),
    "qwen2": frozenset(
        _CORE_KEYS
        | _ROPE_KEYS
        | {
            "num_key_value_heads",
            "hidden_act",
            "rms_norm_eps",
            "head_dim",
            "sliding_window",
            "use_sliding_window",
            "max_window_layers",
            "layer_types",
        }
    ),
    "gemma2": frozenset(
        _CORE_KEYS
        | _ROPE_KEYS
        | {
            "num_key_value_heads",
            "hidden_act",
            "hidden_activation",
            "rms_norm_eps",
            "head_dim",
            "attention_bias",
            "query_pre_attn_scalar",
            "attn_logit_softcapping",
            "final_logit_softcapping",
            "sliding_window",
            "layer_types",
        }
    ),
}
# `transformers`' defaults for keys a config.json may omit.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt_neox": dict(
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        use_parallel_residual=True,
        attention_bias=True,
        tie_word_embeddings=False,
        rotary_pct=0.25,
        rope_theta=10000.0,
    ),
    "llama": dict(
        hidden_act="silu",
        rms_norm_eps=1e-6,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        rope_theta=10000.0,
    ),
    "mistral": dict(
        hidden_act="silu",
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        sliding_window=4096,  # transformers' default when config.json omits the key
    ),
    "qwen2": dict(
        hidden_act="silu",
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        use_sliding_window=False,
        sliding_window=4096,
        max_window_layers=28,
    ),
    "gemma2": dict(
        hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6,
        attention_bias=False,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        query_pre_attn_scalar=256,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        sliding_window=4096,
    ),
}
# Activations per family: HF name -> TransformerConfig.act_fn.
_ACTS = {
    "gpt_neox": {
        "gelu": "gelu",
        "gelu_new": "gelu_new",
        "gelu_pytorch_tanh": "gelu_new",
        "relu": "relu",
    },  # fmt: skip
    "gated": {
        "silu": "silu",
        "swish": "silu",
        "gelu_pytorch_tanh": "gelu_pytorch_tanh",
        "gelu_new": "gelu_new",
        "gelu": "gelu",
    },  # fmt: skip
}


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What the weight conversion needs besides the `TransformerConfig`."""

    family: str
    tied: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool


def _family(hf_config: Mapping[str, Any], where: str) -> str:
    archs = hf_config.get("architectures") or []
    model_type = hf_config.get("model_type")
    supported = ", ".join(SUPPORTED_ARCHITECTURES)
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ValueError(f"{where}: 'architectures' must be a list of class names, got {archs!r}.")
    unknown = [a for a in archs if a not in _ARCHITECTURES]
    if unknown or (not archs and model_type not in _MODEL_TYPES):
        what = ", ".join(unknown) if unknown else f"model_type {model_type!r}"
        raise ValueError(
            f"{where}: architecture {what} is not supported. Supported: {supported} "
            "(by 'architectures', or by model_type when 'architectures' is absent)."
        )
    families = {_ARCHITECTURES[a][1] for a in archs} or {_MODEL_TYPES[model_type]}
    if len(families) > 1:
        raise ValueError(f"{where}: 'architectures' {archs} name more than one model family.")
    (family,) = families
    if model_type is not None and model_type != family:
        raise ValueError(
            f"{where}: model_type {model_type!r} does not match architectures {archs} "
            f"(expected model_type {family!r})."
        )
    return family


def _rope(cfg: Mapping[str, Any], family: str, d_head: int, problems: list[str]):
    """`(rotary_dim, rope_theta, rope_scaling)` from either config generation."""
    params = cfg.get("rope_parameters")
    scaling = cfg.get("rope_scaling")
    if params is not None and not isinstance(params, Mapping):
        problems.append(f"rope_parameters must be an object, got {json.dumps(params)}")
        params = None
    if scaling is not None and not isinstance(scaling, Mapping):
        problems.append(f"rope_scaling must be an object or null, got {json.dumps(scaling)}")
        scaling = None
    if params is not None and scaling is not None and dict(params) != dict(scaling):
        # transformers 5 reads rope_scaling first and ignores rope_parameters then
        params = None
    rope = dict(scaling if scaling is not None else params or {})
    if isinstance(rope.get("rope_theta"), dict) or any(isinstance(v, dict) for v in rope.values()):
        problems.append(f"per-layer-type rope parameters are not supported: {json.dumps(rope)}")
        return None, 10000.0, None
    theta_key = "rotary_emb_base" if family == "gpt_neox" else "rope_theta"
    theta = rope.pop("rope_theta", cfg.get(theta_key, cfg.get("rope_theta")))
    if theta is None:
        theta = _DEFAULTS[family]["rope_theta"]
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope.pop("type")
    rope.pop("type", None)
    frac = rope.pop("partial_rotary_factor", cfg.get("partial_rotary_factor"))
    if family == "gpt_neox":
        frac = cfg.get("rotary_pct", _DEFAULTS[family]["rotary_pct"]) if frac is None else frac
    elif frac is not None and frac != 1.0:
        problems.append(
            f"partial_rotary_factor={frac} is not supported for {family} (transformers rotates "
            "the whole head in this family)"
        )
    frac = 1.0 if frac is None else frac
    if not (isinstance(frac, (int, float)) and 0 < frac <= 1):
        problems.append(f"rotary fraction {frac!r} must be in (0, 1]")
        return None, float(theta), None
    rotary_dim = int(d_head * frac)
    kind = rope.get("rope_type", "default")
    supported = {"default": (), "linear": ("factor",),
                 "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                            "original_max_position_embeddings")}  # fmt: skip
    if kind not in supported:
        problems.append(
            f"rope_scaling type {kind!r} is not supported (only {', '.join(supported)}); "
            "another type changes the positions' frequencies"
        )
        return rotary_dim, float(theta), None
    extra = sorted(set(rope) - {"rope_type", *supported[kind]})
    if extra:
        problems.append(
            f"rope_scaling of type {kind!r} has keys {extra} that are not implemented "
            f"(it takes {list(supported[kind])})"
        )
    missing = [k for k in supported[kind] if k not in rope]
    if missing:
        problems.append(f"rope_scaling of type {kind!r} lacks {missing}")
    scaling_out = None
    if kind != "default" and not missing:
        scaling_out = {"rope_type": kind, **{k: rope[k] for k in supported[kind]}}
    return rotary_dim, float(theta), scaling_out


def _int(cfg, key, problems, default=None):
    value = cfg.get(key, default)
    if value is None:
        problems.append(f"missing key {key!r}")
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        problems.append(f"{key} must be a positive int, got {json.dumps(value)}")
        return 1
    return value


def _parse(
    hf_config: Mapping[str, Any], *, ignore_keys: Iterable[str] = (), where: str = _CONFIG_FILE
) -> tuple[TransformerConfig, _Spec]:
    family = _family(hf_config, where)
    if family == "gpt2":
        from ._gpt2 import gpt2_config

        cfg = gpt2_config(hf_config, ignore_keys=ignore_keys)
        tied = bool(hf_config.get("tie_word_embeddings", True))
        return cfg, _Spec("gpt2", tied, True, True, True)
    known = _FAMILY_KEYS[family]
    ignored = _IGNORED | frozenset(ignore_keys)
    problems: list[str] = []
    for key in sorted(hf_config):
        value = hf_config[key]
        if key in known or key in ignored:
            continue
        if key in _MUST_BE_FALSY:
            if value:
                problems.append(f"{key}={json.dumps(value)} is not supported (only false)")
            continue
        problems.append(f"unknown key {key!r} (value {json.dumps(value)})")
    c = {**_DEFAULTS[family], **{k: v for k, v in hf_config.items() if v is not None or k in (
        "sliding_window",)}}  # fmt: skip

    L = _int(c, "num_hidden_layers", problems)
    H = _int(c, "num_attention_heads", problems)
    d = _int(c, "hidden_size", problems)
    m = _int(c, "intermediate_size", problems)
    V = _int(c, "vocab_size", problems)
    n_ctx = _int(c, "max_position_embeddings", problems, 2048)
    K = H if family == "gpt_neox" else _int(c, "num_key_value_heads", problems, H)
    if H % K:
        problems.append(f"num_attention_heads={H} is not a multiple of num_key_value_heads={K}")
    if family == "gpt_neox":
        if d % H:
            problems.append(f"hidden_size={d} is not divisible by num_attention_heads={H}")
        e = max(d // H, 1)
        if c.get("head_dim") not in (None, e):
            problems.append(f"head_dim={c['head_dim']} must equal hidden_size // heads = {e}")
    else:
        e = c.get("head_dim")
        if e is None:
            if d % H:
                problems.append(f"hidden_size={d} is not divisible by num_attention_heads={H}")
            e = max(d // H, 1)
        e = _int({"head_dim": e}, "head_dim", problems)
    rotary_dim, theta, scaling = _rope(hf_config, family, e, problems)
    if rotary_dim is not None and (rotary_dim < 2 or rotary_dim % 2):
        problems.append(
            f"the rotary dimension {rotary_dim} (of head_dim {e}) must be even and >= 2"
        )
        rotary_dim = None

    act_key = "hidden_activation" if family == "gemma2" else "hidden_act"
    act_name = c.get(act_key)
    if family == "gemma2" and act_name is None:
        act_name = c.get("hidden_act", "gelu_pytorch_tanh")
    table = _ACTS["gpt_neox" if family == "gpt_neox" else "gated"]
    act = table.get(act_name)
    if act is None:
        problems.append(
            f"{act_key}={json.dumps(act_name)} is not supported for {family} "
            f"(one of {', '.join(table)})"
        )
        act = "gelu_new"

    def flag(key):
        value = c.get(key, False)
        if not isinstance(value, bool):
            problems.append(f"{key} must be true or false, got {json.dumps(value)}")
            return False
        return value

    tied = flag("tie_word_embeddings")
    windows = _windows(family, c, L, problems)
    eps_key = "layer_norm_eps" if family == "gpt_neox" else "rms_norm_eps"
    eps = c.get(eps_key)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
        problems.append(f"{eps_key} must be a non-negative number, got {json.dumps(eps)}")
        eps = 1e-5

    def positive_or_none(key):
        value = c.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            problems.append(f"{key} must be a positive number or null, got {json.dumps(value)}")
            return None
        return float(value)

    kw: dict[str, Any] = {}
    if family == "gpt_neox":
        qkv_bias = o_bias = flag("attention_bias")
        mlp_bias = True
        kw.update(normalization="LN", parallel_attn_mlp=flag("use_parallel_residual"))
    elif family == "gemma2":
        qkv_bias = o_bias = flag("attention_bias")
        mlp_bias = False
        scalar = positive_or_none("query_pre_attn_scalar")
        kw.update(
            normalization="RMS",
            gated_mlp=True,
            post_norms=True,
            embed_scale=math.sqrt(d),
            attn_scale=None if scalar is None else math.sqrt(scalar),
            attn_softcap=positive_or_none("attn_logit_softcapping"),
            final_softcap=positive_or_none("final_logit_softcapping"),
        )
    else:
        qkv_bias = True if family == "qwen2" else flag("attention_bias")
        o_bias = flag("attention_bias") if family == "llama" else False
        mlp_bias = flag("mlp_bias") if family == "llama" else False
        kw.update(normalization="RMS", gated_mlp=True)
    if problems:
        raise ValueError(
            f"Unsupported {family} {where}:\n  - "
            + "\n  - ".join(problems)
            + "\nFix: jacdc loads these models only when it implements every setting exactly. "
            "If a reported key does not change the forward pass, pass it in `ignore_config_keys=`."
        )
    cfg = TransformerConfig(
        n_layers=L,
        n_heads=H,
        d_model=d,
        d_head=e,
        d_mlp=m,
        d_vocab=V,
        n_ctx=n_ctx,
        act_fn=act,
        positional="rotary",
        causal=True,
        ln_eps=float(eps),
        n_kv_heads=None if K == H else K,
        rotary_dim=None if rotary_dim == e else rotary_dim,
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=windows,
        **kw,
    )
    return cfg, _Spec(family, tied, qkv_bias, o_bias, mlp_bias)


def _windows(family: str, c: Mapping[str, Any], L: int, problems: list[str]):
    """Per-layer sliding windows (`None` = global attention), or `None` if no layer slides."""
    window = c.get("sliding_window")
    if family in ("gpt_neox", "llama"):
        return None
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                               or window < 1):  # fmt: skip
        problems.append(f"sliding_window must be a positive int or null, got {json.dumps(window)}")
        return None
    if family == "mistral":
        return None if window is None else (window,) * L
    if family == "qwen2" and not c.get("use_sliding_window", False):
        window = None  # transformers drops the window unless use_sliding_window
    if family == "gemma2" and window is None:
        problems.append("Gemma-2 needs sliding_window (an int)")
        return None
    types = c.get("layer_types")
    if types is None:
        if family == "gemma2":
            types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(L)]
        else:
            first = c.get("max_window_layers", L)
            types = [
                "sliding_attention" if window is not None and i >= first else "full_attention"
                for i in range(L)
            ]
    allowed = ("sliding_attention", "full_attention")
    if not isinstance(types, list) or len(types) != L or any(t not in allowed for t in types):
        problems.append(
            f"layer_types must list {L} entries, each one of {allowed}, got {json.dumps(types)}"
        )
        return None
    out = tuple(window if t == "sliding_attention" else None for t in types)
    return out if any(w is not None for w in out) else None


def hf_transformer_config(
    hf_config: Mapping[str, Any], *, ignore_keys: Iterable[str] = ()
) -> TransformerConfig:
    """Maps a Hugging Face `config.json` (as a dict) to a [`jacdc.models.TransformerConfig`][].

    **Arguments:**

    - `hf_config`: the parsed `config.json` of a `GPTNeoXForCausalLM`, `LlamaForCausalLM`,
        `MistralForCausalLM`, `Qwen2ForCausalLM`, `Gemma2ForCausalLM` or `GPT2LMHeadModel`
        (identified by `architectures`, or `model_type` when that is absent).
    - `ignore_keys`: extra keys to ignore, for a key you know does not change the forward pass.

    **Returns:** the config; `cfg.graph_shape.n_edges()` is the model's edge count.

    **Raises:** `ValueError` for an unsupported architecture (listing the supported ones), and
    one `ValueError` naming every unknown key and every setting that is not implemented.
    """
    return _parse(hf_config, ignore_keys=ignore_keys)[0]


def load_hf_config(source: str | os.PathLike) -> dict[str, Any]:
    """The parsed `config.json` of a model folder (or of the file itself)."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / _CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"No {_CONFIG_FILE} at {path}. A Hugging Face model folder holds {_CONFIG_FILE} and "
            f"the weights; save one with `model.save_pretrained(folder)`."
        )
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}).") from err
    if not isinstance(out, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(out).__name__}.")
    return out


# ----------------------------------------------------------------------------------------------
# Weights


def read_hf_weights(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a model folder, memory-mapped: `model.safetensors`, or the shards listed
    in `model.safetensors.index.json` (the index wins when both exist, as in `transformers`).

    **Raises:** `FileNotFoundError` when the folder has neither (naming the `.bin` / `.pt` files
    it has instead) or when the index names a shard the folder lacks (naming the shard).
    """
    folder = Path(folder)
    if (folder / INDEX_FILE).is_file():
        return read_safetensors_index(folder / INDEX_FILE)
    if (folder / WEIGHTS_FILE).is_file():
        return read_safetensors(folder / WEIGHTS_FILE)
    others = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    hint = (
        f" It has {', '.join(others)}: convert with `transformers`, e.g. "
        "AutoModelForCausalLM.from_pretrained(folder).save_pretrained(new_folder)."
        if others
        else ""
    )
    raise FileNotFoundError(f"{folder} has neither {WEIGHTS_FILE} nor {INDEX_FILE}.{hint}")


_BUFFERS = re.compile(r"(^|\.)(rotary_emb\.inv_freq|attention\.bias|attention\.masked_bias)$")


def _expected(cfg: TransformerConfig, spec: _Spec) -> dict[str, tuple[int, ...]]:
    d, e, H, K, m, V = (cfg.d_model, cfg.d_head, cfg.n_heads, cfg.kv_heads, cfg.d_mlp,
                        cfg.d_vocab)  # fmt: skip
    shapes: dict[str, tuple[int, ...]] = {}
    if spec.family == "gpt_neox":
        shapes.update({"gpt_neox.embed_in.weight": (V, d), "gpt_neox.final_layer_norm.weight": (d,),
                       "gpt_neox.final_layer_norm.bias": (d,)})  # fmt: skip
        for i in range(cfg.n_layers):
            p = f"gpt_neox.layers.{i}."
            shapes.update(
                {
                    p + "input_layernorm.weight": (d,),
                    p + "input_layernorm.bias": (d,),
                    p + "post_attention_layernorm.weight": (d,),
                    p + "post_attention_layernorm.bias": (d,),
                    p + "attention.query_key_value.weight": (3 * H * e, d),
                    p + "attention.dense.weight": (d, H * e),
                    p + "mlp.dense_h_to_4h.weight": (m, d),
                    p + "mlp.dense_h_to_4h.bias": (m,),
                    p + "mlp.dense_4h_to_h.weight": (d, m),
                    p + "mlp.dense_4h_to_h.bias": (d,),
                }
            )
            if spec.qkv_bias:
                shapes[p + "attention.query_key_value.bias"] = (3 * H * e,)
                shapes[p + "attention.dense.bias"] = (d,)
        if not spec.tied:
            shapes["embed_out.weight"] = (V, d)
        return shapes
    shapes.update({"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,)})
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (d,),
                p + "post_attention_layernorm.weight": (d,),
                p + "self_attn.q_proj.weight": (H * e, d),
                p + "self_attn.k_proj.weight": (K * e, d),
                p + "self_attn.v_proj.weight": (K * e, d),
                p + "self_attn.o_proj.weight": (d, H * e),
                p + "mlp.gate_proj.weight": (m, d),
                p + "mlp.up_proj.weight": (m, d),
                p + "mlp.down_proj.weight": (d, m),
            }
        )
        if spec.qkv_bias:
            shapes.update({p + "self_attn.q_proj.bias": (H * e,),
                           p + "self_attn.k_proj.bias": (K * e,),
                           p + "self_attn.v_proj.bias": (K * e,)})  # fmt: skip
        if spec.o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (d,)
        if spec.mlp_bias:
            shapes.update({p + "mlp.gate_proj.bias": (m,), p + "mlp.up_proj.bias": (m,),
                           p + "mlp.down_proj.bias": (d,)})  # fmt: skip
        if spec.family == "gemma2":
            shapes.update({p + "pre_feedforward_layernorm.weight": (d,),
                           p + "post_feedforward_layernorm.weight": (d,)})  # fmt: skip
    if not spec.tied:
        shapes["lm_head.weight"] = (V, d)
    return shapes


def _check_tensors(tensors, cfg, spec, where) -> None:
    want = _expected(cfg, spec)
    problems = []
    missing = [k for k in want if k not in tensors]
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {', '.join(missing[:12])}"
                        + (" ..." if len(missing) > 12 else ""))  # fmt: skip
    extra_ok = {"lm_head.weight", "embed_out.weight"} if spec.tied else set()
    unexpected = sorted(k for k in tensors if k not in want and k not in extra_ok
                        and not _BUFFERS.search(k))  # fmt: skip
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected[:12])}"
                        + (" ..." if len(unexpected) > 12 else ""))  # fmt: skip
    for k, shape in want.items():
        if k in tensors and tuple(tensors[k].shape) != shape:
            problems.append(f"{k}: shape {tuple(tensors[k].shape)}, expected {shape}")
    if problems:
        raise ValueError(
            f"The weights in {where} do not match its {_CONFIG_FILE} ({spec.family}, "
            f"{cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, "
            f"{cfg.kv_heads} kv heads, d_head {cfg.d_head}, d_mlp {cfg.d_mlp}, vocab "
            f"{cfg.d_vocab}):\n  - "
            + "\n  - ".join(problems)
            + "\nFix: use the config.json that was saved with these weights."
        )


def _linear_heads(w: np.ndarray, n: int) -> np.ndarray:
    """`nn.Linear` weight `(n * e, d)` (head-major rows) -> `(n, d, e)`."""
    out, d = w.shape
    return np.ascontiguousarray(w.reshape(n, out // n, d).transpose(0, 2, 1))


def _params(
    tensors: Mapping[str, np.ndarray], cfg: TransformerConfig, spec: _Spec, get: Callable
) -> dict[str, Any]:
    """The `Transformer.from_params` arguments, in TransformerLens layouts."""
    d, e, H, K = cfg.d_model, cfg.d_head, cfg.n_heads, cfg.kv_heads
    zeros = lambda *shape: np.zeros(shape, np.float32)
    blocks = []
    if spec.family == "gpt_neox":
        for i in range(cfg.n_layers):
            p = f"gpt_neox.layers.{i}."
            # (H, 3, e, d): per head, its q, k and v rows
            qkv = get(p + "attention.query_key_value.weight").reshape(H, 3, e, d)
            w_q, w_k, w_v = (np.ascontiguousarray(qkv[:, j].transpose(0, 2, 1)) for j in range(3))
            if spec.qkv_bias:
                b = get(p + "attention.query_key_value.bias").reshape(H, 3, e)
                b_q, b_k, b_v = b[:, 0], b[:, 1], b[:, 2]
                b_o = get(p + "attention.dense.bias")
            else:
                b_q = b_k = b_v = zeros(H, e)
                b_o = zeros(d)
            blocks.append(
                dict(
                    ln1=(get(p + "input_layernorm.weight"), get(p + "input_layernorm.bias")),
                    w_q=w_q, b_q=b_q, w_k=w_k, b_k=b_k, w_v=w_v, b_v=b_v,
                    w_o=np.ascontiguousarray(get(p + "attention.dense.weight").T.reshape(H, e, d)),
                    b_o=b_o,
                    ln2=(get(p + "post_attention_layernorm.weight"),
                         get(p + "post_attention_layernorm.bias")),
                    w_in=np.ascontiguousarray(get(p + "mlp.dense_h_to_4h.weight").T),
                    b_in=get(p + "mlp.dense_h_to_4h.bias"),
                    w_out=np.ascontiguousarray(get(p + "mlp.dense_4h_to_h.weight").T),
                    b_out=get(p + "mlp.dense_4h_to_h.bias"),
                )
            )  # fmt: skip
        w_e = get("gpt_neox.embed_in.weight")
        ln_final = (get("gpt_neox.final_layer_norm.weight"), get("gpt_neox.final_layer_norm.bias"))
        w_u = np.ascontiguousarray((w_e if spec.tied else get("embed_out.weight")).T)
        return dict(w_e=w_e, blocks=blocks, ln_final=ln_final, w_u=w_u, b_u=zeros(cfg.d_vocab))

    gemma = spec.family == "gemma2"

    def norm(name):  # RMSNorm weight; Gemma's (1 + w) stored as one weight
        w = np.asarray(get(name), np.float32)
        return (w + np.float32(1.0) if gemma else w, None)

    m = cfg.d_mlp
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        bias = lambda name, n: get(name).reshape(n, e) if spec.qkv_bias else zeros(n, e)
        block = dict(
            ln1=norm(p + "input_layernorm.weight"),
            w_q=_linear_heads(get(a + "q_proj.weight"), H),
            b_q=bias(a + "q_proj.bias", H),
            w_k=_linear_heads(get(a + "k_proj.weight"), K),
            b_k=bias(a + "k_proj.bias", K),
            w_v=_linear_heads(get(a + "v_proj.weight"), K),
            b_v=bias(a + "v_proj.bias", K),
            w_o=np.ascontiguousarray(get(a + "o_proj.weight").T.reshape(H, e, d)),
            b_o=get(a + "o_proj.bias") if spec.o_bias else zeros(d),
            w_gate=np.ascontiguousarray(get(p + "mlp.gate_proj.weight").T),
            b_gate=get(p + "mlp.gate_proj.bias") if spec.mlp_bias else zeros(m),
            w_in=np.ascontiguousarray(get(p + "mlp.up_proj.weight").T),
            b_in=get(p + "mlp.up_proj.bias") if spec.mlp_bias else zeros(m),
            w_out=np.ascontiguousarray(get(p + "mlp.down_proj.weight").T),
            b_out=get(p + "mlp.down_proj.bias") if spec.mlp_bias else zeros(d),
        )
        if gemma:
            block.update(
                ln_post_attn=norm(p + "post_attention_layernorm.weight"),
                ln2=norm(p + "pre_feedforward_layernorm.weight"),
                ln_post_mlp=norm(p + "post_feedforward_layernorm.weight"),
            )
        else:
            block.update(ln2=norm(p + "post_attention_layernorm.weight"))
        blocks.append(block)
    w_e = get("model.embed_tokens.weight")
    w_u = np.ascontiguousarray((w_e if spec.tied else get("lm_head.weight")).T)
    ln_final = norm("model.norm.weight")
    return dict(w_e=w_e, blocks=blocks, ln_final=ln_final, w_u=w_u, b_u=zeros(cfg.d_vocab))


_DTYPES = {None: None, "float32": np.float32, "bfloat16": "bfloat16", "float16": np.float16}


def _resolve(source: str | os.PathLike) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(
            f"{source} is a file; `load_hf` takes the folder that holds {_CONFIG_FILE} and the "
            f"weights ({WEIGHTS_FILE} or {INDEX_FILE} with its shards)."
        )
    if not isinstance(source, str) or not re.match(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*$",
                                                   source):  # fmt: skip
        raise FileNotFoundError(
            f"No folder {str(source)!r}. Pass a folder holding {_CONFIG_FILE} and the "
            "safetensors weights, or a Hugging Face Hub id such as 'EleutherAI/pythia-70m'."
        )
    return _download(source)


def _download(repo_id: str) -> Path:
    patterns = [_CONFIG_FILE, "*.safetensors", INDEX_FILE, "tokenizer.json"]
    try:
        import huggingface_hub
    except ImportError as err:
        raise ImportError(
            f"{repo_id!r} is not a local folder, and downloading it needs huggingface_hub: "
            'pip install "jacdc[hf]", or pass a local folder.'
        ) from err
    try:
        folder = huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns)
    except Exception as err:  # no network, unknown or gated repo, offline mode, ...
        raise OSError(
            f"{repo_id!r} is not a local folder, and could not be downloaded from the Hugging "
            f"Face Hub ({type(err).__name__}: {err}).\n"
            "If this machine is offline: on a machine with network access run\n"
            f"    hf download {repo_id} {' '.join(repr(p) for p in patterns)} --local-dir DIR\n"
            "(gated models need `hf auth login` first), copy DIR here, and call load_hf(DIR)."
        ) from err
    return Path(folder)


def load_hf(
    source: str | os.PathLike,
    *,
    dtype: str | None = None,
    mesh=None,
    ignore_config_keys: Iterable[str] = (),
) -> Transformer:
    """Loads a Hugging Face causal LM checkpoint into a [`jacdc.models.Transformer`][].

    **Arguments:**

    - `source`: a folder with `config.json` and `model.safetensors` or a sharded
        `model.safetensors.index.json` (as `save_pretrained` writes them), or, if no such folder
        exists, a Hub id such as `"EleutherAI/pythia-70m"`, downloaded with
        `huggingface_hub.snapshot_download` (needs network and the `hf` extra). Architectures:
        [`SUPPORTED_ARCHITECTURES`][]; `GPT2LMHeadModel` goes to
        [`jacdc.models.load_gpt2`][].
    - `dtype`: storage dtype of the weights: `None` or `"float32"` (converted to float32, the
        default), `"bfloat16"` or `"float16"` (kept in that dtype, e.g. for an 8B model on an
        accelerator; activations and accumulation stay float32). Recorded in
        `model.cfg.weight_dtype`.
    - `mesh`: a [`jax.sharding.Mesh`][] with a `"model"` axis (e.g.
        [`jacdc.models.model_mesh`][]): every weight goes from the host straight to its shards,
        split as by [`jacdc.models.shard_weights`][] (for a model too large for one device).
        `None`: the default device.
    - `ignore_config_keys`: `config.json` keys to ignore beyond the built-in list.

    **Returns:** the model, with the raw weights (no folding), so its float32 logits equal
    `transformers`' to float32 precision.

    **Raises:** `FileNotFoundError` for a missing folder, config, weights or shard (naming it);
    `ValueError` for an unsupported architecture or setting, and for weights that are missing,
    unexpected or of the wrong shape (listing every problem at once); `OSError` when a hub
    download fails.
    """
    if dtype not in _DTYPES:
        raise ValueError(
            f"dtype={dtype!r} is not supported; use None / 'float32', 'bfloat16' or 'float16'."
        )
    folder = _resolve(source)
    hf_config = load_hf_config(folder)
    cfg, spec = _parse(hf_config, ignore_keys=ignore_config_keys, where=str(folder / _CONFIG_FILE))
    if spec.family == "gpt2":
        if dtype not in (None, "float32"):
            raise ValueError("load_hf: GPT-2 checkpoints load in float32 only (dtype=None).")
        from ._gpt2 import load_gpt2

        model = load_gpt2(folder, ignore_config_keys=ignore_config_keys)
        if mesh is not None:
            from ._shard import shard_weights

            model = shard_weights(model, mesh)
        return model
    tensors = read_hf_weights(folder)
    _check_tensors(tensors, cfg, spec, folder)
    if dtype is None or dtype == "float32":
        store = np.float32
    elif dtype == "bfloat16":
        import ml_dtypes

        store = ml_dtypes.bfloat16
    else:
        store = np.float16
    get = lambda name: np.asarray(tensors[name], dtype=store)
    params = _params(tensors, cfg, spec, get)
    if mesh is not None:
        from ._shard import shard_params

        params = shard_params(params, mesh, dtype=store)
    cfg = dataclasses.replace(cfg, weight_dtype=dtype or "float32")
    return Transformer.from_params(cfg, **params)
