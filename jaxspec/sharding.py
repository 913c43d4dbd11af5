"""Tensor parallelism over a `jax.sharding.Mesh`, with XLA SPMD as the engine.

`shard_model` places a `Model`'s params with `NamedSharding`s, Megatron-style:

- attention: the fused ``qkv`` projection is column-parallel (its 3D output
  features split by head) and ``attn_out`` row-parallel (its D input features
  split by head), so each device attends over its own heads;
- MLP: ``fc_in`` column-parallel, ``fc_out`` row-parallel (hidden units split);
- replicated: token and position embeddings (so the tied LM head and the
  logits are replicated), LayerNorms, the biases of the row-parallel layers,
  OPT's ``project_in`` / ``project_out`` and an untied ``lm_head``.

Llama family (Llama, Mistral, Qwen2; separate ``q`` / ``k`` / ``v`` and a
SwiGLU MLP): ``q``, ``fc_gate`` and ``fc_in`` are column-parallel, ``attn_out``
and ``fc_out`` row-parallel, as above. The grouped-query KV heads follow one
rule: **K KV heads are split over a model axis of size n when n divides K,
and replicated otherwise.** Split (e.g. K = 8 on n = 4 or 8), device d holds
KV heads d*K/n .. (d+1)*K/n - 1 and exactly the query heads that read them,
so attention needs no communication and the cache is sharded over its KV
heads. Replicated (e.g. K = 2 on n = 4, or multi-query K = 1), every device
computes all K KV heads (the k/v projections are small) and keeps the whole
cache, while the query heads (which n must divide) stay split; that trades
K/n-fold cache memory per device for no extra collectives. `ModelSharding`'s
``model_axis`` is None in that case (the cache is not split over heads).

Layer params are stacked on a leading layer axis (the decoder scans over
layers), so every spec starts with ``None`` for it. The fused qkv kernel
[L, D, 3D] is stored head-major (output features ordered head, q/k/v, head
dim; see `jaxspec.models.hf_params`), so splitting its last axis into n
contiguous blocks gives each device whole heads of q, k and v.

Nothing else changes: the same jitted `speculative_sample` and
`autoregressive_sample` run on the sharded model. XLA's SPMD partitioner
propagates the param shardings through the program and inserts the
collectives; one decode step does one all-reduce after each row-parallel
matmul (attention out, MLP out), i.e. two per layer. The `Model` carries a
static `ModelSharding`, which `Model.init_cache` uses to shard the KV cache
[L, B, S, H, Dh] over heads (and rows over an optional data axis), so cache
reads and writes stay local to the device owning the head.

Rules are ``(regex, PartitionSpec)`` pairs matched (``re.search``) against a
param's path, e.g. ``"blocks/qkv/kernel"``; the first match wins. Caller rules
are tried before `default_rules`. Quantized kernels
(`jaxspec.models.quantize.QuantizedKernel`) have paths ending in
``kernel/values`` and ``kernel/scale`` and are covered by the defaults.

Multi-host: call ``jax.distributed.initialize()`` in every process first, then
build one global mesh over ``jax.devices()`` (all hosts' devices, e.g.
``Mesh(np.array(jax.devices()).reshape(hosts, -1), ("data", "model"))``, so
the model axis stays within a host's fast interconnect) and call
`shard_model` / ``load_model(..., mesh=mesh)`` with the same arguments in
every process. No code path differs: params are placed with
``jax.make_array_from_callback``, which each process answers for its own
devices from its own copy of the weights, and the generation loops are the
same single SPMD program on every host.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxspec.models.cache import KVCache
from jaxspec.models.config import SUPPORTED_MODEL_TYPES, DecoderConfig
from jaxspec.models.model import Model

Rules = Sequence[tuple[str, PartitionSpec]]


@dataclasses.dataclass(frozen=True)
class ModelSharding:
    """How a sharded `Model` is laid out on a mesh (static and hashable).

    Attributes:
      mesh: the device mesh (Auto axis types, so XLA propagates shardings).
      model_axis: mesh axis the cache's (key/value) heads are split over (None:
        replicated, e.g. a draft replicated with rules, or Llama-family KV heads
        that the axis size does not divide).
      data_axis: optional mesh axis the batch rows of caches are split over.
    """

    mesh: Mesh
    model_axis: str | None = "model"
    data_axis: str | None = None

    def cache_spec(self, batch_size: int) -> KVCache:
        """PartitionSpecs of a cache of `batch_size` rows (a `KVCache` of specs).

        Rows are split over the data axis only when it divides `batch_size`;
        otherwise they are replicated over it.
        """
        data = self.data_axis
        if data is not None and batch_size % self.mesh.shape[data]:
            data = None
        kv = PartitionSpec(None, data, None, self.model_axis, None)
        return KVCache(keys=kv, values=kv, lengths=PartitionSpec(data))

    def constrain_cache(self, cache: KVCache) -> KVCache:
        """`cache` with sharding constraints: heads on the model axis, rows on the data axis."""
        spec = self.cache_spec(cache.batch_size)
        put = lambda x, s: jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, s))  # noqa: E731
        return KVCache(
            keys=put(cache.keys, spec.keys),
            values=put(cache.values, spec.values),
            lengths=put(cache.lengths, spec.lengths),
        )


def default_rules(
    model_type: str = "gpt2", model_axis: str = "model", *, split_kv_heads: bool = True
) -> tuple[tuple[str, PartitionSpec], ...]:
    """The Megatron-style rules (one table: the families' param names do not collide).

    Args:
      model_type: one of `SUPPORTED_MODEL_TYPES`.
      model_axis: the mesh axis name to shard over.
      split_kv_heads: Llama family: split the ``k`` / ``v`` projections (and so
        the cache) over the axis; `shard_model` passes whether the axis size
        divides the KV head count. False replicates them.
    """
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"no default sharding rules for model_type={model_type!r}; pass rules=.")
    m = model_axis
    kv = m if split_kv_heads else None
    return (
        # Column-parallel [L, in, out]: output features (heads / hidden units) split.
        (r"^blocks/(qkv|q|fc_gate|fc_in)/kernel(/values)?$", PartitionSpec(None, None, m)),
        (r"^blocks/(qkv|q|fc_gate|fc_in)/(bias|kernel/scale)$", PartitionSpec(None, m)),
        # Llama-family KV heads: split where the axis size divides them, else replicated.
        (r"^blocks/(k|v)/kernel(/values)?$", PartitionSpec(None, None, kv)),
        (r"^blocks/(k|v)/(bias|kernel/scale)$", PartitionSpec(None, kv)),
        # Row-parallel [L, in, out]: input features split; the partial sums are all-reduced.
        (r"^blocks/(attn_out|fc_out)/kernel(/values)?$", PartitionSpec(None, m, None)),
        # Everything else (embeddings, LayerNorms, row-parallel biases and scales,
        # project_in/out, lm_head) is replicated.
        (r".*", PartitionSpec()),
    )


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _sharded_over(spec: PartitionSpec, axis: str) -> bool:
    return any(axis == a or (isinstance(a, tuple) and axis in a) for a in spec)


def _kernel_spec(specs: Any, module: str) -> PartitionSpec:
    """The spec of a block kernel (of its int8 values if quantized)."""
    kernel = specs["blocks"][module]["kernel"]
    return kernel if isinstance(kernel, PartitionSpec) else kernel.values


def _heads_module(config: DecoderConfig, kv: bool = False) -> str:
    """The block module whose output features are the (query / key-value) heads."""
    if not config.is_llama_family:
        return "qkv"
    return "k" if kv else "q"


def _check_divisible(config: DecoderConfig, mesh: Mesh, model_axis: str, specs: Any) -> None:
    """Whole heads and equal MLP shares per device, or a ValueError that says how to get them."""
    size = mesh.shape[model_axis]
    checks = (
        ("num_heads (attention heads)", config.num_heads, _heads_module(config)),
        ("num_key_value_heads", config.num_kv_heads, _heads_module(config, kv=True)),
        ("ffn_size (MLP width)", config.ffn_size, "fc_in"),
    )
    for what, count, module in checks:
        if count % size and _sharded_over(_kernel_spec(specs, module), model_axis):
            divisors = [d for d in range(1, count + 1) if count % d == 0 and d <= mesh.size]
            raise ValueError(
                f"{what}={count} is not divisible by the size {size} of mesh axis {model_axis!r}: tensor "
                f"parallelism gives each device whole heads and an equal share of the MLP. Use a mesh whose "
                f"{model_axis!r} axis size divides {count} (one of {divisors}) and put the other devices on a "
                "data axis, or load this model unsharded."
            )


def _auto_mesh(mesh: Mesh) -> Mesh:
    """`mesh` with Auto axis types: the decoder relies on XLA's sharding propagation."""
    auto = jax.sharding.AxisType.Auto
    if all(t == auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(auto,) * len(mesh.axis_names))


def param_specs(
    model: Model, rules: Rules | None = None, *, model_axis: str = "model", mesh: Mesh | None = None
) -> Any:
    """The PartitionSpec of every param of `model` (a pytree like `model.params`).

    With `mesh`, Llama-family KV heads are split only if the size of
    `model_axis` divides their count (see the module docstring); without it,
    they are split.
    """
    cfg = model.config
    split_kv = mesh is None or model_axis not in mesh.shape or cfg.num_kv_heads % mesh.shape[model_axis] == 0
    table = [*(rules or ()), *default_rules(cfg.model_type, model_axis, split_kv_heads=split_kv)]
    compiled = [(re.compile(pattern), spec) for pattern, spec in table]

    def spec_of(path, leaf):
        name = _path_str(path)
        spec = next(spec for pattern, spec in compiled if pattern.search(name))
        if len(spec) > len(leaf.shape):
            raise ValueError(f"sharding rule {spec} has more axes than param {name} of shape {tuple(leaf.shape)}.")
        return spec

    return jax.tree_util.tree_map_with_path(spec_of, model.params)


def _place(name: str, x: Any, sharding: NamedSharding) -> Any:
    for dim, axes in zip(x.shape, sharding.spec):
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        parts = int(np.prod([sharding.mesh.shape[a] for a in axes]))
        if dim % parts:
            raise ValueError(
                f"param {name} of shape {tuple(x.shape)} cannot take spec {sharding.spec}: "
                f"a dimension of {dim} does not split into {parts} equal parts."
            )
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    # One path for one host and many: each process fills its own devices' shards.
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_model(
    model: Model,
    mesh: Mesh,
    rules: Rules | None = None,
    *,
    model_axis: str = "model",
    data_axis: str | None = None,
) -> Model:
    """`model` with its params tensor-parallel over `mesh` (Megatron-style).

    Args:
      model: a `Model` on one device, or with `jax.ShapeDtypeStruct` params
        (then the result has ShapeDtypeStructs carrying shardings: enough to
        `.lower()` and compile without allocating weights).
      mesh: the device mesh; must have `model_axis` (and `data_axis` if given).
        Explicit axis types are turned into Auto ones.
      rules: optional ``(regex, PartitionSpec)`` pairs tried before the
        defaults (`default_rules`); the first whose regex `re.search`-matches a
        param's path (``"blocks/fc_in/kernel"``) gives its spec.
      model_axis: the mesh axis heads and MLP hidden units are split over.
      data_axis: an optional mesh axis for batch rows: params are replicated
        over it and caches made by `Model.init_cache` split their rows over it.

    Returns:
      The same model with placed params and `sharding` set; pass it to the
      generation functions as is.

    Raises:
      ValueError: a missing mesh axis, a (query) head count or MLP width that
        the model axis size does not divide (Llama-family KV heads it does not
        divide are replicated instead), or a rule that does not fit a param.
    """
    for axis in (model_axis, data_axis):
        if axis is not None and axis not in mesh.axis_names:
            raise ValueError(f"mesh has axes {mesh.axis_names}, not {axis!r}; pass model_axis=/data_axis= to match.")
    if model_axis == data_axis:
        raise ValueError(f"model_axis and data_axis must differ, both are {model_axis!r}.")
    specs = param_specs(model, rules, model_axis=model_axis, mesh=mesh)
    _check_divisible(model.config, mesh, model_axis, specs)
    mesh = _auto_mesh(mesh)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x, spec: _place(_path_str(path), x, NamedSharding(mesh, spec)), model.params, specs
    )
    kv_module = _heads_module(model.config, kv=True)
    heads_axis = model_axis if _sharded_over(_kernel_spec(specs, kv_module), model_axis) else None
    return model.replace(params=params, sharding=ModelSharding(mesh, heads_axis, data_axis))
