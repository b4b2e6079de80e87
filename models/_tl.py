"""TransformerLens checkpoints: the attention-only models of the ACDC paper.

A TransformerLens (TL) checkpoint is a `HookedTransformer.state_dict()` saved with `torch.save`;
its tensors already have the layouts [`jacdc.models.Transformer.from_params`][] takes:

| TL name | shape | jacdc |
| --- | --- | --- |
| `embed.W_E` | `(d_vocab, d_model)` | `w_e` |
| `pos_embed.W_pos` | `(n_ctx, d_model)` | `w_pos` |
| `blocks.{i}.ln1.w`, `.b` | `(d_model,)` | `ln1` |
| `blocks.{i}.attn.W_Q`, `W_K`, `W_V` | `(head, d_model, d_head)` | `w_q`, `w_k`, `w_v` |
| `blocks.{i}.attn.b_Q`, `b_K`, `b_V` | `(head, d_head)` | `b_q`, `b_k`, `b_v` |
| `blocks.{i}.attn.W_O` | `(head, d_head, d_model)` | `w_o` |
| `blocks.{i}.attn.b_O` | `(d_model,)` | `b_o` |
| `blocks.{i}.ln2.w`, `.b`; `blocks.{i}.mlp.W_in`, `b_in`, `W_out`, `b_out` | | MLP models only |
| `ln_final.w`, `.b` | `(d_model,)` | `ln_final` |
| `unembed.W_U`, `b_U` | `(d_model, d_vocab_out)`, `(d_vocab_out,)` | `w_u`, `b_u` |

The buffers `blocks.{i}.attn.mask` (the causal mask) and `blocks.{i}.attn.IGNORE` (its fill
value), which TL versions of early 2023 saved in the state dict, are knowingly ignored.

What is known about the two checkpoints (see `KNOWN_CONFIGS`):

- **redwood_attn_2l**: hub repo `ArthurConmy/redwood_attn_2l`. Its `config.json` (TL format) says
  2 layers, 8 heads, d_model 256, d_head 32, d_vocab = d_vocab_out = 50259, n_ctx 2048,
  `normalization_type: "LN"` (LayerNorm before attention and before the unembedding),
  `positional_embedding_type: "shortformer"`, `eps: 1e-5`, causal, attention-only; tokenizer
  `ArthurConmy/redwood_tokenizer`. TL's `from_pretrained` loads the repo's file whose name ends in
  `final.pth`; ACDC's older code loaded `et_model_state_dict.pt` from the same repo (a TL state
  dict with `attn.mask`/`IGNORE` buffers). The loader prefers the former and falls back to the
  latter.
- **attn-only-4l**: hub repo `NeelNanda/Attn_Only_4L512W_C4_Code`, file ending in `final.pth`,
  `config.json` in Neel Nanda's training format (`normalization`, `shortformer_pos`, `ln_eps`,
  ...). 4 layers, 8 heads, d_model 512, d_head 64, d_vocab 48262 (tokenizer
  `NeelNanda/gpt-neox-tokenizer-digits`). `n_ctx` 2048 is taken from TransformerLens's model
  table and `positional="standard"` from the sibling C4-Code models' configs (`shortformer_pos:
  false`): neither was checked against this repo's own `config.json`. When the checkpoint comes
  from the hub, the downloaded `config.json` is parsed and takes precedence for these fields.

**Weight processing.** TL's `from_pretrained` folds value biases into `b_O` by default, for
both models; so do these loaders (`fold_value_biases=True`, recorded in the config; see
`jacdc.models._processing`): it changes zero-ablation and HISP results, so it is needed for the
original's numbers. TL's LayerNorm folding and centring (used by ACDC for attn-only-4l, not for
redwood_attn_2l) change no patched result and are not applied.
"""

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._config import ACT_FNS, TransformerConfig
from ._gpt2 import _read_safetensors
from ._processing import fold_value_biases as _fold, resolve_folding
from ._transformer import Transformer


__all__ = [
    "KNOWN_CONFIGS",
    "from_transformer_lens_state_dict",
    "transformer_lens_config",
    "load_attn_only_4l",
    "load_redwood_attn_2l",
]

