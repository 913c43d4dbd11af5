"""Small models for tests and examples (no checkpoint needed).

- `tiny_config` / `random_model`: a real decoder of any family, tiny and random.
- `MarkovModel` / `markov_model`: a stand-in that is not a transformer at all.
  Its next-token logits depend only on the current token (a [V, V] table), so
  the loops compile in a fraction of a transformer's time, and the law of any
  continuation is a closed-form product of table rows (`markov_sequence_law`):
  the loops' bookkeeping (caches, rollback, emit, counts) and their exactness
  can be tested without compiling or enumerating a transformer.
"""

from __future__ import annotations

import itertools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.models.cache import KVCache
from jaxspec.models.config import DecoderConfig
from jaxspec.models.model import Model, init_model
from jaxspec.sampling.processing import SamplingConfig, processed_probs


def tiny_config(
    model_type: str = "gpt2",
    *,
    vocab_size: int = 16,
    hidden_size: int = 16,
    num_layers: int = 2,
    num_heads: int = 2,
    max_positions: int = 64,
    **hf_overrides,
) -> DecoderConfig:
    """A tiny config of any supported family, built through the same path as a config.json.

    Llama-family configs (``"llama"``, ``"mistral"``, ``"qwen2"``) get an MLP of
    2 * hidden_size, full attention and, unless overridden (e.g.
    ``num_key_value_heads=1``), as many KV heads as query heads.
    """
    if model_type in ("llama", "mistral", "qwen2"):
        hf = dict(
            model_type=model_type,
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            intermediate_size=2 * hidden_size,
            max_position_embeddings=max_positions,
            sliding_window=None,
        )
    elif model_type == "gpt2":
        hf = dict(
            model_type="gpt2",
            vocab_size=vocab_size,
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_positions=max_positions,
        )
    else:
        hf = dict(
            model_type="opt",
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            ffn_dim=2 * hidden_size,
            max_position_embeddings=max_positions,
            word_embed_proj_dim=hidden_size,
        )
    hf.update(hf_overrides)
    return DecoderConfig.from_hf_config(hf)


def random_model(config: DecoderConfig, seed: int, *, scale: float = 1.0, dtype=jnp.float32) -> Model:
    """A model with N(0, 0.02 * scale) weights (LayerNorms keep scale 1, bias 0).

    `scale` > 1 makes the next-token distributions peakier, so tiny random
    models have varied, non-uniform distributions that make tests meaningful.
    """
    model = init_model(config, jax.random.key(seed), dtype)
    return model.replace(params=_scaled_weights(model.params, scale))


@jax.jit
def _scaled_weights(params, scale):
    """Every weight but LayerNorm scales and biases times `scale` (traced: one compile per params shape)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x if any(getattr(k, "key", None) in ("scale", "bias") for k in path) else x * scale,
        params,
    )


class _MarkovDecoder(nn.Module):
    """logits[b, t] = table[tokens[b, t]]; the cache only counts positions."""

    vocab_size: int

    @nn.compact
    def __call__(self, tokens_BxT: jax.Array, cache: KVCache, num_new_B: jax.Array | None = None, tree=None):
        del tree  # a token's logits depend on the token alone, so any tree layout is exact too
        table_VxV = self.param("table", nn.initializers.normal(1.0), (self.vocab_size, self.vocab_size))
        logits_BxTxV = table_VxV[tokens_BxT].astype(jnp.float32)
        grown = tokens_BxT.shape[1] if num_new_B is None else num_new_B.astype(jnp.int32)
        return logits_BxTxV, KVCache(cache.keys, cache.values, cache.lengths + grown)


@flax.struct.dataclass
class MarkovModel(Model):
    """A `Model` stand-in: a first-order Markov chain over the vocabulary.

    params: ``{"table": float32 [V, V]}``, row v the next-token logits after
    token v. It is a `Model` (the loops, drafters and `ModelDrafter` take it
    as one); its cache has one layer of width 1 and only its lengths matter.
    Build it with `markov_model`.
    """

    @property
    def module(self) -> _MarkovDecoder:
        return _MarkovDecoder(self.config.vocab_size)


def markov_model(vocab_size: int, seed: int, *, scale: float = 1.0, max_positions: int = 256) -> MarkovModel:
    """A `MarkovModel` with N(0, scale^2) logits (larger `scale`: peakier next-token laws).

    Example:

    >>> import jax
    >>> from jaxspec import speculative_sample
    >>> target, draft = markov_model(8, seed=0, scale=2.0), markov_model(8, seed=1, scale=2.0)
    >>> out = speculative_sample(target, draft, [[3, 1]], key=jax.random.key(0), max_new_tokens=4)
    >>> out.tokens.shape
    (1, 4)
    """
    config = tiny_config("gpt2", vocab_size=vocab_size, hidden_size=1, num_heads=1, num_layers=1,
                         max_positions=max_positions)  # fmt: skip
    table = scale * jax.random.normal(jax.random.key(seed), (vocab_size, vocab_size), jnp.float32)
    return MarkovModel(params={"table": table}, config=config)


def markov_sequence_law(model: MarkovModel, last_token: int, num_tokens: int, sampling: SamplingConfig) -> np.ndarray:
    """float64 [V] * num_tokens: the exact law of the next `num_tokens` tokens after `last_token`.

    P(y_1..y_n) = prod_i P(y_i | y_{i-1}) with y_0 = `last_token` and each row
    of the table processed by `sampling` (temperature, top-k, top-p) exactly
    as the loops process logits.
    """
    transition_VxV = np.asarray(processed_probs(model.params["table"], sampling), np.float64)
    vocab = transition_VxV.shape[0]
    law = np.zeros((vocab,) * num_tokens)
    for seq in itertools.product(range(vocab), repeat=num_tokens):
        prob, prev = 1.0, last_token
        for token in seq:
            prob *= transition_VxV[prev, token]
            prev = token
        law[seq] = prob
    return law
