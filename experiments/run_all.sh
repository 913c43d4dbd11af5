#!/usr/bin/env bash
# Regenerates every table of README.md's "Measured results" on the shipped pair, one script after another
# (one line per start/end in results/logs/run_all.log; each script's own log beside it). Keep the machine idle:
# the benchmarks time both methods interleaved, and other work on the cores widens their standard errors.
#   bash experiments/run_all.sh            # ~135 min on 2 CPU cores (the batch-1 sweep alone ~72)
#   bash experiments/run_all.sh compare ngram   # only the named steps
set -uo pipefail
export PYTHONUNBUFFERED=1  # each log shows its lines as they happen
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOG=results/logs/run_all.log
mkdir -p results/logs
declare -A STEPS=(
  [b1]="experiments/benchmark.py --batch_sizes 1 --temperatures 0,0.6 --K 2,3,4,5,6,8 --verify block --num_runs 353 --prompts_per_file 4 --repeats 2 --N 128 --out_dir results/benchmark_b1"
  [ab_cache]="experiments/ab_versions.py --baseline_commit a8dae95 --settings 0.6:0:1,0:0:1 --num_runs 16 --out_dir results/ab_cache"
  [compare]="experiments/compare.py --num_prompts 32 --output_json results/compare/compare.json"
  [compare_greedy]="experiments/compare.py --num_prompts 32 --temperature 0 --output_json results/compare/compare_greedy.json"
  [compare_tokenwise]="experiments/compare.py --num_prompts 32 --verify tokenwise --output_json results/compare/compare_tokenwise.json"
  [compare_topp]="experiments/compare.py --num_prompts 32 --top_p 0.9 --output_json results/compare/compare_topp.json"
  [sweep]="experiments/benchmark.py --mode sweep --K 2,4,6 --batch_sizes 1,4,16 --num_runs 4 --N 64"
  [acceptance]="experiments/benchmark.py --mode acceptance --out_dir results/acceptance"
  [ngram]="experiments/benchmark.py --mode ngram --out_dir results/ngram"
  [vs_transformers]="experiments/vs_transformers.py --output_json results/vs_transformers/vs_transformers.json"
  [quant]="experiments/quantization.py --out_dir results/quantization"
  [load_test]="experiments/load_test.py --requests 200 --concurrency 16 --max_tokens 64 --serve_flags=--max_batch=16,--max_prompt_tokens=32,--token_buckets=64"
  [drafting]="experiments/drafting.py --num_prompts 24 --temperatures 0,0.6,1 --methods chain:block:5,chain:tokenwise:6,chain:block:6,tree:traversal:2x2,tree:recursive:2x2,tree:traversal:2x1x1,tree:recursive:2x1x1,dynamic:block:6:0.4,dynamic:block:8:0.4,dynamic:block:8:0.6"
)
ORDER=(b1 ab_cache compare compare_greedy compare_tokenwise compare_topp acceptance ngram drafting vs_transformers quant load_test sweep)
[ $# -gt 0 ] && ORDER=("$@")
for step in "${ORDER[@]}"; do
  cmd="$PY ${STEPS[$step]}"
  echo "$(date +%T) start $step: $cmd" | tee -a "$LOG"
  $cmd > "results/logs/$step.log" 2>&1
  echo "$(date +%T) end $step rc=$?" | tee -a "$LOG"
done
echo "$(date +%T) all done" | tee -a "$LOG"