KNOWN_CONFIGS: dict[str, TransformerConfig] = {
    "redwood_attn_2l": TransformerConfig(
        n_layers=2,
        n_heads=8,
        d_model=256,
        d_head=32,
        d_mlp=None,
        d_vocab=50259,
        n_ctx=2048,
        normalization="LN",
        positional="shortformer",
        causal=True,
        ln_eps=1e-5,
    ),
    "attn-only-4l": TransformerConfig(
        n_layers=4,
        n_heads=8,
        d_model=512,
        d_head=64,
        d_mlp=None,
        d_vocab=48262,
        n_ctx=2048,
        normalization="LN",
        positional="standard",
        causal=True,
        ln_eps=1e-5,
    ),
}
"""Configs of the ACDC paper's attention-only models (see the module docstring for which fields
were verified against the hub files)."""


@dataclasses.dataclass(frozen=True)
class _Hub:
    repo_id: str
    fallback_file: str | None  # used when the repo has no file ending in "final.pth"


_HUB = {
    "redwood_attn_2l": _Hub("ArthurConmy/redwood_attn_2l", "et_model_state_dict.pt"),
    "attn-only-4l": _Hub("NeelNanda/Attn_Only_4L512W_C4_Code", None),
}

# Buffers that TL saves alongside the parameters.
_IGNORED_KEY = re.compile(r"^(blocks\.\d+\.attn\.(mask|IGNORE)|IGNORE)$")
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


# ----------------------------------------------------------------------------------------------
# State dicts


def _expected_shapes(cfg: TransformerConfig) -> dict[str, tuple[int, ...]]:
    d, e, H, m = cfg.d_model, cfg.d_head, cfg.n_heads, cfg.d_mlp
    ln = cfg.normalization == "LN"
    shapes: dict[str, tuple[int, ...]] = {
        "embed.W_E": (cfg.d_vocab, d),
        "pos_embed.W_pos": (cfg.n_ctx, d),
    }
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        if ln:
            shapes[p + "ln1.w"] = (d,)
            shapes[p + "ln1.b"] = (d,)
        for x in "QKV":
            shapes[p + f"attn.W_{x}"] = (H, d, e)
            shapes[p + f"attn.b_{x}"] = (H, e)
        shapes[p + "attn.W_O"] = (H, e, d)
        shapes[p + "attn.b_O"] = (d,)
        if cfg.has_mlp:
            if ln:
                shapes[p + "ln2.w"] = (d,)
                shapes[p + "ln2.b"] = (d,)
            shapes[p + "mlp.W_in"] = (d, m)
            shapes[p + "mlp.b_in"] = (m,)
            shapes[p + "mlp.W_out"] = (m, d)
            shapes[p + "mlp.b_out"] = (d,)
    if ln:
        shapes["ln_final.w"] = (d,)
        shapes["ln_final.b"] = (d,)
    shapes["unembed.W_U"] = (d, cfg.vocab_out)
    shapes["unembed.b_U"] = (cfg.vocab_out,)
    return shapes


# Present in every TL checkpoint we know of, but a missing one is harmless: it defaults to zeros.
_OPTIONAL = ("unembed.b_U",)


def _to_numpy(x: Any) -> np.ndarray:
    """A float32 numpy copy of a numpy array, JAX array or torch tensor (torch is not imported:
    tensors are recognised by their type's module and converted with `.detach().cpu()`)."""
    if type(x).__module__.split(".")[0] == "torch":
        x = x.detach().cpu()
        if str(x.dtype) != "torch.float32":
            x = x.float()  # bfloat16 / float16 -> float32 (numpy has no bfloat16)
        x = x.numpy()
    return np.asarray(x, dtype=np.float32)


