"""Tiny random causal LMs of the common architectures (hidden 32, 2 layers), for `test_architectures.py`.

Each entry is the `model_type` plus the config keywords that make it tiny; `tiny_arch` builds it
through `AutoConfig.for_model` / `AutoModelForCausalLM.from_config`, so the classes are the ones
`from_pretrained` would pick for the saved folder.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

# Shared by the Llama-like decoders (rotary attention, gated MLP, grouped KV heads).
_DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512)

ARCHS: dict[str, dict] = {
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=512),
    "llama": dict(_DECODER),
    "qwen2": dict(_DECODER),
    "qwen3": dict(_DECODER, head_dim=8),
    "mistral": dict(_DECODER, head_dim=8, sliding_window=None),
    "gemma": dict(_DECODER, head_dim=8),
    "gemma3_text": dict(_DECODER, head_dim=8, sliding_window=16, query_pre_attn_scalar=8,
                        layer_types=["sliding_attention", "full_attention"]),
    "phi": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=512),
    "phi3": dict(_DECODER),
    "opt": dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32,
                max_position_embeddings=512),
    "bloom": dict(hidden_size=32, n_layer=2, n_head=4),
    "falcon": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, new_decoder_architecture=False,
                   multi_query=True, parallel_attn=True, alibi=False),
    "cohere": dict(_DECODER),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=512),
}


def tiny_arch(model_type: str, vocab: int, tied: bool, bos: int, eos: int, seed: int = 0):
    """A tiny random `model_type` causal LM with `vocab` rows, in eval mode, float32."""
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, vocab_size=vocab, tie_word_embeddings=tied, bos_token_id=bos,
                               eos_token_id=eos, pad_token_id=None, **ARCHS[model_type])
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        # Spread the rows so an old row and its copy are told apart from any mixture.
        model.get_input_embeddings().weight.normal_(0, 1.0)
        if not tied:
            model.get_output_embeddings().weight.normal_(0, 1.0)
        bias = getattr(model.get_output_embeddings(), "bias", None)
        if bias is not None:  # Phi: a per-token head bias, zero after init; make each entry distinct
            bias.normal_(0, 1.0)
    return model.float().eval()
