"""Regenerates the golden parity fixtures with Hugging Face transformers (PyTorch).

Run once, with torch installed (``pip install torch==2.13.0``)::

    python tests/make_golden.py              # every fixture
    python tests/make_golden.py llama_gqa    # only the named ones

For each tiny config below, transformers builds a random model (weights drawn
wider than HF's default N(0, 0.02) so logits are far from uniform and a wrong
mapping cannot hide), saves it with ``save_pretrained`` to
``tests/fixtures/<name>/`` and stores its fp32 logits on fixed token ids in
``golden.npz``. The test suite reads these files and needs no torch.
"""

import os
import sys
import zlib

import numpy as np
import torch
import transformers

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

CONFIGS = {
    "gpt2_tiny": transformers.GPT2Config(
        vocab_size=64,
        n_embd=16,
        n_layer=2,
        n_head=4,
        n_positions=32,
        activation_function="gelu_new",
        bos_token_id=0,
        eos_token_id=1,
    ),
    # opt-125m style: pre-LayerNorm, final LayerNorm, no projections.
    "opt_tiny": transformers.OPTConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=32,
        max_position_embeddings=32,
        word_embed_proj_dim=16,
        do_layer_norm_before=True,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    ),
    # opt-350m style: post-LayerNorm, no final LayerNorm, project_in/out.
    "opt_350m_style": transformers.OPTConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=32,
        max_position_embeddings=32,
        word_embed_proj_dim=8,
        do_layer_norm_before=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    ),
    # Pre-LayerNorm with projections: both OPT options at once.
    "opt_proj_preln": transformers.OPTConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=32,
        max_position_embeddings=32,
        word_embed_proj_dim=8,
        do_layer_norm_before=True,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    ),
}

# The Llama family: vocab 64, width 16, 2 layers, 4 query heads. Between them
# they cover GQA, MQA and MHA; RoPE default, linear and llama3 (theta 100 and
# an original context of 32 put one frequency in each llama3 band: kept,
# interpolated, divided); tied and untied heads; an explicit head_dim that is
# not width / heads; Llama's attention and MLP biases, Qwen2's q/k/v biases;
# Mistral's sliding window (5, shorter than the 12 golden tokens).
_LLAMA_BASE = dict(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    bos_token_id=0,
    eos_token_id=1,
)
LLAMA_CONFIGS = {
    "llama_gqa": transformers.LlamaConfig(**_LLAMA_BASE, num_key_value_heads=2, tie_word_embeddings=False),
    "llama_mha_linear": transformers.LlamaConfig(
        **_LLAMA_BASE,
        num_key_value_heads=4,
        tie_word_embeddings=True,
        attention_bias=True,
        mlp_bias=True,
        rope_parameters=dict(rope_type="linear", factor=4.0, rope_theta=10000.0),
    ),
    "llama3_rope": transformers.LlamaConfig(
        **_LLAMA_BASE,
        num_key_value_heads=1,
        head_dim=8,
        tie_word_embeddings=False,
        rope_parameters=dict(
            rope_type="llama3",
            rope_theta=100.0,
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=32,
        ),
    ),
    "qwen2_tiny": transformers.Qwen2Config(**_LLAMA_BASE, num_key_value_heads=2, tie_word_embeddings=True),
    "mistral_tiny": transformers.MistralConfig(
        **_LLAMA_BASE, num_key_value_heads=2, tie_word_embeddings=False, sliding_window=5
    ),
}


def main(names):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    for name, config in {**CONFIGS, **LLAMA_CONFIGS}.items():
        if names and name not in names:
            continue
        if name in LLAMA_CONFIGS:  # seeded by name: each regenerates alone
            torch.manual_seed(zlib.crc32(name.encode()))
            rng = np.random.default_rng(zlib.crc32(name.encode()))
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():
            for param in model.parameters():
                param.normal_(0.0, 0.3)
        folder = os.path.join(FIXTURES, name)
        model.save_pretrained(folder, safe_serialization=True)
        for extra in ("generation_config.json",):
            path = os.path.join(folder, extra)
            if os.path.exists(path):
                os.remove(path)
        tokens = rng.integers(0, config.vocab_size, size=(2, 12)).astype(np.int32)
        with torch.no_grad():
            logits = model(torch.from_numpy(tokens).long()).logits.float().numpy()
        np.savez_compressed(os.path.join(folder, "golden.npz"), tokens=tokens, logits=logits)
        print(f"{name}: {sum(p.numel() for p in model.parameters())} params, logits {logits.shape}")


if __name__ == "__main__":
    main(sys.argv[1:])
