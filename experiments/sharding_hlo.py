"""Which collectives one sharded decode step compiles to.

Builds a Hugging Face-sized GPT-2 or OPT config with abstract weights (no
memory: `jax.ShapeDtypeStruct`s carrying the `shard_model` shardings), lowers
and compiles one cached decode step (B rows x 1 token) of the tensor-parallel
model, and counts the collectives in the compiled HLO: inside the layer loop
(the decoder scans over layers, so its body is one layer) and outside it.
On a CPU host the devices are simulated (--devices sets
``--xla_force_host_platform_device_count`` before jax is imported).

    python experiments/sharding_hlo.py --model_type gpt2 --config gpt2 --devices 8 --mesh 1x8
    python experiments/sharding_hlo.py --model_type opt --config opt-125m --mesh 2x4 --batch 2
"""

from __future__ import annotations

import os
import re
import sys


def _flag_value(name: str, default: str) -> str:
    for i, arg in enumerate(sys.argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
    return default


if __name__ == "__main__":
    # Must happen before jax is imported: the device count is fixed at backend start.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_flag_value('devices', '8')}"
    )

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import jaxspec  # noqa: E402
from jaxspec.models.cache import KVCache  # noqa: E402
from jaxspec.models.config import DecoderConfig  # noqa: E402
from jaxspec.models.model import Model, abstract_params  # noqa: E402

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

# The Hugging Face architectures of the other size modes (harness.HF_SIZES), plus tiny ones for tests.
HF_SIZES = {
    "tiny-gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=8, vocab_size=64, n_positions=64),
    "tiny-opt": dict(
        model_type="opt",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=8,
        ffn_dim=64,
        word_embed_proj_dim=32,
        vocab_size=64,
        max_position_embeddings=64,
    ),
    **harness.HF_SIZES,
}


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
    model = jaxspec.shard_model(abstract, mesh, data_axis=data_axis)
    spec = model.sharding.cache_spec(batch)
    kv_shape = (config.num_layers, batch, cache_length, config.num_heads, config.head_dim)
    sds = lambda shape, dtype, s: jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(model.sharding.mesh, s))  # noqa: E731
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
    config = DecoderConfig.from_hf_config(dict(HF_SIZES[config_name]))
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


if __name__ == "__main__":
    MODEL_TYPE = flags.DEFINE_enum("model_type", "gpt2", ["gpt2", "opt"], "Architecture family.")
    CONFIG = flags.DEFINE_string("config", "gpt2", f"A size: tiny or one of {', '.join(HF_SIZES)}.")
    flags.DEFINE_integer("devices", 8, "Simulated CPU devices (read before jax starts).")
    MESH = flags.DEFINE_string("mesh", "1x8", "DATAxMODEL mesh shape.")
    BATCH = flags.DEFINE_integer("batch", 1, "Rows of the decode step.")
    CACHE = flags.DEFINE_integer("cache_length", 64, "Cache slots.")

    def main(argv):
        del argv
        name = f"tiny-{MODEL_TYPE.value}" if CONFIG.value == "tiny" else CONFIG.value
        if name not in HF_SIZES or HF_SIZES[name]["model_type"] != MODEL_TYPE.value:
            raise app.UsageError(f"--config={CONFIG.value} is not a {MODEL_TYPE.value} config; known: {list(HF_SIZES)}")
        try:
            out = report(name, MESH.value, BATCH.value, CACHE.value)
        except ValueError as err:  # e.g. a head count the model axis does not divide
            raise app.UsageError(str(err)) from err
        print(f"{name} on mesh data x model = {MESH.value} ({jax.device_count()} {jax.devices()[0].platform} devices)")
        print(f"per layer (scan body, x{out['num_layers']}): {out['per_layer']}")
        print(f"outside the layer loop: {out['outside']}")
        print(f"total executed per decode step: {out['total_executed']}")

    app.run(main)
