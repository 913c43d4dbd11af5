"""`autoregressive_sample`: the one-token-per-target-call baseline, fully on device."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from jaxspec.generation.emit import Sequences, emit, generated_tokens, init_sequences, last_tokens
from jaxspec.generation.inputs import (
    SpecialIds,
    check_context,
    check_positive_int,
    prepare_prompts,
    row_settings,
    special_ids,
)
from jaxspec.generation.provenance import FROM_TARGET
from jaxspec.generation.verify import prefill
from jaxspec.models.cache import KVCache
from jaxspec.models.model import Model
from jaxspec.sampling.processing import SamplingParams, processed_probs, sample_from_probs, valid_rows


@flax.struct.dataclass
class AutoregressiveResult:
    """Output of `autoregressive_sample`.

    Attributes:
      tokens: int32 [B, N] generated ids; row b is valid in tokens[b, :lengths[b]]
        and padded with pad_token_id after.
      lengths: int32 [B] generated tokens per row (< N only if EOS came first).
      provenance: int8 [B, N], `FROM_TARGET` for generated slots, 0 after.
      num_target_calls: int32 [B] 1-token target forward passes each row used.
      nonfinite_logits: bool [B], the row stopped early because the model's
        logits for its next token had no distribution (NaN, +inf or all -inf:
        e.g. a broken checkpoint); its tokens up to `lengths` are valid.
    """

    tokens: jax.Array
    lengths: jax.Array
    provenance: jax.Array
    num_target_calls: jax.Array
    nonfinite_logits: jax.Array


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Everything static about one compiled autoregressive loop."""

    max_new_tokens: int
    vocab_size: int


@flax.struct.dataclass
class _State:
    seqs: Sequences
    cache: KVCache
    key: jax.Array
    num_calls: jax.Array


@functools.partial(jax.jit, static_argnames=("spec",))
def _generate(
    model: Model, prompt_ids_BxT, prompt_lengths_B, key, sampling: SamplingParams, ids: SpecialIds, spec: _Spec
) -> AutoregressiveResult:
    batch, width = prompt_ids_BxT.shape
    cache = prefill(model, prompt_ids_BxT, prompt_lengths_B, model.init_cache(batch, width + spec.max_new_tokens - 1))
    seqs = init_sequences(prompt_ids_BxT, prompt_lengths_B, width + spec.max_new_tokens + 1)
    state = _State(seqs=seqs, cache=cache, key=key, num_calls=jnp.zeros((batch,), jnp.int32))

    def body(state: _State) -> _State:
        key, sample_key = jax.random.split(state.key)
        logits_Bx1xV, cache = model(last_tokens(state.seqs)[:, None], state.cache)
        logits_BxV = logits_Bx1xV[:, 0, : spec.vocab_size]
        token_B = sample_from_probs(sample_key, processed_probs(logits_BxV, sampling))
        valid_B = valid_rows(logits_BxV)
        active_B = ~state.seqs.done
        seqs, _ = emit(
            state.seqs,
            token_B[:, None],
            valid_B.astype(jnp.int32),
            jnp.full((batch, 1), FROM_TARGET, jnp.int8),
            max_new_tokens=spec.max_new_tokens,
            eos_token_id=ids.eos,
            nonfinite_B=~valid_B,
        )
        # Finished rows keep their cache length, so their writes stay in bounds.
        cache = cache.with_lengths(jnp.where(active_B, cache.lengths, state.cache.lengths))
        return _State(seqs=seqs, cache=cache, key=key, num_calls=state.num_calls + active_B)

    state = jax.lax.while_loop(lambda s: ~jnp.all(s.seqs.done), body, state)
    tokens, provenance = generated_tokens(state.seqs, prompt_lengths_B, spec.max_new_tokens, ids.pad)
    return AutoregressiveResult(
        tokens=tokens,
        lengths=state.seqs.num_generated,
        provenance=provenance,
        num_target_calls=state.num_calls,
        nonfinite_logits=state.seqs.nonfinite,
    )


def autoregressive_sample(
    model: Model,
    prompt_ids: Any,
    *,
    key: jax.Array,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: int | None = None,
    prompt_lengths: Any = None,
    pad_token_id: int = 0,
    vocab_size: int | None = None,
) -> AutoregressiveResult:
    """Samples up to `max_new_tokens` tokens per row, one target call per token.

    The whole loop is one jitted `lax.while_loop`; it compiles once per
    (shapes, max_new_tokens, eos/pad ids). The sampling settings are traced
    arrays, one per row: any new value, and any mix of greedy and sampled
    rows, runs on the same compiled program.

    Example (a tiny random model; per-row settings: row 0 greedy, row 1 sampled):

    >>> import jax
    >>> from jaxspec import autoregressive_sample
    >>> from jaxspec.testing import random_model, tiny_config
    >>> model = random_model(tiny_config("gpt2", vocab_size=32), seed=0)
    >>> out = autoregressive_sample(model, [[1, 2, 3], [4, 5]], key=jax.random.key(0), max_new_tokens=5,
    ...                             temperature=[0.0, 1.0], top_p=[1.0, 0.9])
    >>> out.tokens.shape, out.lengths.tolist(), out.num_target_calls.tolist()
    ((2, 5), [5, 5], [5, 5])

    Args:
      model: a `Model` (from `load_model`).
      prompt_ids: int [B, T] right-padded token ids, or a list of B id lists
        of different lengths.
      key: a PRNG key.
      max_new_tokens: N >= 1.
      temperature: >= 0; 0 means greedy (argmax). A number, or an array of
        shape [B] (one per row); so are top_k and top_p.
      top_k: keep the k most likely tokens; 0 = off.
      top_p: nucleus mass in (0, 1]; 1 = off. Processing order is
        temperature -> top-k -> top-p.
      eos_token_id: a row stops after emitting it (the EOS is included).
      prompt_lengths: int [B] real lengths of right-padded `prompt_ids`.
      pad_token_id: fills ragged prompts and `tokens` after each row's end;
        must be an id of the vocabulary (it is fed to the model).
      vocab_size: sample only ids below this (drops padding rows of an
        embedding table); default the model's vocab size.

    Returns:
      An `AutoregressiveResult`.

    Raises:
      ValueError: before any compute, for N < 1, a bad temperature (< 0, not
        finite, or below float32's smallest normal 1.18e-38 but not 0), top_k < 0,
        top_p outside (0, 1], settings arrays of the wrong shape, ids or
        pad_token_id outside the vocabulary, or a prompt + N beyond the context.
    """
    max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
    vocab = model.vocab_size if vocab_size is None else check_positive_int("vocab_size", vocab_size)
    if vocab > model.vocab_size:
        raise ValueError(f"vocab_size={vocab} exceeds the model's vocab_size={model.vocab_size}.")
    prompts = prepare_prompts(prompt_ids, prompt_lengths, vocab, pad_token_id)
    sampling = row_settings(temperature, top_k, top_p, prompts.batch_size)
    check_context(model, "model", prompts.max_length + max_new_tokens - 1, "longest prompt + max_new_tokens - 1")
    spec = _Spec(max_new_tokens=max_new_tokens, vocab_size=vocab)
    ids = special_ids(eos_token_id, pad_token_id, vocab)
    return _generate(model, jnp.asarray(prompts.ids), jnp.asarray(prompts.lengths), key, sampling, ids, spec)
