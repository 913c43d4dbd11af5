"""Self-drafting: the target drafts for itself through a subset of its own layers.

LayerSkip (Elhoushi et al. 2024, arXiv 2404.16710) drafts with the target's
first L layers followed by its own final norm and LM head ("early exit");
SWIFT (Xia et al. 2024, arXiv 2410.06916) skips a chosen set of intermediate
layers instead. Both need no second model and no second tokenizer. Here both
are one `Drafter`: `SelfDrafter` holds the target `Model` itself (the same
arrays, not a copy) and a static tuple of layer indices; its draft model is
the target's embedding, the chosen blocks in order, the final norm and the
head. It then drafts exactly like `ModelDrafter` (its own KV cache over the
chosen layers, rolled back by length), so it is exact by construction: q is
the processed law of the truncated model, which is what it samples from.

How the weights are shared: the drafter's pytree leaf is the target's params,
so a jitted loop receives them once. The draft's blocks are
``params["blocks"][layers]``, taken inside the trace: a prefix of layers is a
slice, a general set a gather; XLA may materialise that slice once per call
(a transient buffer of len(layers) / num_layers of the blocks' weights), never
a second stored model.

What to expect: a target trained only for its last layer's output predicts
poorly from its early layers (LayerSkip trains with an early-exit loss for
this reason), so the acceptance is lower than a trained draft's at equal cost;
the benchmark in BUILD_NOTES (issue 15) measures it on the shipped target.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import numpy as np

from jaxspec.generation.drafters import ModelDrafter
from jaxspec.generation.emit import Sequences
from jaxspec.generation.inputs import check_int, is_integer
from jaxspec.models.cache import KVCache
from jaxspec.models.model import Model
from jaxspec.sampling.processing import SamplingConfig, SamplingParams

__all__ = ["SelfDrafter", "truncated_model"]


def check_layers(layers: Any, num_layers: int) -> tuple[int, ...]:
    """`layers` as a validated tuple: distinct, increasing indices in [0, num_layers), fewer than all."""
    if isinstance(layers, (int, np.integer)) or not all(is_integer(i) for i in layers):
        raise ValueError(f"layers must be a sequence of layer indices, got {layers!r}.")
    layers = tuple(int(i) for i in layers)
    if not layers:
        raise ValueError("layers is empty: a self-draft needs at least one of the target's layers.")
    if min(layers) < 0 or max(layers) >= num_layers:
        raise ValueError(f"layers={layers} must lie in 0..{num_layers - 1} (the target has {num_layers} layers).")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"layers={layers} must be strictly increasing (the blocks run in the target's order).")
    if len(layers) == num_layers:
        raise ValueError(
            f"layers={layers} is every layer of the target: that draft is the target itself; drop at least one layer."
        )
    return layers


def truncated_model(model: Model, layers: tuple[int, ...]) -> Model:
    """`model` run through `layers` only (then its final norm and head); shares its arrays.

    Works inside a trace (the params may be tracers): a prefix ``(0, ..., L-1)``
    is a slice of the stacked blocks, any other set a gather.
    """
    layers = check_layers(layers, model.config.num_layers)
    if layers == tuple(range(len(layers))):
        pick = lambda x: x[: len(layers)]  # noqa: E731
    else:
        index = np.asarray(layers, np.int32)
        pick = lambda x: x[index]  # noqa: E731
    params = dict(model.params)
    params["blocks"] = jax.tree.map(pick, params["blocks"])
    config = dataclasses.replace(model.config, num_layers=len(layers))
    return Model(params=params, config=config, dtype=model.dtype, sharding=model.sharding)


@flax.struct.dataclass
class SelfDrafter:
    """Drafts with the target's own layers `layers`, its final norm and its head.

    Build it with `SelfDrafter.first_layers(target, L)` (LayerSkip's early exit)
    or `SelfDrafter.skipping(target, skipped)` (SWIFT's layer skipping), and
    pass it as `speculative_sample(target, drafter, ...)`'s draft.

    Attributes:
      target: the target `Model` (traced; the very arrays the loop verifies with).
      layers: static, increasing indices of the blocks the draft runs.
      sampling: how the draft samples (as `ModelDrafter.sampling`; None: the
        target's temperature and top-k, without top-p).
      vocab_size: set by `speculative_sample` (the target's vocabulary).

    State: the KV cache of the chosen layers, with `ModelDrafter`'s invariants.

    Example (a tiny random 4-layer target drafting with its first layer):

    >>> import jax
    >>> from jaxspec import SelfDrafter, speculative_sample
    >>> from jaxspec.testing import random_model, tiny_config
    >>> target = random_model(tiny_config("gpt2", vocab_size=32, num_layers=4), seed=0)
    >>> drafter = SelfDrafter.first_layers(target, 1)
    >>> drafter.layers
    (0,)
    >>> out = speculative_sample(target, drafter, [[1, 2, 3]], key=jax.random.key(0), max_new_tokens=6)
    >>> out.tokens.shape
    (1, 6)
    """

    target: Model
    layers: tuple[int, ...] = flax.struct.field(pytree_node=False, default=(0,))
    sampling: SamplingParams | SamplingConfig | None = None
    vocab_size: int | None = flax.struct.field(pytree_node=False, default=None)
    stop_below: jax.Array | None = None  # dynamic draft length, as `ModelDrafter.stop_below`

    @classmethod
    def first_layers(cls, target: Model, num_layers: int, sampling=None) -> SelfDrafter:
        """Early exit after the target's first `num_layers` blocks."""
        num_layers = check_int("num_layers", num_layers, 1, target.config.num_layers - 1)
        return cls(target=target, layers=tuple(range(num_layers)), sampling=sampling)

    @classmethod
    def skipping(cls, target: Model, skipped: Any, sampling=None) -> SelfDrafter:
        """Every block of the target except those in `skipped`."""
        num_layers = target.config.num_layers
        skipped = {check_int("skipped layer", i, 0, num_layers - 1) for i in skipped}
        layers = tuple(i for i in range(num_layers) if i not in skipped)
        return cls(target=target, layers=check_layers(layers, num_layers), sampling=sampling)

    def _drafter(self) -> ModelDrafter:
        return ModelDrafter(
            model=truncated_model(self.target, self.layers),
            sampling=self.sampling,
            vocab_size=self.vocab_size,
            stop_below=self.stop_below,
        )

    def vocab_size_for(self, target: Model) -> int:
        if target.config != self.target.config:
            raise ValueError(
                "a SelfDrafter drafts with its own target's layers; pass the same model as speculative_sample's target."
            )
        check_layers(self.layers, target.config.num_layers)
        return target.vocab_size

    def check_context(self, needed: int, detail: str) -> None:
        del needed, detail  # the target's context, checked by the loop

    def init(self, prompt_ids_BxT, prompt_lengths_B, cache_length: int) -> KVCache:
        return self._drafter().init(prompt_ids_BxT, prompt_lengths_B, cache_length)

    def propose(self, state: KVCache, seqs: Sequences, key: jax.Array, num_draft_tokens: int):
        return self._drafter().propose(state, seqs, key, num_draft_tokens)

    def commit(self, state: KVCache, old_lengths_B, new_lengths_B, active_B, num_draft_tokens: int) -> KVCache:
        return self._drafter().commit(state, old_lengths_B, new_lengths_B, active_B, num_draft_tokens)
