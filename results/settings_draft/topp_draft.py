"""One process, interleaved: target T = 0.6 with top-p 0.9 and different draft filters (K = 5, block).

    python results/settings_draft/topp_draft.py

(Measured before the draft's default stopped copying the target's top-p: "default" below was then
the target's settings; pass draft_top_p=0.9 to reproduce it now.)
"""

import os

import jax

import jaxspec
from jaxspec.benchmarking import heldout_prompts, time_interleaved

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKPOINTS = os.path.join(REPO, "checkpoints")
target = jaxspec.load_model(os.path.join(CHECKPOINTS, "gpt2-target"))
draft = jaxspec.load_model(os.path.join(CHECKPOINTS, "gpt2-draft-distilled"))
prompt_set = heldout_prompts(jaxspec.load_tokenizer(os.path.join(CHECKPOINTS, "gpt2-target")), 16, 32)


def prompts(seed):
    return prompt_set[seed % 16][None] if seed < 16 else prompt_set[:1]


def ar(**settings):
    return lambda s: jaxspec.autoregressive_sample(
        target, prompts(s), key=jax.random.key(s), max_new_tokens=128, temperature=0.6, **settings
    )


def spec(**settings):
    return lambda s: jaxspec.speculative_sample(
        target, draft, prompts(s), key=jax.random.key(s), max_new_tokens=128, num_draft_tokens=5, verify="block",
        temperature=0.6, **settings,
    )  # fmt: skip


methods = {
    "ar_t06": ar(),
    "ar_topp": ar(top_p=0.9),
    "spec_t06": spec(),
    "spec_topp_default": spec(top_p=0.9, draft_top_p=0.9),
    "spec_topp_draft_nofilter": spec(top_p=0.9, draft_top_p=1.0),
    "spec_topp_draft_topk64": spec(top_p=0.9, draft_top_p=1.0, draft_top_k=64),
}
timings, results = time_interleaved(methods, 16, keep_results=True)
for name, v in timings.items():
    extra = ""
    if name.startswith("spec"):
        res = results[name]
        per_round = sum(int(r.lengths[0]) for r in res) / sum(int(r.num_rounds[0]) for r in res)
        extra = f" tokens/round {per_round:.2f}"
    print(f"{name:28s} {128 * 16 / sum(v['times_s']):7.1f} tok/s{extra}")
