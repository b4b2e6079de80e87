"""Transformers with edge masks, and loaders (GPT-2 from Hugging Face files, TransformerLens
checkpoints, tracr)."""

from ._config import TransformerConfig as TransformerConfig
from ._gpt2 import gpt2_config as gpt2_config, load_gpt2 as load_gpt2
from ._hf import (
    SUPPORTED_ARCHITECTURES as SUPPORTED_ARCHITECTURES,
    hf_transformer_config as hf_transformer_config,
    load_hf as load_hf,
    load_hf_config as load_hf_config,
    read_hf_weights as read_hf_weights,
)
from ._hf_tokenizer import HFTokenizer as HFTokenizer, load_hf_tokenizer as load_hf_tokenizer
from ._pretrained import (
    LOADERS as LOADERS,
    Pretrained as Pretrained,
    load_pretrained as load_pretrained,
    register_loader as register_loader,
)
from ._processing import (
    fold_value_biases as fold_value_biases,
    value_bias_folding as value_bias_folding,
)
from ._shard import (
    model_mesh as model_mesh,
    shard_params as shard_params,
    shard_weights as shard_weights,
    weight_partition_specs as weight_partition_specs,
)
from ._tl import (
    KNOWN_CONFIGS as KNOWN_CONFIGS,
    from_transformer_lens_state_dict as from_transformer_lens_state_dict,
    load_attn_only_4l as load_attn_only_4l,
    load_redwood_attn_2l as load_redwood_attn_2l,
    load_transformer_lens as load_transformer_lens,
    transformer_lens_config as transformer_lens_config,
)
from ._tokenizer import GPT2Tokenizer as GPT2Tokenizer, gpt2_tokenizer as gpt2_tokenizer
from ._tracr import (
    TracrCompileError as TracrCompileError,
    TracrMetadata as TracrMetadata,
    cached_tracr_model as cached_tracr_model,
    compile_rasp as compile_rasp,
    compile_tracr as compile_tracr,
    ground_truth_subspaces as ground_truth_subspaces,
    load_tracr_model as load_tracr_model,
    program_ground_truth as program_ground_truth,
    residuals_from_sources as residuals_from_sources,
)
from ._transformer import (
    Block as Block,
    LayerNorm as LayerNorm,
    Sources as Sources,
    SuffixPrefix as SuffixPrefix,
    Transformer as Transformer,
    clean_run as clean_run,
    corrupted_sources as corrupted_sources,
    empty_sources as empty_sources,
    stack_blocks as stack_blocks,
    zero_ablation_sources as zero_ablation_sources,
)
