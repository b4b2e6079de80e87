"""Shared helpers of the text-task, eval and compare tests: a tiny byte-level BPE tokenizer
written to disk, a tiny TransformerLens checkpoint folder, and prompt files."""

import csv
import json
from pathlib import Path

import numpy as np


WORDS = ["When", "Mary", "and", "John", "went", "to", "the", "shop", "gave", "a", "book",
         "Tom", "Anna", "ran", "home", "then"]  # fmt: skip

# Mixed token lengths (1 token per word with this vocabulary): 9, 7 and 11 tokens.
ROWS = [
    (
        "When Mary and John went to the shop John gave a",
        "When Tom and John went to the shop John gave a",
        " Mary",
        " John",
    ),  # noqa: E501
    ("When Anna and Tom ran home Tom", "When Mary and Tom ran home Tom", " Anna", " Tom"),
    (
        "When John and Mary went to the shop then Mary gave",
        "When John and Anna went to the shop then Mary gave",
        " John",
        " Mary",
    ),  # noqa: E501
    ("When Tom and Anna ran home Anna", "When Tom and John ran home Anna", " Tom", " Anna"),
]


def _byte_chars() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character table.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_bpe(folder: Path, words=WORDS) -> int:
    """`vocab.json` + `merges.txt` where each word with a leading space (and the first word,
    bare) is one token; returns the vocabulary size."""
    chars = _byte_chars()
    vocab = {chars[b]: b for b in range(256)}
    merges = []
    for k, word in enumerate(words):
        for form in (word,) if k == 0 else (" " + word,):
            sym = "".join(chars[b] for b in form.encode())
            cur = sym[0]
            for ch in sym[1:]:
                if (cur, ch) not in merges:
                    merges.append((cur, ch))
                cur += ch
                vocab.setdefault(cur, len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges))
    return len(vocab)


def write_tl_folder(folder: Path, *, seed=0, n_ctx=16, n_layers=2, with_tokenizer=True) -> Path:
    """A random attention-only TransformerLens checkpoint (`config.json` + `model_final.npz`),
    with the tiny BPE tokenizer beside it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d_vocab = write_bpe(folder) if with_tokenizer else 400
    d, h, e = 16, 2, 8
    rng = np.random.default_rng(seed)

    def w(*shape, std=0.3):
        return (std * rng.standard_normal(shape)).astype(np.float32)

    sd = {
        "embed.W_E": w(d_vocab, d, std=1.0), "pos_embed.W_pos": w(n_ctx, d, std=0.5),
        "ln_final.w": 1 + w(d, std=0.1), "ln_final.b": w(d, std=0.1),
        "unembed.W_U": w(d, d_vocab, std=d**-0.5), "unembed.b_U": w(d_vocab, std=0.1),
    }  # fmt: skip
    for i in range(n_layers):
        p = f"blocks.{i}."
        sd.update({
            p + "ln1.w": 1 + w(d, std=0.1), p + "ln1.b": w(d, std=0.1),
            p + "attn.W_Q": w(h, d, e), p + "attn.b_Q": w(h, e),
            p + "attn.W_K": w(h, d, e), p + "attn.b_K": w(h, e),
            p + "attn.W_V": w(h, d, e), p + "attn.b_V": w(h, e),
            p + "attn.W_O": w(h, e, d), p + "attn.b_O": w(d, std=0.1),
        })  # fmt: skip
    np.savez(folder / "model_final.npz", **sd)
    config = {
        "n_layers": n_layers, "n_heads": h, "d_model": d, "d_head": e, "d_vocab": d_vocab,
        "d_vocab_out": d_vocab, "n_ctx": n_ctx, "attn_only": True, "normalization_type": "LN",
        "positional_embedding_type": "standard", "attention_dir": "causal", "eps": 1e-5,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def write_csv(path: Path, rows=ROWS, header=("clean", "corrupted", "correct", "incorrect"),
              extra=None) -> Path:  # fmt: skip
    with open(path, "w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f)
        wr.writerow(list(header) + list(extra or {}))
        for i, row in enumerate(rows):
            wr.writerow(list(row) + [v[i] for v in (extra or {}).values()])
    return path


def write_jsonl(path: Path, rows=ROWS) -> Path:
    keys = ("clean", "corrupted", "correct", "incorrect")
    path.write_text("".join(json.dumps(dict(zip(keys, r))) + "\n" for r in rows))
    return path
