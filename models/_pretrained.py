"""One entry point for every supported checkpoint: [`load_pretrained`][].

`load_pretrained(path_or_hub_id)` looks at the folder (or file) and picks a loader from
[`LOADERS`][], a table from an architecture key to a function `load(folder_or_file, config) ->
Transformer`:

- `"GPT2LMHeadModel"`: a `config.json` with `architectures: ["GPT2LMHeadModel"]` (or
  `model_type: "gpt2"`): [`jacdc.models.load_gpt2`][].
- `"GPTNeoXForCausalLM"`, `"LlamaForCausalLM"`, `"MistralForCausalLM"`, `"Qwen2ForCausalLM"`,
  `"Gemma2ForCausalLM"`: [`jacdc.models.load_hf`][].
- `"transformer-lens"`: a TransformerLens `config.json` (`n_layers`, `d_model`, `n_heads`,
  ... keys) with a checkpoint (`.pth`/`.pt`/`.safetensors`/`.npz`) in the folder, or a
  checkpoint file with its `config.json` beside it: [`jacdc.models.load_transformer_lens`][].

Other Hugging Face architectures plug in with [`register_loader`][] under their
`architectures` name (e.g. `"LlamaForCausalLM"`). A hub id (`owner/name`, not an existing
path) is downloaded first (needs network and the `hf` extra).

The tokenizer comes from the same folder: `tokenizer.json` (through the `tokenizers` library,
[`jacdc.models.load_hf_tokenizer`][]), else `vocab.json` + `merges.txt` (Hugging Face GPT-2
files) or `encoder.json` + `vocab.bpe` (OpenAI's) give a [`jacdc.models.GPT2Tokenizer`][]; a
GPT-2 checkpoint without them uses GPT-2's own BPE files from the installed package; otherwise
the tokenizer is `None` (token-id datasets still work; text prompts need a tokenizer).
"""

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from ._transformer import Transformer


Loader = Callable[[Path, dict], Transformer]


class Pretrained(NamedTuple):
    """What [`load_pretrained`][] returns: the model, its tokenizer (or `None`), the loader key
    that was used and the folder or file it read."""

    model: Transformer
    tokenizer: Any
    kind: str
    path: Path


def _load_gpt2_folder(path: Path, config: dict) -> Transformer:
    from ._gpt2 import load_gpt2

    return load_gpt2(path)


def _load_tl(path: Path, config: dict) -> Transformer:
    from ._tl import load_transformer_lens, transformer_lens_config

    return load_transformer_lens(path, cfg=transformer_lens_config(config))


def _load_hf(path: Path, config: dict) -> Transformer:
    from ._hf import load_hf

    return load_hf(path)


LOADERS: dict[str, Loader] = {
    "GPT2LMHeadModel": _load_gpt2_folder,
    "GPTNeoXForCausalLM": _load_hf,
    "LlamaForCausalLM": _load_hf,
    "MistralForCausalLM": _load_hf,
    "Qwen2ForCausalLM": _load_hf,
    "Gemma2ForCausalLM": _load_hf,
    "transformer-lens": _load_tl,
}


def register_loader(key: str, loader: Loader) -> None:
    """Adds (or replaces) the loader for `key`: a Hugging Face `architectures` name such as
    `"LlamaForCausalLM"`, called as `loader(folder, config_dict)`."""
    LOADERS[key] = loader


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*$")


def _download(repo_id: str) -> Path:
    try:
        import huggingface_hub
    except ImportError as err:
        raise ImportError(
            f'Downloading {repo_id!r} needs huggingface_hub: pip install "jacdc[hf]", or pass a '
            "local folder."
        ) from err
    try:
        return Path(huggingface_hub.snapshot_download(repo_id))
    except Exception as err:  # offline, unknown repo, ...
        raise OSError(
            f"Could not download {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: "
            f"{err}). On a machine with network access run `hf download {repo_id} --local-dir "
            "DIR`, copy DIR here and pass it instead."
        ) from err


def _read_config(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}).") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(doc).__name__}.")
    return doc


def detect(path: Path, config: dict | None) -> str:
    """The [`LOADERS`][] key for a folder or file with its parsed `config.json` (or `None`)."""
    if config is not None:
        archs = config.get("architectures") or []
        if isinstance(archs, str):
            archs = [archs]
        for arch in archs:
            if arch in LOADERS:
                return arch
        if config.get("model_type") == "gpt2" and not archs:
            return "GPT2LMHeadModel"
        if archs:
            raise ValueError(
                f"{path}: architecture {', '.join(map(str, archs))} is not supported; supported: "
                f"{', '.join(k for k in LOADERS if k != 'transformer-lens')} and TransformerLens "
                "checkpoints."
            )
        if all(k in config for k in ("n_layers", "d_model", "n_heads")):
            return "transformer-lens"
    where = path if path.is_file() else path / "config.json"
    raise ValueError(
        f"{where}: cannot tell which model this is. Expected a Hugging Face folder (config.json "
        "with 'architectures') or a TransformerLens checkpoint with its config.json "
        "(n_layers, d_model, n_heads, ...)."
    )


def _tokenizer(folder: Path, kind: str):
    from ._tokenizer import GPT2Tokenizer

    if (folder / "tokenizer.json").is_file():
        try:
            from ._hf_tokenizer import load_hf_tokenizer

            return load_hf_tokenizer(folder)
        except ImportError:  # no `tokenizers` package: fall back to the BPE files, if any
            pass
    for enc, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if (folder / enc).is_file() and (folder / merges).is_file():
            return GPT2Tokenizer(folder / enc, folder / merges)
    if kind == "GPT2LMHeadModel":
        try:
            from ._tokenizer import gpt2_tokenizer

            return gpt2_tokenizer()
        except (ImportError, FileNotFoundError, OSError):
            return None
    return None


def load_pretrained(source: str | os.PathLike) -> Pretrained:
    """Loads any supported checkpoint (see the module docstring) and its tokenizer.

    **Arguments:**

    - `source`: a folder, a checkpoint file (TransformerLens; its `config.json` beside it) or
        a Hugging Face Hub id.

    **Returns:** a [`Pretrained`][] `(model, tokenizer, kind, path)`.

    **Raises:** `FileNotFoundError` for a path that does not exist (and is no hub id);
    `ValueError` for a folder no loader recognises.
    """
    path = Path(source).expanduser()
    if not path.exists():
        if isinstance(source, str) and _REPO_ID.match(source) and not source.startswith("."):
            path = _download(source)
        else:
            raise FileNotFoundError(
                f"No checkpoint folder or file {str(source)!r}; pass a local folder (config.json "
                "and weights) or a Hugging Face Hub id."
            )
    folder = path.parent if path.is_file() else path
    config_path = folder / "config.json"
    config = _read_config(config_path) if config_path.is_file() else None
    kind = detect(path, config)
    model = LOADERS[kind](path, config or {})
    return Pretrained(model, _tokenizer(folder, kind), kind, path)
