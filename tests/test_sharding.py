"""Tensor parallelism (`jaxspec.shard_model`) on 8 simulated CPU devices.

This process's jax already runs on one device, so the checks run once, in a
subprocess that starts jax with 8 (tests/_sharding_checks.py), and the tests
below assert on its JSON results. The one-device parts (specs, errors) run here.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

import jaxspec
from jaxspec.testing import random_model, tiny_config

pytestmark = pytest.mark.integration  # subprocess runs: the integration tier

CHECKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sharding_checks.py")


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, CHECKS], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_runs_on_eight_devices(results):
    assert results["device_count"] == 8


@pytest.mark.parametrize("case", ["gpt2/model4", "gpt2/data2_model4", "opt/data2_model4"])
def test_sharded_logits_equal_one_device(results, case):
    assert results["logits"][case]["max_abs_diff"] < 1e-5


@pytest.mark.parametrize("case", ["gpt2/model4", "gpt2/data2_model4", "opt/data2_model4"])
def test_params_and_cache_are_sharded(results, case):
    r = results["logits"][case]
    assert r["qkv_spec"] == ["None", "None", "model"]  # column-parallel, whole heads per device
    assert r["qkv_shard_shape"] == [2, 32, 3 * 32 // 4]
    assert r["fc_out_spec"] == ["None", "model", "None"]  # row-parallel
    assert r["embed_spec"] == []  # replicated
    data = "data" if case.endswith("data2_model4") else "None"
    assert r["cache_spec"] == ["None", data, "None", "model"]  # [L, B, S, H, Dh]: heads follow the params
    assert r["num_devices"] == (8 if data == "data" else 4)


def test_greedy_generation_equals_one_device(results):
    r = results["generation"]
    assert r["autoregressive"]
    assert r["speculative_draft_one_device"]
    assert r["speculative_draft_sharded"]
    # Both accept and reject drafts, so verification is exercised both ways.
    assert 0 < r["accepted"]["draft_sharded"] < r["drafted"]["draft_sharded"]


def test_indivisible_heads_error_in_subprocess(results):
    r = results["errors"]
    assert "num_heads" in r["bad_heads"] and "=6" in r["bad_heads"] and "size 4" in r["bad_heads"]
    assert r["replicated_heads_axis"] is None and r["replicated_all"]
    # Rows that do not split evenly over the data axis stay replicated over it.
    assert r["odd_batch_cache_spec"] == ["None", "None", "None", "model", "None"]


@pytest.mark.parametrize("model_type", ["gpt2", "opt"])
def test_decode_step_collectives(results, model_type):
    """Two all-reduces per layer (attention out, MLP out) and no other collective."""
    r = results["hlo"][model_type]
    assert r["per_layer"] == {
        "all-reduce": 2,
        "all-gather": 0,
        "reduce-scatter": 0,
        "all-to-all": 0,
        "collective-permute": 0,
    }
    assert sum(r["outside"].values()) == 0


def test_missing_mesh_axis_is_named():
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    model = random_model(tiny_config("gpt2", hidden_size=24, num_heads=6), 0)
    jaxspec.shard_model(model, mesh)  # a model axis of size 1 divides any head count
    with pytest.raises(ValueError, match="not 'tensor'"):
        jaxspec.shard_model(model, mesh, model_axis="tensor")


def test_rules_override_defaults():
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    model = random_model(tiny_config("opt"), 0)
    assert model.sharding is None
    rules = [(r"^embed/embedding$", PartitionSpec("model", None))]
    sharded = jaxspec.shard_model(model, mesh, rules, data_axis="data")
    assert sharded.params["embed"]["embedding"].sharding.spec == PartitionSpec("model", None)
    assert sharded.params["blocks"]["fc_in"]["kernel"].sharding.spec == PartitionSpec(None, None, "model")
    assert sharded.sharding == jaxspec.ModelSharding(sharded.sharding.mesh, "model", "data")
    with pytest.raises(ValueError, match="more axes"):
        jaxspec.shard_model(model, mesh, [(r"ln_final/scale", PartitionSpec(None, "model"))])
    cache = sharded.init_cache(2, 8)
    assert cache.keys.sharding.spec == PartitionSpec(None, "data", None, "model", None)


def test_quantized_model_shards():
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    model = jaxspec.quantize_model(random_model(tiny_config("gpt2"), 0), min_size=0)
    sharded = jaxspec.shard_model(model, mesh)
    qkv = sharded.params["blocks"]["qkv"]["kernel"]
    assert qkv.values.sharding.spec == PartitionSpec(None, None, "model")
    assert qkv.scale.sharding.spec == PartitionSpec(None, "model")


def test_load_model_with_mesh():
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "gpt2_tiny")
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1), ("model",))
    model = jaxspec.load_model(folder, mesh=mesh)
    assert model.sharding is not None and model.sharding.model_axis == "model"
    assert model.params["blocks"]["attn_out"]["kernel"].sharding.spec == PartitionSpec(None, "model", None)
