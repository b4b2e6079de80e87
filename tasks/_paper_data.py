"""The original implementation's task data: its word lists and its random draws, reproduced.

The ACDC paper's IOI, Greater-Than and Docstring prompts come from generators in the original
code (ArthurConmy/Automatic-Circuit-Discovery). This module reproduces their output exactly, as
the `paper` data of those tasks (`data="paper"`, the default; jacdc's own draws are
`data="jacdc"`). The word lists are the original's; the code is jacdc's, following the same
sequence of draws from the same generators:

- **IOI** (Wang et al.'s ABBA template #0, 200 prompts): Python's `random`, seeded with
  `(seed + 987654321) % 123456789` (`seed=0` in the paper), draws per prompt the template (one
  choice among one), three names until all differ (IO, S and an unused third), a place and an
  object. The "ABC" corruption then rewrites the words of each sentence three times, each pass
  with NumPy's legacy generator (`RandomState`) seeded `(s + 345467) % 5432` for `s = 1, 2, 3`:
  IO (both occurrences) becomes a random name other than IO and S; S (both occurrences) a
  random name; the first occurrence of that name a random name. The last two passes may pick a
  name already in the sentence, as the original does.
- **Greater-Than** (200 prompts): torch's generator after `manual_seed(54)` draws 200 noun
  indices, then 200 year indices (`torch.randint`, emulated in `tasks/_torch_rng.py`).
- **Docstring** (100 prompts): prompt `i` reseeds Python's `random` with `seed + i` (`seed=0`:
  the paper's `seed=i`) and samples 15 distinct names (the method name, then the arguments:
  a "random answer", 3 + 2 names for the corruption, 2 unused, 3 matching, 2 prefix and 1
  suffix), 3 description words and 2 words for each of the 2 documented arguments.

`tests/test_paper_data.py` checks every array and string list against the SHA-256 of the
original's own output (`original-task-data.md`).
"""

import dataclasses
import random

import numpy as np

from ._torch_rng import TorchGenerator


