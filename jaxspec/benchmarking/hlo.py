"""Which collectives one sharded decode step compiles to.

Builds a GPT-2 or OPT config with abstract weights (no memory:
`jax.ShapeDtypeStruct`s carrying the `shard_model` shardings), lowers and
compiles one cached decode step (B rows x 1 token) of the tensor-parallel
model, and counts the collectives in the compiled HLO: inside the layer loop
(the decoder scans over layers, so its body is one layer) and outside it.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxspec.benchmarking.sizes import sized_config
from jaxspec.models.cache import KVCache
from jaxspec.models.config import DecoderConfig
from jaxspec.models.model import Model, abstract_params
from jaxspec.sharding import shard_model

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def hlo_computations(hlo: str) -> dict[str, list[str]]:
    """Splits HLO text into {computation name: instruction lines}."""
    computations: dict[str, list[str]] = {}
    current = None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if header and not line.startswith(" "):
            current = ("ENTRY " if line.startswith("ENTRY") else "") + header.group(1)
            computations[current] = []
        elif current is not None and line.startswith(" "):
            computations[current].append(line)
    return computations


def count_collectives(lines: list[str]) -> dict[str, int]:
    """Collective ops among HLO instruction lines (an async -start/-done pair counts once)."""
    counts = dict.fromkeys(COLLECTIVES, 0)
    for line in lines:
        match = re.search(r"\s(" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
        if match:
            counts[match.group(1)] += 1
    return counts


def collectives_by_loop(hlo: str) -> dict:
    """Collective counts of the compiled HLO: per while-loop body (with its trip count) and elsewhere.

    Returns:
      {"loops": [{"body", "trip_count", "counts"}], "outside": counts, "total_executed": counts}
    """
    computations = hlo_computations(hlo)
    loops = []
    for lines in computations.values():
        for line in lines:
            match = re.search(r"\swhile\(.*body=%?([\w.\-]+)", line)
            if match:
                trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
                loops.append(dict(body=match.group(1), trip_count=int(trip.group(1)) if trip else None))
    bodies = {loop["body"] for loop in loops}
    for loop in loops:
        loop["counts"] = count_collectives(computations.get(loop["body"], []))
    outside = count_collectives([line for name, lines in computations.items() if name not in bodies for line in lines])
    total = dict(outside)
    for loop in loops:
        for op, n in loop["counts"].items():
            total[op] += n * (loop["trip_count"] or 1)
    return dict(loops=loops, outside=outside, total_executed=total)


def decode_step_hlo(config: DecoderConfig, mesh: Mesh, *, batch: int, cache_length: int, data_axis: str | None) -> str:
    """Compiled HLO text of one sharded decode step (B x 1 token, cache of `cache_length` slots)."""
    abstract = Model(params=abstract_params(config), config=config)
    model = shard_model(abstract, mesh, data_axis=data_axis)
    spec = model.sharding.cache_spec(batch)
    kv_shape = (config.num_layers, batch, cache_length, config.num_heads, config.head_dim)
    sds = lambda shape, dtype, s: jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(model.sharding.mesh, s))
    cache = KVCache(
        keys=sds(kv_shape, jnp.float32, spec.keys),
        values=sds(kv_shape, jnp.float32, spec.values),
        lengths=sds((batch,), jnp.int32, spec.lengths),
    )
    tokens = sds((batch, 1), jnp.int32, PartitionSpec(spec.lengths[0] if len(spec.lengths) else None))
    step = jax.jit(lambda m, t, c: m(t, c), donate_argnums=2)
    return step.lower(model, tokens, cache).compile().as_text()


def make_mesh(shape: str, devices=None) -> tuple[Mesh, str | None]:
    """A ``DATAxMODEL`` string -> (mesh with axes ("data", "model"), data axis or None)."""
    data, model = (int(x) for x in shape.lower().split("x"))
    devices = np.asarray(devices if devices is not None else jax.devices()[: data * model]).reshape(data, model)
    return Mesh(devices, ("data", "model")), ("data" if data > 1 else None)


def report(config_name: str, mesh_shape: str, batch: int, cache_length: int) -> dict:
    """The collectives of one decode step of the named size (`sizes.HF_SIZES` or `sizes.TINY_SIZES`) on a mesh."""
    config = sized_config(config_name)
    mesh, data_axis = make_mesh(mesh_shape)
    hlo = decode_step_hlo(config, mesh, batch=batch, cache_length=cache_length, data_axis=data_axis)
    result = collectives_by_loop(hlo)
    layer_loops = [loop for loop in result["loops"] if loop["trip_count"] == config.num_layers]
    return dict(
        config=config_name,
        mesh=mesh_shape,
        num_layers=config.num_layers,
        per_layer=layer_loops[0]["counts"] if layer_loops else None,
        **result,
    )
