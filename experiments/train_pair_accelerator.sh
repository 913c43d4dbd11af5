#!/bin/bash
# Trains the shipped pair on an accelerator host whose Python differs from this machine's
# (BUILD_NOTES, issue 13: "The pair trained on a GPU"). On this machine first:
#     python experiments/train_pair.py --save_corpus .corpus/stdlib.npz
# (this interpreter's standard library, tokenized with the shipped tokenizer, split as train_pair
# splits it), then on the host, from the repository root, with .corpus/ copied along:
#     OUT=/some/folder bash experiments/train_pair_accelerator.sh
# It trains the 8 x 384 target and the three 2 x 128 drafts on those tokens plus up to 150 MB of
# the host's site-packages source (training only), distils the GPT-2 draft (fkl, T = 1) and leaves
# tarballs of the folders in $OUT. As run on an H200 on 2026-11-30: ~8 min of training.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TF_CPP_MIN_LOG_LEVEL=2
PY=python3
SP=$($PY -c "import site;print(site.getsitepackages()[0])")
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
$PY -c "import jax,flax,optax,chex,transformers;print('versions', jax.__version__,flax.__version__,optax.__version__,transformers.__version__,jax.devices())"
echo "site-packages $SP: $(find $SP -name '*.py' | wc -l) .py files"
mkdir -p /tmp/sm /tmp/ck && cp -r checkpoints/* /tmp/sm/ && cp -r checkpoints/* /tmp/ck/
T0=$(date +%s)
$PY experiments/train_pair.py --out_dir /tmp/sm --corpus .corpus/stdlib.npz --extra_dirs $SP/absl --extra_max_mb 1 \
  --target_shape 2,64,2 --target_minutes 0.01 --min_steps 5 --batch_size 4 --models gpt2-target > /tmp/smoke.log 2>&1 \
  || { tail -40 /tmp/smoke.log; exit 1; }
echo "smoke ok in $(( $(date +%s) - T0 )) s"
$PY experiments/train_pair.py --out_dir /tmp/ck --corpus .corpus/stdlib.npz --extra_dirs $SP --extra_max_mb 150 \
  --target_shape 8,384,6 --draft_shape 2,128,4 --batch_size 64 --target_minutes 3 --draft_minutes 0.4 --target_lr 2e-3 \
  --models gpt2-target --models gpt2-draft 2>&1 | tee $OUT/train.log | grep -v "^.*step [0-9]*/" 
tar czf - -C /tmp/ck gpt2-target gpt2-draft training_summary.json | split -b 15m - $OUT/pair.tgz.
echo "pair saved at $(( $(date +%s) - T0 )) s"
$PY experiments/distill_draft.py --target_model /tmp/ck/gpt2-target --draft_model /tmp/ck/gpt2-draft \
  --out_dir /tmp/ck/gpt2-draft-distilled --corpus .corpus/stdlib.npz --minutes 1.5 --batch_size 64 --pool_size 1024 \
  --gen_batch 64 --eval_prompts 4 --eval_N 32 --eval_temperatures 0.6 2>&1 | tee $OUT/distill.log | tail -4
tar czf $OUT/distilled.tgz -C /tmp/ck gpt2-draft-distilled training_summary.json
echo "distilled saved at $(( $(date +%s) - T0 )) s"
$PY experiments/train_pair.py --out_dir /tmp/ck --corpus .corpus/stdlib.npz --extra_dirs $SP --extra_max_mb 150 \
  --target_shape 8,384,6 --draft_shape 2,128,4 --batch_size 64 --draft_minutes 0.4 \
  --models opt-draft --models llama-draft 2>&1 | tee $OUT/train2.log | grep -v "step [0-9]*/"
tar czf $OUT/final.tgz --exclude=gpt2-target/model.safetensors -C /tmp/ck gpt2-target gpt2-draft gpt2-draft-distilled \
  opt-draft llama-draft training_summary.json
echo "all done at $(( $(date +%s) - T0 )) s"
