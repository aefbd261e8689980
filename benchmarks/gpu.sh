#!/usr/bin/env bash
# The project's GPU check (issue 11), in under 8 minutes on one GPU:
#   1. the tests that touch the device and the training step (the CUDA ones run here, not on a CPU);
#   2. the throughput benchmark on CUDA: D 20 and 64, batch 128 and 1024, eager and compiled,
#      beside the classic PyTorch example on the same GPU;
#   3. 3-epoch runs of `train.py --dataset mnist`: plain, --amp, --compile;
#   4. a timed run of the results architecture (784-300-300-32, full, batch 128, --compile) for
#      about 3 minutes: seconds per epoch, and the extrapolated time of the 3,280-epoch protocol.
# It writes OUT_DIR/gpu-summary.md (printed at the end too) and OUT_DIR/logs/*.log.
#
# usage: bash benchmarks/gpu.sh OUT_DIR          (VAE_DATA_DIR: the folder holding MNIST/)
# A dry run on a machine without CUDA: GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 bash benchmarks/gpu.sh OUT_DIR
set -u
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p "$out/logs"
summary="$out/gpu-summary.md"
device=${GPU_CHECK_DEVICE:-cuda}
quick=${GPU_CHECK_QUICK:+1}
limit=${quick:+--limit 2000}               # the dry run: 2,000 training images
timed=${quick:+40}; timed=${timed:-170}    # seconds of the timed run
export MPLBACKEND=Agg PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
runs=$(mktemp -d)
rows=""

step() {  # step NAME SECONDS CMD...: run CMD under a time limit, log it, and add a row to the summary
  local name=$1 limit_s=$2; shift 2
  local t0=$SECONDS
  timeout -k 5 "$limit_s" "$@" > "$out/logs/$name.log" 2>&1
  local rc=$?
  local note=""
  [ $rc = 124 ] && note=" (time limit)"
  [ $rc = 124 ] && [ "$name" = timed-run ] && note=" (stopped on time, as planned)"
  rows+="| $name | $rc$note | $((SECONDS - t0)) s |"$'\n'
  return $rc
}

# every stage has its own time limit; together they stay under 8 minutes (470 s)
step tests 45 python3 -m pytest -q -x -p no:cacheprovider tests/test_model.py tests/test_speed.py
step throughput 65 python3 benchmarks/throughput.py --device "$device" --latent-dims 20 64 --batch-sizes 128 1024 \
  --posteriors full diagonal --repeats 2 $limit
step throughput-compiled 75 python3 benchmarks/throughput.py --device "$device" --latent-dims 20 --batch-sizes 128 \
  --posteriors full diagonal --no-results-arch --steps compiled --repeats 2 $limit
for variant in plain amp compile; do
  flags=""; [ $variant = amp ] && flags=--amp; [ $variant = compile ] && flags=--compile
  step "train-$variant" $([ $variant = compile ] && echo 55 || echo 25) python3 train.py --dataset mnist \
    --device "$device" --epochs 3 $limit $flags --out-dir "$runs" --run-name "$variant" --no-plots --no-progress
done
# the timed run: SIGTERM after $timed seconds stops it cleanly after the current step (so its timeout's
# exit code, 124, is the plan); each line of its log is stamped with the time it was written
step timed-run $((timed + 10)) bash -c 'set -o pipefail; timeout -s TERM "$0" python3 -u train.py "$@" 2>&1 |
  while IFS= read -r line; do printf "%s %s\n" "$(date +%s.%N)" "$line"; done' "$timed" \
  --dataset mnist --device "$device" $limit --hidden 300 300 --latent-dim 32 --posterior full --batch-size 128 \
  --epochs 3280 --compile --out-dir "$runs" --run-name timed --no-plots --no-progress

{
  echo "# GPU check ($device), $(date -u +%F)"
  python3 -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
  echo
  echo "| step | exit | time |"; echo "|---|---|---|"; printf '%s' "$rows"
  for log in throughput throughput-compiled; do
    echo; echo "## $log"; grep -E '^\||^- |^plain|^targets' "$out/logs/$log.log"
  done
  echo; echo "## 3-epoch runs (test -ELBO, seconds per epoch)"
  for variant in plain amp compile; do
    echo "- $variant: $(grep -E '^epoch +3 ' "$out/logs/train-$variant.log" | tail -n 1)"
  done
  echo; echo "## timed run: 784-300-300-32, full, batch 128, --compile"
  python3 - "$runs/timed/metrics.csv" "$out/logs/timed-run.log" "$timed" <<'PY'
import csv, re, statistics, sys
metrics, log, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
try:
    rows = list(csv.DictReader(open(metrics)))
except OSError:
    sys.exit(f"- no finished epoch ({metrics} missing)")
train = [float(r["train_seconds"]) for r in rows]
steady = statistics.median(train[1:]) if len(train) > 1 else train[0]  # epoch 1 compiles
stamps = [float(line.split()[0]) for line in open(log) if re.match(r"[0-9.]+ epoch +[0-9]+ ", line)]
print(f"- {len(rows)} epochs in {limit:.0f} s (start-up and compilation included); "
      f"test -ELBO {float(rows[-1]['test_neg_elbo']):.2f} after the last")
print(f"- training alone: {steady:.3f} s per epoch after the first ({train[0]:.1f} s, compiling); "
      f"3,280 epochs: {3280 * steady / 60:.1f} min")
if len(stamps) > 2:
    per_epoch = (stamps[-1] - stamps[1]) / (len(stamps) - 2)  # from the end of epoch 2: recompiles done
    print(f"- with each epoch's test bound, checkpoints and metrics: {per_epoch:.3f} s per epoch of wall time; "
          f"3,280 epochs: {3280 * per_epoch / 60:.1f} min")
PY
} > "$summary" 2>&1
rm -rf "$runs"
cat "$summary"
