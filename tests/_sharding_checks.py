"""Sharding checks on 8 simulated CPU devices, run by test_sharding.py in a subprocess.

The test process's jax already runs with one device; the device count is fixed
when the backend starts, so these checks need their own process. Prints one
JSON object of results on the last line of stdout.
"""

from __future__ import annotations

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, PartitionSpec  # noqa: E402

import jaxspec  # noqa: E402
from jaxspec.benchmarking import hlo  # noqa: E402
from jaxspec.testing import random_model, tiny_config  # noqa: E402

# Tiny compiles dominate: trade run-time optimisation for compile time.
jax.config.update("jax_disable_most_optimizations", True)

MESHES = {"model4": ((1, 4), None), "data2_model4": ((2, 4), "data")}
LOGITS_CASES = (("gpt2", "model4"), ("gpt2", "data2_model4"), ("opt", "data2_model4"))


def mesh_of(name: str) -> tuple[Mesh, str | None]:
    shape, data_axis = MESHES[name]
    devices = np.asarray(jax.devices()[: shape[0] * shape[1]]).reshape(shape)
    return Mesh(devices, ("data", "model")), data_axis


@jax.jit
def forward(model, tokens_BxT):
    """Prefill then one decode step, the cache made inside jit (as the generation loops do)."""
    cache = model.init_cache(tokens_BxT.shape[0], 16)
    prefill, cache = model(tokens_BxT, cache)
    step, cache = model(tokens_BxT[:, -1:], cache)
    return prefill, step, cache


def check_logits(model_type: str, mesh_name: str) -> dict:
    config = tiny_config(model_type, vocab_size=32, hidden_size=32, num_heads=4)
    model = random_model(config, 0, scale=5.0)
    mesh, data_axis = mesh_of(mesh_name)
    sharded = jaxspec.shard_model(model, mesh, data_axis=data_axis)
    tokens = jnp.asarray([[1, 5, 9, 2, 7], [3, 3, 8, 30, 0]], jnp.int32)
    ref_prefill, ref_step, _ = forward(model, tokens)
    prefill, step, cache = forward(sharded, tokens)
    qkv = sharded.params["blocks"]["qkv"]["kernel"]
    return dict(
        max_abs_diff=float(max(jnp.max(jnp.abs(prefill - ref_prefill)), jnp.max(jnp.abs(step - ref_step)))),
        qkv_spec=[str(a) for a in qkv.sharding.spec],
        qkv_shard_shape=list(qkv.addressable_shards[0].data.shape),
        fc_out_spec=[str(a) for a in sharded.params["blocks"]["fc_out"]["kernel"].sharding.spec],
        embed_spec=[str(a) for a in sharded.params["embed"]["embedding"].sharding.spec],
        num_devices=len(qkv.sharding.device_set),
        cache_spec=[str(a) for a in cache.keys.sharding.spec],
    )


def check_generation() -> dict:
    """Greedy speculative and autoregressive sampling, sharded vs one device, token for token."""
    config = tiny_config("gpt2", vocab_size=32, hidden_size=32, num_heads=4)
    target = random_model(config, 0, scale=5.0)
    # A draft close to the target, so that some drafts are accepted and some rejected.
    other = random_model(config, 1, scale=5.0)
    draft = target.replace(params=jax.tree.map(lambda a, b: 0.8 * a + 0.2 * b, target.params, other.params))
    mesh, data_axis = mesh_of("data2_model4")
    sharded_target = jaxspec.shard_model(target, mesh, data_axis=data_axis)
    drafts = {"draft_one_device": draft, "draft_sharded": jaxspec.shard_model(draft, mesh, data_axis=data_axis)}
    prompts = [[1, 2, 3, 4], [5, 6, 7, 8]]
    kw = dict(key=jax.random.key(0), max_new_tokens=12, temperature=0.0)
    # The one-device reference: greedy speculative sampling equals greedy decoding
    # token for token (tests/test_exactness.py), so one reference serves both and
    # saves a compile.
    ref = jaxspec.autoregressive_sample(target, prompts, **kw)
    got = jaxspec.autoregressive_sample(sharded_target, prompts, **kw)
    out = dict(autoregressive=bool(np.array_equal(got.tokens, ref.tokens)), drafted={}, accepted={})
    for name, d in drafts.items():
        got = jaxspec.speculative_sample(sharded_target, d, prompts, num_draft_tokens=3, **kw)
        out[f"speculative_{name}"] = bool(np.array_equal(got.tokens, ref.tokens))
        out["drafted"][name] = int(np.sum(got.num_drafted))
        out["accepted"][name] = int(np.sum(got.num_accepted))
    return out


def check_errors() -> dict:
    """A head count the model axis does not divide; replicating such a model with rules is fine."""
    mesh, _ = mesh_of("model4")
    model = random_model(tiny_config("gpt2", hidden_size=24, num_heads=6), 0)
    try:
        jaxspec.shard_model(model, mesh)
        message = None
    except ValueError as err:
        message = str(err)
    replicated = jaxspec.shard_model(model, mesh, [(r".*", PartitionSpec())])
    leaves = jax.tree.leaves(replicated.params)
    return dict(
        bad_heads=message,
        replicated_heads_axis=replicated.sharding.model_axis,
        replicated_all=all(x.sharding.is_fully_replicated and len(x.sharding.device_set) == 4 for x in leaves),
        odd_batch_cache_spec=[
            str(a) for a in jaxspec.ModelSharding(mesh_of("data2_model4")[0], "model", "data").cache_spec(3).keys
        ],
    )


def check_hlo() -> dict:
    return {
        name: hlo.report(config, "1x4", batch=1, cache_length=16)
        for name, config in (("gpt2", "tiny-gpt2"), ("opt", "tiny-opt"))
    }


def main():
    start = time.perf_counter()
    results = dict(logits={}, device_count=jax.device_count(), seconds={})

    def timed(name, fn):
        t = time.perf_counter()
        value = fn()
        results["seconds"][name] = round(time.perf_counter() - t, 2)
        return value

    for model_type, mesh_name in LOGITS_CASES:
        key = f"{model_type}/{mesh_name}"
        results["logits"][key] = timed(key, lambda: check_logits(model_type, mesh_name))  # noqa: B023
    results["generation"] = timed("generation", check_generation)
    results["errors"] = timed("errors", check_errors)
    results["hlo"] = timed("hlo", check_hlo)
    results["seconds"]["total"] = round(time.perf_counter() - start, 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
