"""Bring your own prompts: a text task on a tiny random model, ACDC with mean ablation, EAP-IG.

The same code is in the README ("Your own prompts"); tests/test_readme_example.py checks that
the two agree and that the README's snippet runs.

    python examples/own_prompts.py
"""

# --- README example start ---
import jax.random as jr

import jacdc
from jacdc import tasks
from jacdc.models import Transformer, TransformerConfig


# Any tokenizer with encode(text) -> list[int] works, e.g. load_pretrained(FOLDER).tokenizer.
WORDS = "<pad> When Mary and John went to the shop gave a drink Tom Anna home ran".split()


class WordTokenizer:
    def encode(self, text):
        return [WORDS.index(w) for w in text.split()]

    def decode(self, ids):
        return " ".join(WORDS[i] for i in ids)


cfg = TransformerConfig(
    n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=32, d_vocab=len(WORDS), n_ctx=16
)
model = Transformer(cfg, key=jr.key(0))  # a tiny random model; use your own checkpoint

bundle = tasks.from_prompts(  # or tasks.from_file("prompts.csv", model, tokenizer)
    model,
    WordTokenizer(),
    clean=["When Mary and John went to the shop John gave a drink to", "When Tom and Anna ran"],
    corrupted=["When Mary and Tom went to the shop John gave a drink to", "When Tom and John ran"],
    correct=["Mary", "home"],  # prompts of different lengths: each is read at its last token
    incorrect=["John", "Anna"],
    test_fraction=0.0,  # two prompts: validate on both
)
result = jacdc.acdc(model, bundle.val, threshold=0.01, metric="logit_diff", ablation="mean")
print(f"ACDC kept {result.n_edges} of {len(result.graph)} edges")
scores = jacdc.eap_ig_scores(model, bundle.val, metric="logit_diff", steps=5)
top = jacdc.circuit_from_scores(scores, top_k=10)  # a bool mask over the edges
print(f"EAP-IG kept {int(top.sum())} edges; its first: {result.graph.names[abs(scores).argmax()]}")
# --- README example end ---
