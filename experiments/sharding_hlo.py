"""Which collectives one sharded decode step compiles to.

Builds a Hugging Face-sized GPT-2 or OPT config with abstract weights (no
memory: `jax.ShapeDtypeStruct`s carrying the `shard_model` shardings), lowers
and compiles one cached decode step (B rows x 1 token) of the tensor-parallel
model, and counts the collectives in the compiled HLO: inside the layer loop
(the decoder scans over layers, so its body is one layer) and outside it.
On a CPU host the devices are simulated (--devices sets
``--xla_force_host_platform_device_count`` before jax is imported). The
analysis is `jaxspec.benchmarking.hlo`.

    python experiments/sharding_hlo.py --model_type gpt2 --config gpt2 --devices 8 --mesh 1x8
    python experiments/sharding_hlo.py --model_type opt --config opt-125m --mesh 2x4 --batch 2
"""

from __future__ import annotations

import os
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
from absl import app, flags  # noqa: E402

from jaxspec.benchmarking import hlo  # noqa: E402
from jaxspec.benchmarking.sizes import HF_SIZES, TINY_SIZES  # noqa: E402

# The Hugging Face architectures of the other size modes, plus tiny ones for tests.
SIZES = {**TINY_SIZES, **HF_SIZES}

if __name__ == "__main__":
    MODEL_TYPE = flags.DEFINE_enum("model_type", "gpt2", ["gpt2", "opt"], "Architecture family.")
    CONFIG = flags.DEFINE_string("config", "gpt2", f"A size: tiny or one of {', '.join(SIZES)}.")
    flags.DEFINE_integer("devices", 8, "Simulated CPU devices (read before jax starts).")
    MESH = flags.DEFINE_string("mesh", "1x8", "DATAxMODEL mesh shape.")
    BATCH = flags.DEFINE_integer("batch", 1, "Rows of the decode step.")
    CACHE = flags.DEFINE_integer("cache_length", 64, "Cache slots.")

    def main(argv):
        del argv
        name = f"tiny-{MODEL_TYPE.value}" if CONFIG.value == "tiny" else CONFIG.value
        if name not in SIZES or SIZES[name]["model_type"] != MODEL_TYPE.value:
            raise app.UsageError(f"--config={CONFIG.value} is not a {MODEL_TYPE.value} config; known: {list(SIZES)}")
        try:
            out = hlo.report(name, MESH.value, BATCH.value, CACHE.value)
        except ValueError as err:  # e.g. a head count the model axis does not divide
            raise app.UsageError(str(err)) from err
        print(f"{name} on mesh data x model = {MESH.value} ({jax.device_count()} {jax.devices()[0].platform} devices)")
        print(f"per layer (scan body, x{out['num_layers']}): {out['per_layer']}")
        print(f"outside the layer loop: {out['outside']}")
        print(f"total executed per decode step: {out['total_executed']}")

    app.run(main)
