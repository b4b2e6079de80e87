"""Session fixtures for the language-model task tests (IOI, Greater-Than, Docstring, Induction).

Models are tiny and random: the structure of a task (shapes, metrics, patching) does not need
real weights. Real-tokenizer tasks need GPT-2's vocabulary (50,257 rows), so their model is
1 layer with d_model 8 to stay cheap. Weights are drawn with NumPy and passed to
`Transformer.from_params` (eager `jax.random` calls would compile one kernel per weight shape,
seconds on a 2-core machine). Each bundle is built once per session.
"""

import numpy as np
import pytest


def numpy_random_model(cfg, seed: int = 0):
    """A random [`jacdc.models.Transformer`][] for `cfg`, weights drawn with NumPy."""
    from jacdc.models import Transformer

    rng = np.random.default_rng(seed)
    d, e, H, m = cfg.d_model, cfg.d_head, cfg.n_heads, cfg.d_mlp

    def normal(*shape, std=0.2):
        return (std * rng.standard_normal(shape)).astype(np.float32)

    def ln():
        return (1.0 + normal(d, std=0.1), normal(d, std=0.1))

    blocks = []
    for _ in range(cfg.n_layers):
        blk = dict(
            ln1=ln(), w_q=normal(H, d, e, std=d**-0.5), b_q=normal(H, e),
            w_k=normal(H, d, e, std=d**-0.5), b_k=normal(H, e),
            w_v=normal(H, d, e, std=d**-0.5), b_v=normal(H, e),
            w_o=normal(H, e, d, std=(H * e) ** -0.5), b_o=normal(d),
        )  # fmt: skip
        if cfg.has_mlp:
            blk.update(
                ln2=ln(), w_in=normal(d, m, std=d**-0.5), b_in=normal(m),
                w_out=normal(m, d, std=m**-0.5), b_out=normal(d),
            )  # fmt: skip
        blocks.append(blk)
    return Transformer.from_params(
        cfg,
        w_e=normal(cfg.d_vocab, d, std=1.0),
        w_pos=normal(cfg.n_ctx, d, std=0.5),
        blocks=blocks,
        ln_final=ln(),
        w_u=normal(d, cfg.vocab_out, std=d**-0.5),
        b_u=normal(cfg.vocab_out, std=0.1),
    )


def lm_config(**overrides):
    """A tiny config (1 layer, 2 heads, d_model 8, MLP, GPT-2's vocabulary) with overrides."""
    from jacdc.models import TransformerConfig

    fields = dict(n_layers=1, n_heads=2, d_model=8, d_head=4, d_mlp=16, d_vocab=50257, n_ctx=64)
    fields.update(overrides)
    return TransformerConfig(**fields)


@pytest.fixture(scope="session")
def make_lm_model():
    """`make_lm_model(seed=0, **config_overrides)`: a tiny NumPy-initialised model."""
    return lambda seed=0, **overrides: numpy_random_model(lm_config(**overrides), seed)


@pytest.fixture(scope="session")
def gpt2_tok():
    """GPT-2's tokenizer, from the BPE files of an installed package (no download)."""
    from jacdc.models import gpt2_tokenizer

    return gpt2_tokenizer()


@pytest.fixture(scope="session")
def gpt2_vocab_model():
    """A 1-layer random transformer with MLPs and GPT-2's vocabulary."""
    return numpy_random_model(lm_config(), seed=0)


@pytest.fixture(scope="session")
def attn_only_gpt2_vocab_model():
    """A 1-layer attention-only random transformer with GPT-2's vocabulary (docstring)."""
    return numpy_random_model(lm_config(d_mlp=None), seed=1)


@pytest.fixture(scope="session")
def tiny_induction_model():
    """A 2-layer attention-only shortformer model with a 20-token vocabulary."""
    cfg = lm_config(n_layers=2, d_mlp=None, d_vocab=20, n_ctx=32, positional="shortformer")
    return numpy_random_model(cfg, seed=2)


@pytest.fixture(scope="session")
def ioi_bundle(gpt2_vocab_model, gpt2_tok):
    from jacdc.tasks import load_task

    return load_task("ioi", model=gpt2_vocab_model, tokenizer=gpt2_tok)


@pytest.fixture(scope="session")
def greater_than_bundle(gpt2_vocab_model, gpt2_tok):
    from jacdc.tasks import load_task

    return load_task("greater-than", model=gpt2_vocab_model, tokenizer=gpt2_tok)


@pytest.fixture(scope="session")
def docstring_bundle(attn_only_gpt2_vocab_model, gpt2_tok):
    from jacdc.tasks import load_task

    return load_task("docstring", model=attn_only_gpt2_vocab_model, tokenizer=gpt2_tok)


@pytest.fixture(scope="session")
def induction_bundle(tiny_induction_model):
    from jacdc.tasks import load_task

    return load_task(
        "induction", model=tiny_induction_model, seq_len=21, n_val=6, n_test=5, data="jacdc"
    )