# The original's word lists (acdc/ioi/ioi_dataset.py, acdc/greaterthan/utils.py,
# acdc/docstring/prompts.py at bc99ace8), in the original's order: the draws index into them.
PAPER_IOI_NAMES = (
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda",
    "Daniel", "David", "James", "Robert", "John", "Joseph", "Andrew", "Ryan", "Brandon",
    "Jason", "Justin", "Sarah", "William", "Jonathan", "Stephanie", "Brian", "Nicole",
    "Nicholas", "Anthony", "Heather", "Eric", "Elizabeth", "Adam", "Megan", "Melissa", "Kevin",
    "Steven", "Thomas", "Timothy", "Christina", "Kyle", "Rachel", "Laura", "Lauren", "Amber",
    "Brittany", "Danielle", "Richard", "Kimberly", "Jeffrey", "Amy", "Crystal", "Michelle",
    "Tiffany", "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca", "Jacob",
    "Stephen", "Patrick", "Sean", "Erin", "Jamie", "Kelly", "Samantha", "Nathan", "Sara",
    "Dustin", "Paul", "Angela", "Tyler", "Scott", "Katherine", "Andrea", "Gregory", "Erica",
    "Mary", "Travis", "Lisa", "Kenneth", "Bryan", "Lindsey", "Kristen", "Jose", "Alexander",
    "Jesse", "Katie", "Lindsay", "Shannon", "Vanessa", "Courtney", "Christine", "Alicia",
    "Cody", "Allison", "Bradley", "Samuel",
)  # fmt: skip
PAPER_IOI_PLACES = (
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
)  # fmt: skip
PAPER_IOI_OBJECTS = (
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack",
)  # fmt: skip
PAPER_GREATER_THAN_NOUNS = (
    "abduction", "accord", "affair", "agreement", "appraisal", "assaults", "assessment",
    "attack", "attempts", "campaign", "captivity", "case", "challenge", "chaos", "clash",
    "collaboration", "coma", "competition", "confrontation", "consequence", "conspiracy",
    "construction", "consultation", "contact", "contract", "convention", "cooperation",
    "custody", "deal", "decline", "decrease", "demonstrations", "development", "disagreement",
    "disorder", "dispute", "domination", "dynasty", "effect", "effort", "employment",
    "endeavor", "engagement", "epidemic", "evaluation", "exchange", "existence", "expansion",
    "expedition", "experiments", "fall", "fame", "flights", "friendship", "growth", "hardship",
    "hostility", "illness", "impact", "imprisonment", "improvement", "incarceration",
    "increase", "insurgency", "invasion", "investigation", "journey", "kingdom", "marriage",
    "modernization", "negotiation", "notoriety", "obstruction", "operation", "order",
    "outbreak", "outcome", "overhaul", "patrols", "pilgrimage", "plague", "plan", "practice",
    "process", "program", "progress", "project", "pursuit", "quest", "raids", "reforms",
    "reign", "relationship", "retaliation", "riot", "rise", "rivalry", "romance", "rule",
    "sanctions", "shift", "siege", "slump", "stature", "stint", "strikes", "study", "test",
    "testing", "tests", "therapy", "tour", "tradition", "treaty", "trial", "trip",
    "unemployment", "voyage", "warfare", "work",
)  # fmt: skip
PAPER_DOCSTRING_NAMES = (
    "data", "name", "file", "value", "test", "new", "result", "line", "user", "key", "default",
    "request", "path", "output", "node", "item", "url", "model", "response", "text", "version",
    "function", "log", "string", "field", "start", "number", "values", "sub", "index", "error",
    "current", "context", "image", "message", "check", "json", "create", "size", "event",
    "state", "row", "obj", "parser", "end", "files", "form", "query", "fields", "instance",
    "label", "run", "action", "target", "array", "code", "num", "table", "source", "msg",
    "config", "first", "required", "options", "ret", "update", "module", "status", "group",
    "content", "client", "filename", "results", "last", "read", "command", "val", "base",
    "format", "color", "settings", "order", "found", "count", "match", "tag", "title", "parent",
    "call", "session", "token", "server", "host", "date", "description", "mode", "expected",
    "project", "info", "valid", "page", "header", "option", "task", "shape", "load", "names",
    "port", "old", "resource", "root",
)  # fmt: skip
PAPER_DOCSTRING_WORDS = (
    "price", "control", "action", "cost", "issue", "process", "position", "course", "minute",
    "education", "type", "research", "subject", "girl", "age", "father", "force", "order",
    "value", "act", "matter", "health", "lot", "street", "patient", "class", "mind", "church",
    "condition", "paper", "bank", "century", "section", "activity", "table", "building",
    "sense", "sort", "staff", "team", "student", "language", "town", "plan", "management",
    "morning", "committee", "product", "practice", "evidence", "ground", "letter", "foot",
    "boy", "back", "game", "food", "union", "role", "event", "land", "art", "support", "range",
    "stage", "trade", "voice", "arm", "club", "field", "history", "parent", "account",
    "material", "care", "manager", "project", "record", "example", "training", "window", "air",
    "light", "wife", "quality", "rule", "pound", "story", "tax", "worker", "data", "model",
    "nature", "bed", "hospital", "method", "unit", "detail", "date", "wall", "computer",
    "amount", "bit", "president", "chapter", "property", "son", "director", "leader", "south",
    "application", "board", "king", "production", "operation", "share", "lord", "contract",
    "picture", "test", "security", "election", "source", "colour", "future", "site", "loss",
    "shop", "animal", "heart", "purpose", "standard", "page", "doctor", "factor", "hair",
    "love", "music", "charge", "pattern", "design", "piece", "population", "tree", "knowledge",
    "performance", "plant", "pressure", "fire", "environment", "size", "analysis", "rest",
    "success", "thought", "region", "list", "relation", "set", "space", "statement", "demand",
    "sea", "step", "capital", "choice", "player", "station", "film", "feature", "income",
    "individual", "cup", "technology", "machine", "cell", "degree", "energy", "growth",
    "treatment", "mile", "function", "risk", "sound", "task", "top", "resource", "floor",
    "science", "style", "hall", "horse", "response", "character", "user", "answer", "dog",
    "look", "brother", "argument", "season", "bill", "element", "glass", "duty", "claim",
    "fund", "leg", "park", "title", "note", "daughter", "sun", "box", "river", "profit",
    "division", "stone", "post", "client", "help", "image", "oil", "sector", "attack",
    "direction", "seat", "employment", "goal", "sign", "ability", "campaign", "fish", "item",
    "medium", "show", "version", "drug", "library", "press", "surface", "blood", "culture",
    "memory", "return", "bar", "talk", "access", "deal", "star", "text", "cause", "mouth",
    "payment", "context", "reference", "second", "article", "chair", "earth", "object",
    "agency", "card", "collection", "communication", "public", "document", "weight", "bird",
    "rock", "call", "edge", "miss", "option", "quarter", "stock", "aid", "concept", "match",
    "network", "radio", "target", "finger", "forest", "race", "sex", "ball", "crime", "message",
    "peace", "review", "scale", "scene", "speech", "band", "expression", "hill", "reader",
    "owner", "trust", "truth", "turn", "file", "past", "start", "trial", "balance", "copy",
    "league", "length", "wind", "front", "move", "pain", "spirit", "train", "contact",
    "official", "strength", "cash", "gas", "shape", "agent", "pair", "protection", "rise",
    "driver", "master", "meaning", "vote", "adult", "play", "fig", "route", "speed", "credit",
    "impact", "danger", "flower", "half", "path", "track", "video", "aim", "bag", "comment",
    "content", "distance", "gold", "link", "skin", "boat", "dad", "prison", "sight", "wine",
    "offer", "writer", "hole", "package", "confidence", "generation", "key", "phone", "sample",
    "ship", "threat", "volume", "author", "background", "engine", "entry", "stuff", "yard",
    "bus", "regulation", "row", "song", "category", "consumer", "football", "meal", "wood",
    "bridge", "description", "existence", "flat", "lip", "session", "sheet", "code", "flight",
    "limit", "plate", "rain", "respect", "writing", "capacity", "dream", "selection", "spring",
    "while", "definition", "egg", "examination", "mark", "notice", "output", "will", "address",
    "bottom", "kid", "middle", "neck", "run", "acid", "assembly", "birth", "ear", "error",
    "module", "store", "transfer", "wave", "channel", "component", "cut", "fee", "lead",
    "weather", "block", "brain", "guide", "program", "screen", "connection", "cover", "map",
    "metal", "phase", "pool", "search", "sequence", "sky", "sum", "trip", "cat", "display",
    "gallery", "gate", "heat", "location", "reading", "theme", "drive", "faith", "hell",
    "learning", "opening", "priority", "spot", "tool", "castle", "coal", "flow", "lane",
    "motion", "release", "total", "wing", "border", "index", "pocket", "ring", "billion",
    "device", "engineering", "fruit", "lake", "leaf", "pub", "request", "square", "tone",
    "walk", "chain", "circle", "creation", "fall", "present", "shot", "fashion", "god", "mass",
    "panel", "fan", "iron", "origin", "ticket", "bone", "cancer", "chief", "editor", "fuel",
    "general", "height", "round", "vision", "warning", "being", "cross", "living", "rail",
    "working", "column", "finding", "gap", "grass", "plane", "root", "score", "shadow", "shock",
    "touch", "database", "formation", "male", "ref", "resident", "resolution", "topic", "break",
    "camp", "currency", "phrase", "thinking", "coat", "mill", "stress", "boot", "command",
    "depth", "female", "frame", "framework", "holder", "ice", "inch", "port", "protein", "rose",
    "saving", "string", "wheel", "bishop", "cycle", "export", "hat", "load", "mode", "setting",
    "stairs", "travel", "average", "camera", "focus", "green", "guard", "input", "layer",
    "poll", "sleep", "suit", "bread", "cake", "efficiency", "peak", "self", "angle", "bay",
    "bid", "cloud", "custom", "dollar", "variable", "zone", "actor", "chip", "core", "final",
    "frequency", "gain", "guy", "relative", "rent", "reply", "secret", "shirt", "apple",
    "instance", "intelligence", "lad", "pipe", "anger", "disk", "fight", "hero", "journal",
    "left", "mail", "pace", "paragraph", "platform", "print", "rank", "sand", "scope", "shift",
    "stream", "chemical", "clock", "delay", "host", "human", "count", "mission", "pack", "seed",
    "tail", "tie", "watch", "dark", "hold", "mine", "net", "tip", "dimension", "operator",
    "professional", "shell", "storage", "summary", "tube", "conduct", "determination", "drop",
    "import", "label", "percent", "pot", "proof", "unity", "win", "wire", "bell", "comfort",
    "complex", "draft", "grade", "lift", "mouse", "movie", "profile", "standing", "belt",
    "black", "check", "joy", "local", "pit", "red", "register", "storm", "album", "ban",
    "bench", "button", "cap", "chart", "coin", "dust", "folk", "margin", "pole", "stand",
    "stick", "tin",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# IOI

PAPER_IOI_TEMPLATE = "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to [A]"
"""ABBA template #0: `[A]` is the IO, `[B]` the subject S."""
PAPER_IOI_SEED = 0


@dataclasses.dataclass(frozen=True)
class PaperIOISentences:
    """The original's IOI sentences (complete: they end with the IO name).

    - `clean`, `corrupted`: the sentences; `corrupted[i]` is the ABC version of `clean[i]`.
    - `io_names`, `s_names`: the clean sentence's IO and S.
    """

    clean: list[str]
    corrupted: list[str]
    io_names: list[str]
    s_names: list[str]


def paper_ioi_sentences(n: int = 200, *, seed: int = PAPER_IOI_SEED) -> PaperIOISentences:
    """The original's `IOIDataset(prompt_type="ABBA", N=n, nb_templates=1, seed=seed)` and its
    `.gen_flipped_prompts(("IO", "RAND"), seed=1).gen_flipped_prompts(("S", "RAND"), seed=2)
    .gen_flipped_prompts(("S1", "RAND"), seed=3)`, as strings."""
    if n < 1:
        raise ValueError(f"Need at least one IOI prompt, got n={n}.")
    rng = random.Random((seed + 987654321) % 123456789)
    templates = [PAPER_IOI_TEMPLATE]
    clean, io_names, s_names = [], [], []
    for _ in range(n):
        template = rng.choice(templates)  # one template, but the draw still uses the stream
        io = s = third = ""
        while len({io, s, third}) < 3:
            io, s, third = (rng.choice(PAPER_IOI_NAMES) for _ in range(3))
        place = rng.choice(PAPER_IOI_PLACES)
        obj = rng.choice(PAPER_IOI_OBJECTS)
        text = template.replace("[PLACE]", place).replace("[OBJECT]", obj)
        clean.append(text.replace("[A]", io).replace("[B]", s))
        io_names.append(io)
        s_names.append(s)

    words = [text.split(" ") for text in clean]
    io_now, s_now = list(io_names), list(s_names)
    names = PAPER_IOI_NAMES

    def last_index(row: list[str], word: str) -> int:
        return len(row) - 1 - row[::-1].index(word)

    # ("IO", "RAND"): both occurrences of IO become a name other than IO and S.
    draw = np.random.RandomState((1 + 345467) % 5432)
    for i, row in enumerate(words):
        new = names[draw.randint(len(names))]
        while new in (io_now[i], s_now[i]):
            new = names[draw.randint(len(names))]
        row[row.index(io_now[i])] = new
        row[row.index(io_now[i])] = new
        io_now[i] = new
    # ("S", "RAND"): the first and then the last occurrence of S become one random name.
    draw = np.random.RandomState((2 + 345467) % 5432)
    for i, row in enumerate(words):
        new = names[draw.randint(len(names))]
        row[row.index(s_now[i])] = new
        row[last_index(row, s_now[i])] = new
        s_now[i] = new
    # ("S1", "RAND"): the first occurrence of (the new) S becomes a random name.
    draw = np.random.RandomState((3 + 345467) % 5432)
    for i, row in enumerate(words):
        row[row.index(s_now[i])] = names[draw.randint(len(names))]
    return PaperIOISentences(
        clean=clean,
        corrupted=[" ".join(row) for row in words],
        io_names=io_names,
        s_names=s_names,
    )


# ---------------------------------------------------------------------------------------------
# Greater-Than

PAPER_GREATER_THAN_SEED = 54


def paper_greater_than_draws(
    n_years: int, n: int = 200, *, seed: int = PAPER_GREATER_THAN_SEED
) -> tuple[list[str], list[int]]:
    """The original's `get_year_data(n, model)` draws: after `torch.manual_seed(seed)`, `n`
    noun indices into [`PAPER_GREATER_THAN_NOUNS`][], then `n` indices into the `n_years`
    start years. Returns the nouns and the year indices."""
    if n < 1:
        raise ValueError(f"Need at least one Greater-Than prompt, got n={n}.")
    generator = TorchGenerator(seed)
    nouns = generator.randint(0, len(PAPER_GREATER_THAN_NOUNS), n)
    years = generator.randint(0, n_years, n)
    return [PAPER_GREATER_THAN_NOUNS[i] for i in nouns], [int(i) for i in years]


# ---------------------------------------------------------------------------------------------
# Docstring

PAPER_DOCSTRING_SEED = 0
N_MATCHING, N_DEF_PREFIX, N_DEF_SUFFIX = 3, 2, 1
N_DESCRIPTION_WORDS, N_PARAM_WORDS = 3, 2


@dataclasses.dataclass(frozen=True)
class PaperDocstringPrompt:
    """One of the original's docstring prompts ("rest" style, `random_random` corruption).

    - `clean`, `corrupted`: the prompts (no BOS), ending at the open `:param`.
    - `correct`: `" " + the answer`; `wrong`: the 13 other sampled argument names, each with a
        leading space, in the original's order.
    """

    clean: str
    corrupted: str
    correct: str
    wrong: list[str]


def _docstring_text(method, description, def_args, doc_args, doc_words) -> str:
    indent = "    "
    lines = [f"{indent}:param {arg}: {' '.join(w)}" for arg, w in zip(doc_args, doc_words)]
    return (
        f'\ndef {method}(self, {", ".join(def_args)}):\n{indent}"""{" ".join(description)}\n'
        f"\n" + "\n".join(lines) + f"\n{indent}:param"
    )


def paper_docstring_prompt(seed: int) -> PaperDocstringPrompt:
    """The original's `docstring_induction_prompt_generator("rest", n_matching_args=3,
    n_def_prefix_args=2, n_def_suffix_args=1, n_doc_prefix_args=0, met_desc_len=3,
    arg_desc_len=2, seed=seed)`, its clean prompt and `random_random` corruption."""
    rng = random.Random(seed)
    n_other = N_MATCHING - 1
    n_names = 2 + N_MATCHING + n_other + n_other + N_MATCHING + N_DEF_PREFIX + N_DEF_SUFFIX
    method, *args = rng.sample(PAPER_DOCSTRING_NAMES, n_names)
    rest = args[1:]  # args[0]: the "random answer" of other corruptions; a wrong answer here
    rr_def, rest = rest[:N_MATCHING], rest[N_MATCHING:]
    rr_doc, rest = rest[:n_other], rest[n_other:]
    rest = rest[n_other:]  # "not matching" names: wrong answers only
    matching, rest = rest[:N_MATCHING], rest[N_MATCHING:]
    prefix, suffix = rest[:N_DEF_PREFIX], rest[N_DEF_PREFIX:]
    description = rng.sample(PAPER_DOCSTRING_WORDS, N_DESCRIPTION_WORDS)
    doc_args = matching[:-1]
    doc_words = [rng.sample(PAPER_DOCSTRING_WORDS, N_PARAM_WORDS) for _ in doc_args]
    clean = _docstring_text(method, description, prefix + matching + suffix, doc_args, doc_words)
    corrupted = _docstring_text(method, description, prefix + rr_def + suffix, rr_doc, doc_words)
    return PaperDocstringPrompt(
        clean=clean,
        corrupted=corrupted,
        correct=" " + matching[-1],
        wrong=[" " + a for a in args if a != matching[-1]],
    )


def paper_docstring_prompts(
    n: int = 100, *, seed: int = PAPER_DOCSTRING_SEED
) -> list[PaperDocstringPrompt]:
    """The original's 100 docstring prompts for `seed=0` (prompt `i` drawn with seed
    `seed + i`)."""
    if n < 1:
        raise ValueError(f"Need at least one docstring prompt, got n={n}.")
    return [paper_docstring_prompt(seed + i) for i in range(n)]
