"""A model folder's `tokenizer.json`, through the Hugging Face `tokenizers` library.

`tokenizer.json` is the one-file format every current checkpoint ships (Pythia, Llama-3,
Qwen-2.5, Gemma-2, Mistral): normaliser, pre-tokeniser, model (BPE / Unigram / WordPiece),
post-processor and added tokens. [`HFTokenizer`][] wraps a `tokenizers.Tokenizer` with the same
two methods as [`jacdc.models.GPT2Tokenizer`][], so tasks take either.
"""

import os
from collections.abc import Sequence
from pathlib import Path


__all__ = ["HFTokenizer", "load_hf_tokenizer"]

_TOKENIZER_FILE = "tokenizer.json"


class HFTokenizer:
    """`encode(text) -> list[int]` and `decode(ids) -> str` over a `tokenizers.Tokenizer`.

    **Arguments:**

    - `tokenizer`: a `tokenizers.Tokenizer`.
    - `add_special_tokens`: whether `encode` runs the post-processor, e.g. prepends Llama's
        `<|begin_of_text|>` or Gemma's `<bos>`. Default `False`: the ids of the text alone, as
        `GPT2Tokenizer.encode` gives (tasks add a BOS token themselves where they want one).
    """

    def __init__(self, tokenizer, *, add_special_tokens: bool = False):
        self._tokenizer = tokenizer
        self.add_special_tokens = bool(add_special_tokens)
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """The token ids of `text`."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}.")
        return list(self._tokenizer.encode(text, add_special_tokens=self.add_special_tokens).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids (special tokens kept, so `decode(encode(s)) == s` for the
        byte-level BPE tokenizers)."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(
                f"Token ids {bad[:5]} are outside this tokenizer's vocabulary [0, "
                f"{self.vocab_size})."
            )
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        """The id of one token string (e.g. `"<bos>"`), or `None`."""
        return self._tokenizer.token_to_id(token)

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size})"


def load_hf_tokenizer(
    source: str | os.PathLike, *, add_special_tokens: bool = False
) -> HFTokenizer:
    """Reads `tokenizer.json` from a model folder (or the file itself).

    **Arguments:**

    - `source`: the folder holding `tokenizer.json`, or the file.
    - `add_special_tokens`: see [`HFTokenizer`][].

    **Raises:** `ImportError` without the `tokenizers` package (the `hf` extra);
    `FileNotFoundError` when there is no `tokenizer.json` (naming the older files the folder has
    instead); `ValueError` for a file `tokenizers` cannot parse.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        folder, path = path, path / _TOKENIZER_FILE
    else:
        folder = path.parent
    if not path.is_file():
        legacy = sorted(
            p.name
            for p in (folder.iterdir() if folder.is_dir() else ())
            if p.name in ("vocab.json", "merges.txt", "tokenizer.model", "vocab.txt")
        )
        hint = (
            f" It has {', '.join(legacy)} (the older formats): convert them once with "
            "`transformers.AutoTokenizer.from_pretrained(folder).save_pretrained(folder)`, "
            "which writes tokenizer.json."
            if legacy
            else " Download it with the weights, e.g. `hf download REPO tokenizer.json`."
        )
        raise FileNotFoundError(f"No {_TOKENIZER_FILE} at {path}.{hint}")
    try:
        import tokenizers
    except ImportError as err:
        raise ImportError(
            'Reading tokenizer.json needs the `tokenizers` package: pip install "jacdc[hf]".'
        ) from err
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a plain Exception for parse errors
        raise ValueError(
            f"{path} is not a tokenizer.json the `tokenizers` library can read ({err})."
        ) from err
    return HFTokenizer(tok, add_special_tokens=add_special_tokens)
