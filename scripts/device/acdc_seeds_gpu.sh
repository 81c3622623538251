#!/bin/bash
# Seeds of the CPU-scale ACDC protocol on the device's GPU, in one call: many (trainer, labeled, seed)
# trainings at once, each predicted (student and, for EMA trainers, teacher) and evaluated on the val volumes.
# The CPU protocol's preprocessed data travels as a tarball (no conversion or planning on the device), so every
# row trains on exactly the data of the CPU rows (docs/results.md); only the hardware (and so the numerics) differs.
#
# Here, once (PRE: the CPU protocol's preprocessed dataset; RAW: its raw folder with imagesTs / labelsTs):
#   bash scripts/device/acdc_seeds_gpu.sh --pack --pre /work/exp/pre/Dataset027_ACDC_SSL \
#       --raw /work/exp/raw/Dataset027_ACDC_SSL --splits1 /work/exp/pre1/Dataset027_ACDC_SSL/splits_final.json
#   -> .dev/sweep/{pre2d.tar.xz, small.tar.gz}
# Device call 1 (carry .dev/stage.sh .dev/site312.tar.xz .dev/acdc.part0): bash .dev/stage.sh deps
# Device call 2 (carry .dev/sweep): source /tmp/env.sh && bash scripts/device/acdc_seeds_gpu.sh --jobs FILE
# JOBS FILE: one job per line, "TAG TRAINER LABELED(1|3) SEED", run in this order, at most
# --parallel at a time; a job not finished by the deadline is stopped and reported as such. TRAINER
# SelfTraining runs offline self-training (plain nnU-Net, pseudo-labels of the unlabeled cases, plain again).
# Options: --budget_s S [560] whole script   --parallel P [9]   --n_proc_da K [2]   --epochs E [20]
#          --iterations I [50]   --device cuda|cpu [cuda]   --out DIR [$OUT]   --work DIR [/tmp/sweep]
#          --src DIR [.dev/sweep] where --pack writes the tarballs and a run reads them
set -u -o pipefail
T0=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
BUDGET_S=560 PARALLEL=9 N_PROC_DA=2 EPOCHS=20 ITERATIONS=50 DEVICE=cuda OUTDIR=${OUT:-/tmp/sweep_out}
WORK=/tmp/sweep JOBS= PACK=0 PRE= RAW= SPLITS1= SRC=$ROOT/.dev/sweep
while [ $# -gt 0 ]; do
  case "$1" in
    --budget_s) BUDGET_S=$2; shift ;;  --parallel) PARALLEL=$2; shift ;;  --n_proc_da) N_PROC_DA=$2; shift ;;
    --epochs) EPOCHS=$2; shift ;;      --iterations) ITERATIONS=$2; shift ;;  --device) DEVICE=$2; shift ;;
    --out) OUTDIR=$2; shift ;;         --work) WORK=$2; shift ;;          --jobs) JOBS=$2; shift ;;
    --pack) PACK=1 ;;                  --pre) PRE=$2; shift ;;            --raw) RAW=$2; shift ;;
    --splits1) SPLITS1=$2; shift ;;    --src) SRC=$2; shift ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$PACK" = 1 ]; then  # here: the two tarballs the device call carries
  [ -d "$PRE/nnUNetPlans_2d" ] && [ -f "$PRE/nnUNetPlans_b8.json" ] && [ -d "$RAW/imagesTs" ] && [ -f "$SPLITS1" ] \
    || { echo "--pack needs --pre (with nnUNetPlans_2d, nnUNetPlans_b8.json), --raw (imagesTs, labelsTs), --splits1" >&2; exit 2; }
  mkdir -p "$SRC" && rm -rf "$SRC/stage" && mkdir -p "$SRC/stage/pre" "$SRC/stage/raw"
  cp "$PRE"/*.json "$SRC/stage/pre/" && cp "$SPLITS1" "$SRC/stage/splits_final_1labeled.json"
  cp -r "$RAW/imagesTs" "$RAW/labelsTs" "$RAW/dataset.json" "$SRC/stage/raw/"
  tar -czf "$SRC/small.tar.gz" -C "$SRC/stage" . && rm -rf "$SRC/stage"
  tar -cf - -C "$PRE" nnUNetPlans_2d | xz -T0 -3 > "$SRC/pre2d.tar.xz"
  ls -la "$SRC"; exit 0
fi

[ -f "$JOBS" ] || { echo "--jobs FILE is required (lines: TAG TRAINER LABELED SEED; a configuration is a trainer variant class)" >&2; exit 2; }
mkdir -p "$OUTDIR" "$WORK/logs"
LOG="$OUTDIR/sweep_log.txt"
say() { echo "[sweep $(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 nnUNet_compile=f OMP_NUM_THREADS=1
export nnUNet_extTrainer="$ROOT/nnunet_mona/ext_trainers" nnUNet_n_proc_DA=$N_PROC_DA
export nnUNet_mona_epochs=$EPOCHS nnUNet_mona_iterations=$ITERATIONS nnUNet_mona_val_iterations=5
export nnUNet_mona_skip_validation=1

# 1. data: the CPU protocol's preprocessed dataset (3 labeled: splits_final.json) and a 1-labeled twin
D=Dataset027_ACDC_SSL
if [ ! -d "$WORK/pre3/$D/nnUNetPlans_2d" ]; then
  mkdir -p "$WORK/pre3/$D" "$WORK/pre1/$D" "$WORK/raw/$D" "$WORK/small"
  tar -xzf "$SRC/small.tar.gz" -C "$WORK/small" || { say "FAILED: unpacking small.tar.gz"; exit 1; }
  xz -dc "$SRC/pre2d.tar.xz" | tar -xf - -C "$WORK/pre3/$D" || { say "FAILED: unpacking pre2d.tar.xz"; exit 1; }
  cp "$WORK"/small/pre/*.json "$WORK/pre3/$D/"
  cp -r "$WORK"/small/raw/* "$WORK/raw/$D/"
  for f in dataset.json dataset_fingerprint.json nnUNetPlans.json nnUNetPlans_b8.json nnUNetPlans_2d; do
    ln -s "$WORK/pre3/$D/$f" "$WORK/pre1/$D/$f"; done
  cp "$WORK/small/splits_final_1labeled.json" "$WORK/pre1/$D/splits_final.json"
fi
say "data ready: $(ls "$WORK/pre3/$D/nnUNetPlans_2d" | wc -l) preprocessed files, $(ls "$WORK/raw/$D/imagesTs" | wc -l) val volumes"
if [ "$DEVICE" = cuda ]; then
  # in a subshell: not one of this shell's jobs, which count the running trainings
  ( nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 10 > "$OUTDIR/gpu_util.csv" 2>&1 & )
fi

# 2. trainings, in the jobs file's order, at most PARALLEL at once, all stopped at the deadline
TRAIN_DEADLINE=$(( BUDGET_S - 75 ))  # leave time to predict and evaluate what finished
until_deadline() { echo $(( TRAIN_DEADLINE - ($(date +%s) - T0) )); }
train_one() {  # PREPROCESSED RESULTS TRAINER SEED LOG
  nnUNet_preprocessed=$1 nnUNet_results=$2 nnUNet_mona_seed=$4 \
    timeout -k 5 "$(until_deadline)" \
    nnUNetv2_train 27 2d 0 -tr "$3" -p nnUNetPlans_b8 -device "$DEVICE" >> "$5" 2>&1
}
# TRAINER SelfTraining = offline self-training (nnU-Net's maintainers' advice): plain nnU-Net, pseudo-labels of
# the fold's unlabeled cases (nnunet_mona.benchmark.self_training), plain nnU-Net again on labeled + pseudo-labeled
real_trainer() { [ "$1" = SelfTraining ] && echo nnUNetTrainerBudget || echo "$1"; }
train_job() {  # TAG TRAINER LABELED SEED
  local tag=$1 tr=$2 n=$3 seed=$4
  local s=$(date +%s) log=$WORK/logs/$1.train.log rc
  if [ "$tr" = SelfTraining ]; then
    train_one "$WORK/pre$n" "$WORK/res/${tag}_plain" nnUNetTrainerBudget "$seed" "$log" \
    && nnUNet_results=$WORK/res/${tag}_plain timeout -k 5 "$(until_deadline)" $PYTHON -m \
      nnunet_mona.benchmark.self_training --source "$WORK/pre$n/$D" --target "$WORK/pre_st_$tag/$D" \
      --model "$WORK/res/${tag}_plain/$D/nnUNetTrainerBudget__nnUNetPlans_b8__2d/fold_0" -p nnUNetPlans_b8 \
      -device "$DEVICE" --disable_tta --record "$WORK/logs/$tag.pseudo_labels.json" >> "$log" 2>&1 \
    && train_one "$WORK/pre_st_$tag" "$WORK/res/$tag" nnUNetTrainerBudget "$seed" "$log"
  else
    train_one "$WORK/pre$n" "$WORK/res/$tag" "$tr" "$seed" "$log"
  fi
  rc=$?
  echo "$tag $rc $(( $(date +%s) - s ))" >> "$WORK/train_done.txt"
  say "trained $tag ($tr, $n labeled, seed $seed): exit $rc in $(( $(date +%s) - s ))s"
}
: > "$WORK/train_done.txt"
while read -r tag tr n seed extra; do
  [ -z "${extra:-}" ] || { say "skipped $tag: a fifth column (settings) is no longer read; name a trainer variant class"; continue; }
  [ -z "$tag" ] || [ "${tag#\#}" != "$tag" ] && continue
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do sleep 2; done
  [ "$(until_deadline)" -gt 60 ] || { say "not started (no time): $tag"; continue; }
  train_job "$tag" "$tr" "$n" "$seed" &
  sleep 1
done < "$JOBS"
wait

# 3. predict (student; teacher where exported) and evaluate, all at once
predict_eval() {  # TAG TRAINER CHK
  local tag=$1 tr=$2 chk=$3 out=$WORK/pred/$1_${3%.pth}
  nnUNet_results=$WORK/res/$tag nnUNet_preprocessed=$WORK/pre3 nnUNet_raw=$WORK/raw \
    timeout -k 5 $(( $(left) > 20 ? $(left) - 10 : 10 )) nnUNetv2_predict -i "$WORK/raw/$D/imagesTs" -o "$out" -d 27 -c 2d -f 0 \
    -tr "$tr" -p nnUNetPlans_b8 -device "$DEVICE" -chk "$chk" --disable_tta -npp 1 -nps 1 \
    > "$WORK/logs/${tag}_${chk%.pth}.predict.log" 2>&1 \
  && $PYTHON -m nnunet_mona.benchmark.evaluate -p "$out" -g "$WORK/raw/$D/labelsTs" -o "$out/metrics.json" \
    --labels 1 2 3 --names RV MYO LV > /dev/null 2>&1 \
  && $PYTHON - "$out/metrics.json" "$tag" "${chk%.pth}" >> "$WORK/results.tsv" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["summary"]["mona"]  # MONA protocol: mean over classes of per-volume Dice
row = [round(100 * s["mean"]["dice"], 1)] + [round(100 * s["per_class"][c]["dice"], 1) for c in ("RV", "MYO", "LV")]
print(sys.argv[2], sys.argv[3], *row, round(s["mean"]["hd95"], 2), sep="\t")
PY
}
while read -r tag rc secs; do
  [ "$rc" = 0 ] || continue
  tr=$(real_trainer "$(awk -v t="$tag" '$1 == t {print $2}' "$JOBS")")
  for chk in checkpoint_final.pth checkpoint_final_teacher.pth; do
    f=$(ls -d "$WORK/res/$tag"/*/*/fold_0/"$chk" 2>/dev/null | head -n 1)
    [ -n "$f" ] || continue
    while [ "$(jobs -rp | wc -l)" -ge $(( 2 * PARALLEL )) ]; do sleep 1; done
    predict_eval "$tag" "$tr" "$chk" &
  done
done < "$WORK/train_done.txt"
wait
say "evaluated: $(wc -l < "$WORK/results.tsv" 2>/dev/null || echo 0) prediction(s)"

# 4. results and compact logs under $OUT (few files: the device returns at most 8)
cp "$WORK/results.tsv" "$WORK/train_done.txt" "$OUTDIR/" 2>/dev/null
( cd "$WORK" && tar -czf "$OUTDIR/logs.tar.gz" logs res/*/*/*/fold_0/training_log_*.txt pred/*/metrics.json \
    2>/dev/null )
pkill -f "nvidia-smi --query-gpu" 2>/dev/null
[ -f "$OUTDIR/results.tsv" ] && { column -t "$OUTDIR/results.tsv" 2>/dev/null || cat "$OUTDIR/results.tsv"; }
say "done in $(( $(date +%s) - T0 ))s"
