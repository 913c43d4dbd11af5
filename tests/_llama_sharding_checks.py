"""Llama-family tensor parallelism on 8 simulated CPU devices, run by test_llama_sharding.py.

Its own process (the device count is fixed when jax's backend starts); prints
one JSON object of results on the last line of stdout. Cases: KV heads that
the model axis divides (split, with the cache) and ones it does not
(replicated), Qwen2 biases on a data x model mesh, greedy generation, int8
kernels, and the collectives of one decode step.
"""

from __future__ import annotations

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

import jaxspec  # noqa: E402
from jaxspec.testing import random_model, tiny_config  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)

# name: (model type, query heads, KV heads, mesh shape (data, model), HF overrides)
CASES = {
    "kv4_split": ("llama", 8, 4, (1, 4), {}),
    "kv2_replicated": ("llama", 8, 2, (1, 4), {}),
    "mqa_replicated": ("mistral", 4, 1, (2, 4), {"sliding_window": 3}),
    "qwen2_data2_model4": ("qwen2", 8, 4, (2, 4), {}),
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def model_of(case: str, seed: int = 0) -> jaxspec.Model:
    model_type, heads, kv_heads, _, extra = CASES[case]
    config = tiny_config(
        model_type, vocab_size=32, hidden_size=32, num_heads=heads, num_key_value_heads=kv_heads, **extra
    )
    return random_model(config, seed, scale=5.0)


def mesh_of(case: str) -> tuple[Mesh, str | None]:
    data, model = CASES[case][3]
    devices = np.asarray(jax.devices()[: data * model]).reshape(data, model)
    return Mesh(devices, ("data", "model")), ("data" if data > 1 else None)


@jax.jit
def forward(model, tokens_BxT):
    """Prefill then one decode step, the cache made inside jit (as the generation loops do)."""
    cache = model.init_cache(tokens_BxT.shape[0], 16)
    prefill, cache = model(tokens_BxT, cache)
    step, cache = model(tokens_BxT[:, -1:], cache)
    return prefill, step, cache


def spec(x) -> list[str]:
    """One entry per dimension (jax drops trailing Nones from a PartitionSpec)."""
    axes = [str(a) for a in x.sharding.spec]
    return axes + ["None"] * (x.ndim - len(axes))


def check_logits(case: str, quantize: bool = False) -> dict:
    model = model_of(case)
    model = jaxspec.quantize_model(model) if quantize else model
    mesh, data_axis = mesh_of(case)
    sharded = jaxspec.shard_model(model, mesh, data_axis=data_axis)
    tokens = jnp.asarray([[1, 5, 9, 2, 7], [3, 3, 8, 30, 0]], jnp.int32)
    ref_prefill, ref_step, _ = forward(model, tokens)
    prefill, step, cache = forward(sharded, tokens)
    blocks = sharded.params["blocks"]
    kernel = lambda m: blocks[m]["kernel"].values if quantize else blocks[m]["kernel"]  # noqa: E731
    out = dict(
        max_abs_diff=float(max(jnp.max(jnp.abs(prefill - ref_prefill)), jnp.max(jnp.abs(step - ref_step)))),
        cache_spec=spec(cache.keys),
        cache_shape=list(cache.keys.shape),
        heads_axis=sharded.sharding.model_axis,
        **{f"{m}_spec": spec(kernel(m)) for m in ("q", "k", "v", "attn_out", "fc_gate", "fc_in", "fc_out")},
    )
    if "bias" in blocks["q"]:
        out.update(q_bias_spec=spec(blocks["q"]["bias"]), k_bias_spec=spec(blocks["k"]["bias"]))
    return out


def check_generation() -> dict:
    """Greedy speculative and autoregressive sampling, sharded vs one device, token for token."""
    target = model_of("kv2_replicated")
    other = model_of("kv2_replicated", seed=1)
    draft = target.replace(params=jax.tree.map(lambda a, b: 0.8 * a + 0.2 * b, target.params, other.params))
    mesh, _ = mesh_of("kv2_replicated")
    prompts = [[1, 2, 3, 4], [5, 6, 7, 8]]
    kw = dict(key=jax.random.key(0), max_new_tokens=12, temperature=0.0)
    ref = jaxspec.autoregressive_sample(target, prompts, **kw)
    sharded_target, sharded_draft = (jaxspec.shard_model(m, mesh) for m in (target, draft))
    auto = jaxspec.autoregressive_sample(sharded_target, prompts, **kw)
    spec_out = jaxspec.speculative_sample(sharded_target, sharded_draft, prompts, num_draft_tokens=3, **kw)
    return dict(
        autoregressive=bool(np.array_equal(auto.tokens, ref.tokens)),
        speculative=bool(np.array_equal(spec_out.tokens, ref.tokens)),
        drafted=int(np.sum(spec_out.num_drafted)),
        accepted=int(np.sum(spec_out.num_accepted)),
    )


def layer_collectives(case: str) -> dict:
    """Collectives in the layer loop (the scan body) and elsewhere of one compiled decode step."""
    mesh, data_axis = mesh_of(case)
    sharded = jaxspec.shard_model(model_of(case), mesh, data_axis=data_axis)
    cache = jax.jit(lambda m: m.init_cache(2, 16))(sharded)
    step = jax.jit(lambda m, t, c: m(t, c), donate_argnums=2)
    hlo = step.lower(sharded, jnp.zeros((2, 1), jnp.int32), cache).compile().as_text()
    bodies, current, lines = {}, None, {}
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if header and not line.startswith(" "):
            current = header.group(1)
            lines[current] = []
        elif current is not None and line.startswith(" "):
            lines[current].append(line)
            body = re.search(r"\swhile\(.*body=%?([\w.\-]+)", line)
            if body:
                bodies[body.group(1)] = None
    pattern = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")

    def count(names):
        found = [m.group(1) for n in names for line in lines[n] for m in [pattern.search(line)] if m]
        return {op: found.count(op) for op in COLLECTIVES}

    return dict(per_layer=count(bodies), outside=count([n for n in lines if n not in bodies]))


def check_bad_query_heads() -> str | None:
    """6 query heads (2 KV heads) on a model axis of 4: no whole heads per device."""
    model = random_model(tiny_config("llama", hidden_size=24, num_heads=6, num_key_value_heads=2), 0)
    try:
        jaxspec.shard_model(model, mesh_of("kv4_split")[0])
    except ValueError as err:
        return str(err)
    return None


def main():
    results = dict(device_count=jax.device_count(), logits={c: check_logits(c) for c in CASES})
    results["bad_query_heads"] = check_bad_query_heads()
    results["int8"] = check_logits("kv4_split", quantize=True)
    results["generation"] = check_generation()
    results["hlo"] = {c: layer_collectives(c) for c in ("kv4_split", "kv2_replicated")}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
