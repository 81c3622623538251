#!/bin/bash
# Full-resolution ACDC on one device call: convert -> plan/preprocess 2d -> cost per iteration of nnUNetTrainer,
# nnUNetTrainerMeanTeacher and nnUNetTrainerMONA -> budget sized to the time left -> benchmark (plain nnU-Net,
# Mean Teacher, MONA on 3 labeled patients; 1 and 7 only if they fit) -> results and cost table under $OUT.
#
# On the device, after staging (../shared/device/README.md), in one call of at most 9 minutes:
#   bash .dev/stage.sh data && source /tmp/env.sh && bash scripts/device/acdc_gpu.sh
# CPU dry run with a token budget (same code path; see scripts/device/README.md):
#   bash scripts/device/acdc_gpu.sh --device cpu --acdc /work/data/ACDC --epochs 1 --iterations 2 ...
#
# Needs nnUNet_raw / nnUNet_preprocessed / nnUNet_results set and nnU-Net's commands on PATH (the staging's
# shims in /tmp/bin); the project is used from this working tree (PYTHONPATH, python -m), not installed.
# Re-running with the same folders resumes: finished steps are skipped (run_benchmark resumes trainings).
# Options (defaults in brackets):
#   --device cuda|cpu [cuda]        --acdc DIR ACDC h5 folder [/tmp/ACDC]     --dataset ID [27]
#   --budget_s S   seconds this script may take in all [480]; the sizing fits the benchmark into what is left
#   --epochs E --iterations I --parallel P --n_proc_da K   override the sizing (token budget for a dry run)
#   --labeled "N ..." [3]   --extra_labeled "N ..." added only if they fit [1 7]
#   --test_images DIR --test_labels DIR  evaluation set [imagesTs labelsTs of the converted dataset = val.list]
#   --bench_iterations B [12] --bench_warmup W [3] --da_batches D [4] --val_iterations V [2]
#   --downsample F [1] (converter, in-plane; 1 = full resolution)  --disable_tta  --compile  --seed S [0]
#   --out DIR [$OUT, else /tmp/acdc_gpu_out]   --work DIR [/tmp/acdc_gpu]
set -u -o pipefail
T0=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
DEVICE=cuda ACDC=/tmp/ACDC DATASET=27 BUDGET_S=480 EPOCHS= ITERATIONS= PARALLEL_SET= N_PROC_DA_SET=
LABELED=3 EXTRA_LABELED="1 7" TEST_IMAGES=imagesTs TEST_LABELS=labelsTs BENCH_IT=12 BENCH_WARMUP=3 DA_BATCHES=4
VAL_IT=2 DOWNSAMPLE=1 TTA=1 COMPILE=f SEED=0 OUTDIR=${OUT:-/tmp/acdc_gpu_out} WORK=/tmp/acdc_gpu
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift ;;            --acdc) ACDC=$2; shift ;;
    --dataset) DATASET=$2; shift ;;          --budget_s) BUDGET_S=$2; shift ;;
    --epochs) EPOCHS=$2; shift ;;            --iterations) ITERATIONS=$2; shift ;;
    --parallel) PARALLEL_SET=$2; shift ;;    --n_proc_da) N_PROC_DA_SET=$2; shift ;;
    --labeled) LABELED=$2; shift ;;          --extra_labeled) EXTRA_LABELED=$2; shift ;;
    --test_images) TEST_IMAGES=$2; shift ;;  --test_labels) TEST_LABELS=$2; shift ;;
    --bench_iterations) BENCH_IT=$2; shift ;; --bench_warmup) BENCH_WARMUP=$2; shift ;;
    --da_batches) DA_BATCHES=$2; shift ;;    --val_iterations) VAL_IT=$2; shift ;;
    --downsample) DOWNSAMPLE=$2; shift ;;    --disable_tta) TTA=0 ;;
    --compile) COMPILE=t ;;                  --seed) SEED=$2; shift ;;
    --out) OUTDIR=$2; shift ;;               --work) WORK=$2; shift ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
TRAINERS="nnUNetTrainerBudget nnUNetTrainerMeanTeacher nnUNetTrainerMONA"
MEASURED="nnUNetTrainer nnUNetTrainerMeanTeacher nnUNetTrainerMONA"
mkdir -p "$OUTDIR" "$WORK/logs"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 nnUNet_compile=$COMPILE
export nnUNet_extTrainer="$ROOT/nnunet_mona/ext_trainers"
cd "$ROOT"

elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( BUDGET_S - $(elapsed) )); }
say() { echo "[acdc_gpu $(date +%H:%M:%S) +$(elapsed)s] $*" | tee -a "$OUTDIR/device_log.txt"; }
fail() { say "FAILED: $*"; collect; exit 1; }
# run NAME CMD...: the command's output goes to $WORK/logs/NAME.log, its last lines to the console on failure
run() {
  local name=$1; shift
  local t=$(left)
  [ "$t" -gt 5 ] || { say "$name: no time left"; return 124; }
  timeout -k 10 "$t" "$@" > "$WORK/logs/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || { say "$name exited $rc; last lines:"; tail -n 25 "$WORK/logs/$name.log" | tee -a "$OUTDIR/device_log.txt"; }
  return $rc
}
# results, cost table and logs (tails) under $OUT: small files only
collect() {
  local b="$WORK/bench" f
  for f in results.json results.md results.png; do [ -f "$b/$f" ] && cp "$b/$f" "$OUTDIR/"; done
  mkdir -p "$OUTDIR/logs"
  for f in "$WORK"/logs/*.log; do [ -f "$f" ] && tail -c 60000 "$f" > "$OUTDIR/logs/$(basename "$f")"; done
  [ -d "$b" ] && find "$b" \( -name '*.log' -o -name 'training_log_*.txt' -o -name '*.json' \) -size -2M \
    -not -path '*/nnUNet_preprocessed/*' -not -path '*/predictions/*' | while read -r f; do
      rel=${f#"$b"/}; tail -c 60000 "$f" > "$OUTDIR/logs/bench__${rel//\//__}"; done
  [ -d "$b" ] && find "$b" -name progress.png -size -1M | while read -r f; do
      rel=${f#"$b"/}; cp "$f" "$OUTDIR/logs/bench__${rel//\//__}"; done
  say "collected into $OUTDIR: $(ls "$OUTDIR" | tr '\n' ' ')"
}

for v in nnUNet_raw nnUNet_preprocessed nnUNet_results; do
  [ -n "${!v:-}" ] || { echo "$v is not set (source /tmp/env.sh on the device)" >&2; exit 2; }
done
for c in nnUNetv2_plan_and_preprocess nnUNetv2_predict; do
  command -v "$c" > /dev/null || { echo "$c is not on PATH (the staging's /tmp/bin shims)" >&2; exit 2; }
done
CORES=$($PYTHON -c "import os; print(len(os.sched_getaffinity(0)))")  # nproc would follow OMP_NUM_THREADS
if [ "$DEVICE" = cuda ]; then
  GPU=$($PYTHON -c "import torch; print(torch.cuda.get_device_name(0))") || { echo "no CUDA device" >&2; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUTDIR/gpu.csv" 2>/dev/null
else
  GPU="CPU ($CORES cores)"
fi
say "device $DEVICE ($GPU), $CORES cores, budget ${BUDGET_S}s, ACDC $ACDC, dataset $DATASET, out $OUTDIR, work $WORK"

# 1. convert the h5 data (the 3-labeled split as splits_final.json: nnU-Net copies it at planning, so the cost
#    measurement trains on 3 labeled patients with the other training cases unlabeled, as the benchmark does)
ID3=$(printf %03d "$DATASET")
if ls -d "$nnUNet_raw/Dataset${ID3}_"* > /dev/null 2>&1; then
  say "[skip] conversion: $(ls -d "$nnUNet_raw/Dataset${ID3}_"*) exists"
else
  DS=(); [ "$DOWNSAMPLE" != 1 ] && DS=(--downsample "$DOWNSAMPLE")
  run convert $PYTHON -m nnunet_mona.conversion.acdc_h5 -i "$ACDC" -d "$DATASET" --default_split 3 \
    --progress_every 40 "${DS[@]}" || fail "conversion"
  say "converted: $(tail -n 1 "$WORK/logs/convert.log")"
fi

# 2. plan and preprocess 2d (nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA): never 0 there)
if [ -f "$WORK/preprocessed.done" ]; then
  say "[skip] planning/preprocessing"
else
  nnUNet_n_proc_DA=$CORES run preprocess nnUNetv2_plan_and_preprocess -d "$DATASET" -c 2d -np "$CORES" \
    -npfp "$CORES" --no_pbar || fail "planning/preprocessing"
  touch "$WORK/preprocessed.done"
  say "planned and preprocessed 2d"
fi

# 3. cost per iteration, each trainer alone (own process; wall time of the process = start-up for the sizing);
#    beside it, on one core, the augmentation cost per iteration (labeled; labeled + unlabeled) for the sizing
DA_PID=
if [ ! -s "$WORK/da.json" ]; then
  ( run da_cost $PYTHON scripts/device/da_cost.py -d "$DATASET" --trainers nnUNetTrainer nnUNetTrainerMeanTeacher \
      --batches "$DA_BATCHES" --json && grep '^\[{' "$WORK/logs/da_cost.log" | tail -n 1 > "$WORK/da.json" ) &
  DA_PID=$!
fi
for t in $MEASURED; do
  [ -s "$WORK/iter_$t.json" ] && { say "[skip] cost of $t measured"; continue; }
  s=$(date +%s%N)
  if run "iter_$t" $PYTHON scripts/benchmark_iteration.py -d "$DATASET" -c 2d -f 0 --trainers "$t" \
      --iterations "$BENCH_IT" --warmup "$BENCH_WARMUP" --device "$DEVICE" --in-process --json; then
    grep '^\[{' "$WORK/logs/iter_$t.log" | tail -n 1 > "$WORK/iter_$t.json"
    ms=$(( ($(date +%s%N) - s) / 1000000 ))
    echo "$(( ms / 1000 )).$(printf %03d $(( ms % 1000 )))" > "$WORK/iter_$t.wall"
    say "cost of $t: $(cat "$WORK/iter_$t.json")"
  else
    say "cost measurement of $t failed: the sizing uses an estimate for it"
  fi
done
[ -n "$DA_PID" ] && { wait "$DA_PID" || say "augmentation cost not measured: the sizing uses an estimate"; }

# 4. cost table and budget from the measurements and the time left
REMAINING=$(( $(left) - 20 ))  # 20 s to collect the results
SIZING=$($PYTHON scripts/device/size_budget.py --work "$WORK" --out "$OUTDIR" --measured $MEASURED \
  --trainers $TRAINERS --labeled $LABELED --extra_labeled $EXTRA_LABELED --remaining_s "$REMAINING" \
  --cores "$CORES" --val_iterations "$VAL_IT" --bench_iterations "$BENCH_IT" --bench_warmup "$BENCH_WARMUP" \
  --device "$DEVICE" --gpu "$GPU" 2> >(tee -a "$OUTDIR/device_log.txt" >&2)) || fail "sizing"
eval "$SIZING"
say "sized for ${REMAINING}s: $SIZING"
EPOCHS=${EPOCHS:-$EPOCHS_SIZED} ITERATIONS=${ITERATIONS:-$ITERATIONS_SIZED}
PARALLEL=${PARALLEL_SET:-$PARALLEL} N_PROC_DA=${N_PROC_DA_SET:-$N_PROC_DA}
[ "$DEVICE" = cpu ] && [ -z "$N_PROC_DA_SET" ] && N_PROC_DA=0  # dry run: in-process augmentation

# 5. the benchmark: train, predict the evaluation volumes, evaluate, report (GPU utilisation sampled alongside)
export nnUNet_n_proc_DA=$N_PROC_DA nnUNet_def_n_proc=$NP
TTA_FLAG=(); [ "$TTA" = 0 ] && TTA_FLAG=(--disable_tta)
say "benchmark: N = $LABELED labeled x $TRAINERS, $EPOCHS x $ITERATIONS iterations (val $VAL_IT), --parallel" \
    "$PARALLEL, nnUNet_n_proc_DA=$N_PROC_DA, -np $NP, predicted ${PREDICTED_S}s of $(left)s left"
UTIL_PID=
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$OUTDIR/gpu_util.csv" 2>&1 &
  UTIL_PID=$!
fi
BUDGET_S=$(( BUDGET_S - 20 ))  # run() stops the benchmark (and its trainings) 20 s early: time to collect
run benchmark $PYTHON -m nnunet_mona.benchmark.run_benchmark -d "$DATASET" --labeled $LABELED \
  --trainers $TRAINERS --epochs "$EPOCHS" --iterations "$ITERATIONS" --val_iterations "$VAL_IT" \
  --device "$DEVICE" --parallel "$PARALLEL" -o "$WORK/bench" --test_images "$TEST_IMAGES" \
  --test_labels "$TEST_LABELS" --np "$NP" --seed "$SEED" "${TTA_FLAG[@]}"
RC=$?
[ -n "$UTIL_PID" ] && kill "$UTIL_PID" 2>/dev/null
grep -E "^\[[0-9:]+\]" "$WORK/logs/benchmark.log" | tail -n 40 >> "$OUTDIR/device_log.txt"
BUDGET_S=$(( BUDGET_S + 20 ))
collect
[ -f "$OUTDIR/results.md" ] && cat "$OUTDIR/results.md"
cat "$OUTDIR/cost.md"
say "done (benchmark exit $RC) in $(elapsed)s"
exit $RC