def from_transformer_lens_state_dict(
    state_dict: Mapping[str, Any],
    cfg: TransformerConfig,
    *,
    fold_value_biases: bool | None = None,
) -> Transformer:
    """Builds a [`jacdc.models.Transformer`][] from a TransformerLens `state_dict`.

    **Arguments:**

    - `state_dict`: TL parameter names (see the table in this module's docstring) to numpy
        arrays, JAX arrays or torch tensors (converted with `.detach().cpu().numpy()`; torch
        itself is not imported here). `attn.mask` / `IGNORE` buffers are ignored;
        `unembed.b_U` may be absent (zeros).
    - `cfg`: the model's [`jacdc.models.TransformerConfig`][].
    - `fold_value_biases`: fold `b_V` into `b_O` as TransformerLens's `from_pretrained` does
        (`None`: the default, on unless inside `value_bias_folding(False)`); a no-op on a state
        dict TL already processed (its `b_V` is 0). Recorded in `cfg.fold_value_biases`.

    **Returns:** the model, with the raw weights, value biases folded unless switched off
    (nothing else folded or centred).

    **Raises:** `ValueError` listing, at once, every missing tensor, unknown tensor and shape
    mismatch; it says so when the layer count differs from `cfg.n_layers`, or when the state dict
    is a Hugging Face GPT-2 one.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"Expected a state dict (a mapping from TL names to tensors), got "
            f"{type(state_dict).__name__}."
        )
    if cfg.positional == "separate":
        raise ValueError(
            "TransformerLens checkpoints have one positional embedding; positional='separate' "
            "(tracr) is not supported here."
        )
    want = _expected_shapes(cfg)
    names = [str(k) for k in state_dict]
    missing = [k for k in want if k not in state_dict and k not in _OPTIONAL]
    unknown = [k for k in names if k not in want and not _IGNORED_KEY.match(k)]
    shape_errors = [
        f"{k}: shape {tuple(np.shape(state_dict[k]))}, expected {shape}"
        for k, shape in want.items()
        if k in state_dict and tuple(np.shape(state_dict[k])) != shape
    ]
    if missing or unknown or shape_errors:
        problems = []
        if any(k.endswith("wte.weight") or k.startswith("transformer.h.") for k in names):
            problems.append(
                "this looks like a Hugging Face GPT-2 state dict, not a TransformerLens one: "
                "load it with `jacdc.models.load_gpt2`"
            )
        layers = sorted({int(m.group(1)) for k in names if (m := _BLOCK_KEY.match(k))})
        if layers and len(layers) != cfg.n_layers:
            problems.append(
                f"the checkpoint has {len(layers)} layers (blocks {layers[0]}..{layers[-1]}), "
                f"the config {cfg.n_layers}"
            )
        if missing:
            problems.append(f"missing tensors ({len(missing)}): {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown tensors ({len(unknown)}): {', '.join(sorted(unknown))}")
        problems.extend(shape_errors)
        raise ValueError(
            "The TransformerLens state dict does not fit the config "
            f"(n_layers={cfg.n_layers}, n_heads={cfg.n_heads}, d_model={cfg.d_model}, "
            f"d_head={cfg.d_head}, d_mlp={cfg.d_mlp}, d_vocab={cfg.d_vocab}, n_ctx={cfg.n_ctx}, "
            f"normalization={cfg.normalization!r}):\n  - "
            + "\n  - ".join(problems)
            + "\nFix: check that the checkpoint is the model you meant; if the checkpoint is right "
            "and the config is not, pass the matching `cfg=`."
        )

    def get(name):
        return _to_numpy(state_dict[name])

    def ln(prefix):
        return (get(prefix + ".w"), get(prefix + ".b")) if cfg.normalization == "LN" else None

    blocks = []
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        blk = dict(
            ln1=ln(p + "ln1"),
            w_q=get(p + "attn.W_Q"),
            b_q=get(p + "attn.b_Q"),
            w_k=get(p + "attn.W_K"),
            b_k=get(p + "attn.b_K"),
            w_v=get(p + "attn.W_V"),
            b_v=get(p + "attn.b_V"),
            w_o=get(p + "attn.W_O"),
            b_o=get(p + "attn.b_O"),
        )
        if cfg.has_mlp:
            blk.update(
                ln2=ln(p + "ln2"),
                w_in=get(p + "mlp.W_in"),
                b_in=get(p + "mlp.b_in"),
                w_out=get(p + "mlp.W_out"),
                b_out=get(p + "mlp.b_out"),
            )
        blocks.append(blk)
    model = Transformer.from_params(
        cfg,
        w_e=get("embed.W_E"),
        w_pos=get("pos_embed.W_pos"),
        blocks=blocks,
        ln_final=ln("ln_final"),
        w_u=get("unembed.W_U"),
        b_u=get("unembed.b_U") if "unembed.b_U" in state_dict else None,
    )
    return _fold(model) if resolve_folding(fold_value_biases) else model


# ----------------------------------------------------------------------------------------------
# TL-style config.json


def transformer_lens_config(tl_config: Mapping[str, Any]) -> TransformerConfig:
    """Converts a TransformerLens-style `config.json` (a `HookedTransformerConfig` dump, as in
    `ArthurConmy/redwood_attn_2l`, or Neel Nanda's training config, as in
    `NeelNanda/Attn_Only_4L512W_C4_Code`) into a [`jacdc.models.TransformerConfig`][].

    Reads the architectural keys (sizes, `attn_only`, `normalization_type`/`normalization`,
    `positional_embedding_type`/`shortformer_pos`, `eps`/`ln_eps`, `attention_dir`,
    `use_attn_scale`/`attn_scale`, `act_fn`) and rejects settings this forward pass does not
    implement (RMSNorm, rotary, local or parallel attention, ...). Training and bookkeeping keys
    (learning rates, seeds, devices, ...) are ignored.

    **Raises:** one `ValueError` listing every missing or unsupported setting.
    """
    problems: list[str] = []
    for key in ("n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx"):
        if not isinstance(tl_config.get(key), int):
            problems.append(f"missing or non-integer {key!r}")
    attn_only = bool(tl_config.get("attn_only", False))
    d_mlp = None if attn_only else tl_config.get("d_mlp")
    if not attn_only and not (isinstance(d_mlp, int) and d_mlp > 0):
        problems.append(f"attn_only is false but d_mlp={d_mlp!r}")
    act = tl_config.get("act_fn") or "gelu_new"
    if not attn_only and act not in ACT_FNS:
        problems.append(f"act_fn={act!r} is not supported (one of {ACT_FNS})")

    norm = tl_config.get("normalization_type", tl_config.get("normalization", "LN"))
    if norm not in ("LN", None):
        problems.append(f"normalization {norm!r} is not supported (only 'LN' or none)")
    pos = tl_config.get("positional_embedding_type")
    if "shortformer_pos" in tl_config:
        from_flag = "shortformer" if tl_config["shortformer_pos"] else "standard"
        if pos is not None and pos != from_flag:
            problems.append(f"positional_embedding_type={pos!r} contradicts shortformer_pos")
        pos = pos or from_flag
    pos = pos or "standard"
    if pos not in ("standard", "shortformer"):
        problems.append(f"positional_embedding_type={pos!r} is not supported")
    direction = tl_config.get("attention_dir", "causal")
    if direction not in ("causal", "bidirectional"):
        problems.append(f"attention_dir={direction!r} is not supported")
    for key in (
        "scale_attn_by_inverse_layer_idx",
        "final_rms",
        "parallel_attn_mlp",
        "use_local_attn",
        "gated_mlp",
        "use_qk_norm",
    ):
        if tl_config.get(key):
            problems.append(f"{key}={tl_config[key]!r} is not supported")
    if tl_config.get("n_key_value_heads") not in (None, tl_config.get("n_heads")):
        problems.append("grouped-query attention (n_key_value_heads) is not supported")
    if problems:
        raise ValueError(
            "Unsupported TransformerLens config:\n  - " + "\n  - ".join(problems) + "\nFix: "
            "jacdc supports causal or bidirectional LayerNorm transformers with standard or "
            "shortformer learned positions; pass an explicit `cfg=` if the config file is wrong."
        )
    if tl_config.get("use_attn_scale", True) is False:
        attn_scale = 1.0
    else:
        attn_scale = tl_config.get("attn_scale")
        if attn_scale is not None and abs(attn_scale - tl_config["d_head"] ** 0.5) < 1e-6:
            attn_scale = None
    d_vocab_out = tl_config.get("d_vocab_out")
    if d_vocab_out in (-1, tl_config["d_vocab"]):
        d_vocab_out = None
    return TransformerConfig(
        n_layers=tl_config["n_layers"],
        n_heads=tl_config["n_heads"],
        d_model=tl_config["d_model"],
        d_head=tl_config["d_head"],
        d_mlp=d_mlp,
        d_vocab=tl_config["d_vocab"],
        n_ctx=tl_config["n_ctx"],
        d_vocab_out=d_vocab_out,
        act_fn=act if act in ACT_FNS else "gelu_new",
        normalization="LN" if norm == "LN" else "none",
        positional=pos,
        causal=direction == "causal",
        ln_eps=float(tl_config.get("eps", tl_config.get("ln_eps", 1e-5))),
        attn_scale=attn_scale,
    )


# ----------------------------------------------------------------------------------------------
# Files and the hub


def _read_checkpoint(path: Path) -> Mapping[str, Any]:
    """Reads a state dict from `.pth`/`.pt` (torch), `.safetensors` or `.npz`."""
    if path.suffix in (".safetensors",):
        return _read_safetensors(path)
    if path.suffix == ".npz":
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            f"Reading {path.name} (a torch checkpoint) needs torch, which is in the `torch` extra: "
            'pip install "jacdc[torch]". (Or convert it once to .safetensors or .npz elsewhere.)'
        ) from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"Could not read {path} as a torch state dict ({type(err).__name__}: {err}). The file "
            "may be truncated (re-download it), or hold pickled objects other than tensors, "
            "which `weights_only=True` refuses."
        ) from err
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{path} holds a {type(obj).__name__}, not a state dict (a mapping from names to "
            "tensors)."
        )
    return obj


def _pick_checkpoint(files: list[str], hub: _Hub | None, where: str) -> str:
    """TransformerLens's rule: the file whose name ends in `final.pth` (top-level files first),
    else the model's known fallback file."""
    finals = sorted((f for f in files if f.endswith("final.pth")), key=lambda f: (f.count("/"), f))
    if finals:
        return finals[0]
    if hub is not None and hub.fallback_file in files:
        return hub.fallback_file
    raise FileNotFoundError(
        f"{where} has no checkpoint file ending in 'final.pth'"
        + (f" or named {hub.fallback_file!r}" if hub and hub.fallback_file else "")
        + f" (files: {', '.join(sorted(files)) or 'none'}). Pass the checkpoint file itself."
    )


