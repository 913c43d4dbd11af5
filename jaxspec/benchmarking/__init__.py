"""Measuring speculative sampling: timing, the cost model, metrics, held-out prompts, tables.

What the experiment scripts (experiments/*.py) measure lives here, so that a
test or a researcher imports it instead of a script; the scripts keep only
their flags. Not part of `import jaxspec`: import `jaxspec.benchmarking`
explicitly. Optional dependencies are imported on use (matplotlib in `plots`,
torch in `peers`).

Building blocks:
  timing: `time_interleaved` (methods interleaved run by run), `best_seconds`, `mean_std`.
  metrics: every reported figure, defined once (`acceptance_summary`, `paired_speedup`, ...).
  costs: per-call costs of the loops and the speedup they predict (`LoopCosts`).
  prompts: `heldout_prompts` (files the shipped pair never trained on), `ngram_prompt_sets`.
  sizes: Hugging Face architectures for random-weight measurements.
  configs: `from_flags`, a config dataclass filled from the flags of its field names.
  tables, provenance, logs: text output (tables, JSON/CSV files, marked tokens, one line per event).

Experiments (a frozen config dataclass in, a report dict out):
  sweeps: `run_benchmark` (sweep, ngram, size, acceptance and settings modes); plots: its figures.
  comparison: `compare`; quantization: `measure`; peers: against transformers (`run_peers`).
  load_test: a client load test of the HTTP server; hlo: collectives of a sharded decode step.
  readme: the README's tables rendered from the results the scripts wrote.
"""

from jaxspec.benchmarking.configs import from_flags
from jaxspec.benchmarking.costs import (
    LoopCosts,
    call_cost_ms,
    call_loop,
    loop_costs,
    loop_overheads,
    model_costs,
    prefill_cost_ms,
    tokens_per_round_tokenwise,
)
from jaxspec.benchmarking.logs import log, quiet_logs
from jaxspec.benchmarking.metrics import (
    acceptance_by_position,
    acceptance_summary,
    accepted_per_round_by_row,
    paired_difference,
    paired_speedup,
    percentile,
    token_agreement,
)
from jaxspec.benchmarking.prompts import DEFAULT_PROMPT, heldout_prompts, ngram_prompt_sets
from jaxspec.benchmarking.provenance import LEGEND_COLOR, LEGEND_PLAIN, render_provenance
from jaxspec.benchmarking.sizes import HF_SIZES, TINY_SIZES, sized_config
from jaxspec.benchmarking.tables import format_floats, format_table, markdown_table, write_csv, write_json
from jaxspec.benchmarking.timing import best_seconds, mean_std, time_interleaved

__all__ = [
    "DEFAULT_PROMPT",
    "HF_SIZES",
    "LEGEND_COLOR",
    "LEGEND_PLAIN",
    "TINY_SIZES",
    "LoopCosts",
    "acceptance_by_position",
    "acceptance_summary",
    "accepted_per_round_by_row",
    "best_seconds",
    "call_cost_ms",
    "call_loop",
    "format_floats",
    "format_table",
    "from_flags",
    "heldout_prompts",
    "log",
    "loop_costs",
    "loop_overheads",
    "markdown_table",
    "mean_std",
    "model_costs",
    "ngram_prompt_sets",
    "paired_difference",
    "paired_speedup",
    "percentile",
    "prefill_cost_ms",
    "quiet_logs",
    "render_provenance",
    "sized_config",
    "time_interleaved",
    "token_agreement",
    "tokens_per_round_tokenwise",
    "write_csv",
    "write_json",
]
