"""Transformers with edge masks, and loaders (GPT-2 from Hugging Face files, TransformerLens
checkpoints, tracr)."""

from ._config import TransformerConfig as TransformerConfig
from ._transformer import (
    Block as Block,
    clean_run as clean_run,
    corrupted_sources as corrupted_sources,
    empty_sources as empty_sources,
    LayerNorm as LayerNorm,
    Sources as Sources,
    Transformer as Transformer,
    zero_ablation_sources as zero_ablation_sources,
)