def _download(name: str, repo_id: str) -> tuple[Path, Path | None]:
    hub = _HUB.get(name) if repo_id == _HUB[name].repo_id else None
    try:
        import huggingface_hub
    except ImportError as err:
        raise ImportError(
            f'Downloading {repo_id!r} needs huggingface_hub: pip install "jacdc[hf]", or pass '
            "a local checkpoint file."
        ) from err

    def failed(err: Exception) -> OSError:
        fallback = f" or {hub.fallback_file}" if hub and hub.fallback_file else ""
        return OSError(
            f"Could not download {name} from the Hugging Face Hub repo {repo_id!r} "
            f"({type(err).__name__}: {err}).\n"
            "If this machine is offline: on a machine with network access run\n"
            f"    hf download {repo_id} --local-dir DIR\n"
            f"(or save config.json and the checkpoint, the file ending in final.pth{fallback}, "
            f"from https://huggingface.co/{repo_id}/tree/main), copy DIR here, and pass DIR or "
            "the checkpoint file as `source`."
        )

    try:
        files = list(huggingface_hub.list_repo_files(repo_id))
    except Exception as err:  # no network, unknown repo, offline mode, ...
        raise failed(err) from err
    chosen = _pick_checkpoint(files, hub, f"hub repo {repo_id!r}")
    try:
        ckpt = huggingface_hub.hf_hub_download(repo_id, chosen)
        config = (
            huggingface_hub.hf_hub_download(repo_id, "config.json")
            if "config.json" in files
            else None
        )
    except Exception as err:
        raise failed(err) from err
    return Path(ckpt), (Path(config) if config else None)


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*$")


