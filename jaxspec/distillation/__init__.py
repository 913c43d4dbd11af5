"""Distils a draft towards its target on the target's own samples (DistillSpec).

After Zhou et al., "DistillSpec: Improving Speculative Decoding via Knowledge
Distillation" (arXiv 2310.08461): the draft is trained to match the target's
*processed* next-token distribution p (temperature T, what speculative sampling
preserves) on sequences the target itself generates at T (on-policy data), with
a chosen divergence D(p, q) per generated position. The acceptance rate of
speculative sampling at a position is 1 - TV(p, q), so lowering the divergence
on the target's own samples is what raises acceptance where it is used.

Data pool. A pool of `pool_size` sequences (prompt of `prompt_tokens` tokens cut
at a random offset of a random training-split file, plus `gen_tokens` tokens
from `autoregressive_sample(target, ...)` at T) is generated up front in chunks
of `gen_batch`; each step draws `batch_size` sequences from it uniformly without
replacement. Every `refresh_every` steps the oldest chunk is regenerated from
fresh prompts with a fresh key (FIFO), so the pool turns over every
`refresh_every * pool_size / gen_batch` steps and each sequence is used about
`refresh_every * batch_size / gen_batch` times. The target's processed
log-probabilities over a sequence are computed once, when it enters the pool
(float32 [pool, gen_tokens, vocab]: 268 MB for 256 x 64 x 4096); a step then
costs one draft forward and backward only. The time budget (`minutes`) covers
the steps and the refreshes: the step count is fitted to the measured cost of
both.

Evaluation (after training, original and distilled draft side by side): on
`eval_prompts` prompts from the held-out split, per eval temperature, the
acceptance rate of `speculative_sample` and its measured speedup over
`autoregressive_sample` (batch 1, calls interleaved, warm-up excluded); also
the divergence and TV on target samples from held-out prompts at the
distillation temperature.

  losses: `pointwise_divergence`, `divergence`, `sequence_logprobs`, `distill_loss`.
  data: `PromptSource`, `make_generator`, `Pool`.
  trainer: `DistillConfig`, `distill`, `evaluate_speed`.
  pipeline: `distill_draft` (the whole run, files included) and `model_card`.
"""

from jaxspec.distillation.data import Pool, PromptSource, make_generator
from jaxspec.distillation.losses import DIVERGENCES, distill_loss, divergence, pointwise_divergence, sequence_logprobs
from jaxspec.distillation.pipeline import distill_draft, model_card
from jaxspec.distillation.trainer import DistillConfig, distill, evaluate_speed

__all__ = [
    "DIVERGENCES",
    "DistillConfig",
    "Pool",
    "PromptSource",
    "distill",
    "distill_draft",
    "distill_loss",
    "divergence",
    "evaluate_speed",
    "make_generator",
    "model_card",
    "pointwise_divergence",
    "sequence_logprobs",
]
