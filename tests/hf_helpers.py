"""Tiny randomly initialised `transformers` models of every supported family, for the loader
tests (`test_hf_families.py`, `test_weight_sharding.py`).

Each model is built with `transformers` itself (`XConfig(...)`, `XForCausalLM(config)`), its
weights redrawn at a scale where every part of the forward pass matters (the library's 0.02
initialisation makes logits nearly constant, so a wrong rotary or norm would hide in 1e-4), and
saved with `save_pretrained`.
"""

import copy

import numpy as np


VOCAB = 61
SEQ = 12  # longer than every sliding window below


def _common(**kw):
    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    base.update(kw)
    return base


# name -> (config class name, model class name, config kwargs, save kwargs). Together they cover
# GQA and MQA, partial rotary, q/k/v biases, soft-capping, sliding windows (per layer and
# everywhere), Llama-3 rope scaling, tied and untied embeddings, a sharded save and a bf16 save.
CASES = {
    "neox": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        _common(rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True),
        {},
    ),
    "neox_sequential": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        _common(
            rotary_pct=0.5,
            use_parallel_residual=False,
            attention_bias=False,
            hidden_act="gelu_new",
            tie_word_embeddings=True,
            num_hidden_layers=3,
        ),
        {},
    ),  # fmt: skip
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        _common(
            num_key_value_heads=2,
            rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),  # fmt: skip
        {"max_shard_size": "20KB"},
    ),
    "llama_mqa_bias": (
        "LlamaConfig",
        "LlamaForCausalLM",
        _common(
            num_key_value_heads=1,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=True,
            head_dim=12,
        ),
        {},
    ),  # fmt: skip
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        _common(num_key_value_heads=2, sliding_window=5, head_dim=8),
        {"dtype": "bfloat16"},
    ),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        _common(
            num_key_value_heads=2,
            tie_word_embeddings=True,
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=1,
            rope_theta=1000000.0,
        ),
        {},
    ),  # fmt: skip
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        _common(
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=12,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=4.0,
            sliding_window=4,
        ),
        {},
    ),  # fmt: skip
}


def randomize(model, seed: int) -> None:
    """Redraws every parameter: linear weights `N(0, 1/fan_in)`, embeddings `N(0, 1)`, norm
    weights and biases `N(0, 0.2)` around their defaults (so norms and biases all matter)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name and name.endswith("weight"):
                # Gemma stores w for a (1 + w) scale; the others store the scale itself
                base = 0.0 if "gemma" in type(model).__name__.lower() else 1.0
                p.copy_(base + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            elif "embed" in name and p.ndim == 2 and p.shape[0] == VOCAB:
                p.copy_(noise)
            else:
                p.copy_(noise / np.sqrt(p.shape[-1]))


def build(name: str, seed: int = 0):
    """The torch model of case `name`, randomized, in eval mode, float32."""
    import transformers

    config_cls, model_cls, kw, _ = CASES[name]
    config = getattr(transformers, config_cls)(**kw)
    model = getattr(transformers, model_cls)(config).eval()
    randomize(model, seed)
    return model


def save(model, folder, name: str):
    """Saves case `name`'s model with its save options (shards, dtype); returns the torch model
    whose float32 forward is the reference for the saved weights (bf16-rounded for a bf16
    save)."""
    import torch

    save_kw = dict(CASES[name][3])
    dtype = save_kw.pop("dtype", None)
    if dtype == "bfloat16":
        # Round the parameters, keep the float32 buffers (the rotary `inv_freq`: not saved, so
        # the loaded model computes it in float32 as `transformers` does when loading).
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
        copy.deepcopy(model).to(torch.bfloat16).save_pretrained(folder, **save_kw)
        return model
    model.save_pretrained(folder, **save_kw)
    return model


def tokens(seed: int = 0, batch: int = 3, seq: int = SEQ) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, seq)).astype(np.int32)


def torch_logits(model, toks: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(toks), dtype=torch.long)).logits.float().numpy()