def _resolve(name: str, source: str | os.PathLike | None) -> tuple[Path, Path | None]:
    """The checkpoint file and (if any) the `config.json` that describes it."""
    if source is None:
        return _download(name, _HUB[name].repo_id)
    path = Path(source).expanduser()
    if path.is_file():
        return path, None
    if path.is_dir():
        files = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
        candidates = [f for f in files if f.endswith((".pth", ".pt"))]
        try:
            chosen = _pick_checkpoint(candidates, _HUB[name], f"folder {path}")
        except FileNotFoundError:
            if len(candidates) != 1:
                raise
            chosen = candidates[0]
        config = path / "config.json"
        return path / chosen, (config if config.is_file() else None)
    if isinstance(source, str) and _REPO_ID.match(source):
        return _download(name, source)
    raise FileNotFoundError(
        f"No checkpoint file or folder {str(source)!r}. Pass a TransformerLens checkpoint "
        f"(.pth/.pt, .safetensors or .npz), a folder holding one, a hub id, or None to download "
        f"{_HUB[name].repo_id!r}."
    )


def _load(name: str, source, cfg: TransformerConfig | None, fold) -> Transformer:
    ckpt, config_path = _resolve(name, source)
    if cfg is None:
        cfg = KNOWN_CONFIGS[name]
        if config_path is not None:
            file_cfg = transformer_lens_config(json.loads(config_path.read_text(encoding="utf-8")))
            fields = ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "d_vocab")
            diff = [
                f"{f}: {getattr(file_cfg, f)} (file) vs {getattr(cfg, f)} ({name})"
                for f in fields
                if getattr(file_cfg, f) != getattr(cfg, f)
            ]
            if diff:
                raise ValueError(
                    f"{config_path} does not describe {name}: " + "; ".join(diff) + ". Pass "
                    "`cfg=` to load a different model."
                )
            cfg = file_cfg  # it describes this very file (n_ctx, positions, eps)
    return from_transformer_lens_state_dict(_read_checkpoint(ckpt), cfg, fold_value_biases=fold)


