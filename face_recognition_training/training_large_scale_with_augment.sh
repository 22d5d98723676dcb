#!/usr/bin/env bash
# The paper's FR run on one node: iResNet-50 (dropout 0.4) + CosFace (s=64, m=0.35) on 10,000
# identities x 50 images with RandAugment(4, 16), SGD at the original's global batch of 256
# (lr 0.1 x 256 / 512 = 0.05), reduce-on-plateau on the mean of the five benchmarks with early
# stopping. One process per visible GPU; resumes from <output_dir>/checkpoint.pt when restarted.
#
# Usage (paths relative to the current folder; the project root by convention):
#   face_recognition_training/training_large_scale_with_augment.sh <class-folder root> [more Hydra overrides]
# e.g. ... samples/unet-cond-ca-bs512-150K-cpd25/random_synthetic_uniform_15000 eval.bin_dir=data/fr_benchmarks
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 <class-folder root> [hydra overrides...]" >&2
  exit 2
fi
DATA_ROOT=$1
shift
PROJECT_ROOT=$(cd "$(dirname "$0")/.." && pwd)   # train_fr.py; relative paths stay relative to here
NPROC=${NPROC:-$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")}
GLOBAL_BATCH=256
if (( GLOBAL_BATCH % NPROC != 0 )); then
  echo "NPROC=$NPROC does not divide the global batch $GLOBAL_BATCH; set NPROC to 1, 2, 4 or 8" >&2
  exit 2
fi

torchrun --standalone --nproc_per_node="$NPROC" "$PROJECT_ROOT/train_fr.py" \
  data.root="$DATA_ROOT" data.width=10000 data.depth=50 data.augment=ra_4_16 \
  fr/backbone=iresnet50 fr/head=cosface fr/schedule=plateau \
  train.batch_size=$(( GLOBAL_BATCH / NPROC )) "$@"