def load_redwood_attn_2l(
    source: str | os.PathLike | None = None,
    *,
    cfg: TransformerConfig | None = None,
    fold_value_biases: bool | None = None,
) -> Transformer:
    """Loads Redwood's 2-layer attention-only model (`redwood_attn_2l`, the ACDC induction task's
    model): 2 layers x 8 heads, d_model 256, shortformer positions, LayerNorm, vocab 50259.

    **Arguments:**

    - `source`: a TransformerLens checkpoint file (`.pth`/`.pt` read with
        `torch.load(..., weights_only=True)`, which needs the `torch` extra; or `.safetensors` /
        `.npz` with the same names), a folder holding one (and optionally its `config.json`), a
        hub repo id, or `None` to download from `ArthurConmy/redwood_attn_2l` (needs network and
        the `hf` extra).
    - `cfg`: overrides the config. By default `KNOWN_CONFIGS["redwood_attn_2l"]`, or the
        `config.json` next to the checkpoint when there is one.

    - `fold_value_biases`: fold `b_V` into `b_O` as TransformerLens does (default on; see
        [`from_transformer_lens_state_dict`][]).

    **Returns:** a [`jacdc.models.Transformer`][] with value biases folded (as ACDC loads this
    model; no LayerNorm folding, no centring, as for ACDC too).
    """
    return _load("redwood_attn_2l", source, cfg, fold_value_biases)


def load_attn_only_4l(
    source: str | os.PathLike | None = None,
    *,
    cfg: TransformerConfig | None = None,
    fold_value_biases: bool | None = None,
) -> Transformer:
    """Loads Neel Nanda's 4-layer attention-only model (`attn-only-4l`, the ACDC docstring task's
    model): 4 layers x 8 heads, d_model 512, d_head 64, LayerNorm, vocab 48262.

    **Arguments:**

    - `source`: as for [`load_redwood_attn_2l`][]; `None` downloads from
        `NeelNanda/Attn_Only_4L512W_C4_Code`.
    - `cfg`: overrides the config. By default `KNOWN_CONFIGS["attn-only-4l"]`, or the
        `config.json` next to the checkpoint when there is one.

    - `fold_value_biases`: as for [`load_redwood_attn_2l`][] (default on).

    **Returns:** a [`jacdc.models.Transformer`][] with value biases folded. (TL's default
    LayerNorm folding and centring, used by ACDC for this model, change no patched result.)
    """
    return _load("attn-only-4l", source, cfg, fold_value_biases)


def load_transformer_lens(source: str | os.PathLike, *, cfg: TransformerConfig) -> Transformer:
    """Loads any TransformerLens checkpoint of architecture `cfg` (e.g. from
    [`transformer_lens_config`][] of its `config.json`): a checkpoint file (`.pth`/`.pt`,
    `.safetensors`, `.npz`) or a folder holding one (the file ending in `final.pth`, or the
    only checkpoint file there)."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(
            p.relative_to(path).as_posix()
            for p in path.rglob("*")
            if p.is_file() and p.suffix in (".pth", ".pt", ".safetensors", ".npz")
        )
        path = path / (files[0] if len(files) == 1 else _pick_checkpoint(files, None, str(path)))
    elif not path.is_file():
        raise FileNotFoundError(f"No TransformerLens checkpoint file or folder {str(path)!r}.")
    return from_transformer_lens_state_dict(_read_checkpoint(path), cfg)
