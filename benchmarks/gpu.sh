#!/usr/bin/env bash
# The project's GPU check: every CUDA path the product claims, in one run of at most about 9 minutes.
#
#   tests       every test marked `cuda` (pytest -m cuda)
#   matrix      each family x {eager, compiled} x {float32, bf16}: a few IWAE (dreg) steps with clipping,
#               the diagonal warm-up ending half way; finite losses, step times, Dynamo's graph count,
#               and every reason inductor gave for skipping a CUDA graph
#   resume      3 epochs straight, against 2 epochs then a resume that turns --compile on: the random
#               streams are the same, so the runs agree to rounding
#   ddp         torchrun, 1 process a GPU (NCCL): 2 epochs, then a compiled resume to 3
#   (the dry run, CI-sized, compiles nothing: the suite's own tests compile the step on the CPU)
#   speed-*     the results architecture (784-300-300-32, full, batch 128, --compile): seconds per epoch
#               with the test bound and checkpoints every epoch, and with --eval-every 20
#   tf32        the same eager epoch in float32 and with TF32 matmuls (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE)
#   conv        the conv preset's network (--arch conv, channels_last, bf16): 3 epochs of 10,000 images
#   throughput  the classic PyTorch example against ours, one epoch each
#
# Each stage has its own time limit and the whole a budget (GPU_CHECK_BUDGET, default 520 s): a stage
# that would start too late is reported as skipped, and the summary is rewritten after every stage, so
# a check cut short still says what it found. It writes OUT_DIR/gpu-summary.md and OUT_DIR/logs/*.log.
#
# usage: bash benchmarks/gpu.sh OUT_DIR          (VAE_DATA_DIR: the folder holding MNIST/)
# A dry run on a machine without CUDA: GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 bash benchmarks/gpu.sh OUT_DIR
set -u
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR}
mkdir -p "$out/logs" && out=$(cd "$out" && pwd)  # absolute, before the cd below
cd "$(dirname "${BASH_SOURCE[0]}")/.."
device=${GPU_CHECK_DEVICE:-cuda}
quick=${GPU_CHECK_QUICK:+1}
budget=${GPU_CHECK_BUDGET:-520}
summary="$out/gpu-summary.md"
export MPLBACKEND=Agg PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
export RUNS=$runs
start=$SECONDS
rows=""
notes=""

if [ -n "$quick" ]; then  # the dry run: tiny models and data, the same stages, no compilation (the tests have it)
  data=(--limit 1000); model=(--hidden 32 --latent-dim 4)
  matrix=(--steps 3 --hidden 32 --latent-dim 4 --batch-size 16 --compiled)
  speed_epochs=3; results=(--hidden 32 --latent-dim 4 --limit 2000); compile=()
else
  data=(--limit 10000); model=(); matrix=(--steps 30); speed_epochs=20; results=(--hidden 300 300 --latent-dim 32)
  compile=(--compile)
fi
common=(--device "$device" --no-plots --no-progress --out-dir "$runs")

machine=$(python3 -c "import torch; from vae.devices import native_bf16
print('torch', torch.__version__, '| CUDA', torch.version.cuda, '|',
      torch.cuda.get_device_name() if torch.cuda.is_available() else f'no CUDA (CPU bf16: {native_bf16()})')" 2>&1)

write_summary() {
  {
    echo "# GPU check ($device), $(date -u +%F)"
    echo "$machine"
    echo; echo "$((SECONDS - start)) s of the $budget s budget used"
    echo; echo "| stage | exit | time |"; echo "|---|---|---|"; printf '%s' "$rows"
    printf '%s' "$notes"
  } > "$summary.tmp" && mv "$summary.tmp" "$summary"
}

stage() {  # stage NAME SECONDS CMD...: run CMD within its limit and the budget; log it; add its row
  local name=$1 limit=$2; shift 2
  local left=$((budget - (SECONDS - start)))
  if [ "$left" -lt 15 ]; then
    rows+="| $name | skipped (budget spent) | 0 s |"$'\n'; write_summary; return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" > "$out/logs/$name.log" 2>&1
  local rc=$?
  local note=""; [ $rc = 124 ] && note=" (time limit, ${limit} s)"
  rows+="| $name | $rc$note | $((SECONDS - t0)) s |"$'\n'
  write_summary
  return $rc
}

section() {  # section TITLE TEXT: a part of the summary below the table
  notes+=$'\n'"## $1"$'\n'"$2"$'\n'; write_summary
}

# -- tests and the step matrix
stage tests 90 python3 -m pytest -q -p no:cacheprovider -m cuda tests
section tests "$(tail -n 3 "$out/logs/tests.log")"
stage matrix 170 python3 benchmarks/step_matrix.py --device "$device" --posteriors lowrank full diagonal "${matrix[@]}"
section matrix "$(grep -E '^#|^\||^note' "$out/logs/matrix.log")"

# -- resume on the device: the same streams whether the resume compiles or not
stage resume 100 env COMPILE="${compile[*]}" bash -c 'set -e
  python3 train.py "$@" --epochs 3 --run-name straight
  python3 train.py "$@" --epochs 2 --run-name split
  python3 train.py --resume --out-dir "$RUNS" --run-name split --epochs 3 --no-progress $COMPILE' _ \
  "${common[@]}" "${data[@]}" "${model[@]}"
section resume "$(python3 - <<'PY' 2>&1
import csv, os
read = lambda name: list(csv.DictReader(open(os.path.join(os.environ["RUNS"], name, "metrics.csv"))))
try:
    straight, split = read("straight"), read("split")
except OSError as err:
    raise SystemExit(f"- no result: {err}")
for a, b in zip(straight, split):
    print(f"- epoch {a['epoch']}: test -ELBO {float(a['test_neg_elbo']):.4f} straight, "
          f"{float(b['test_neg_elbo']):.4f} split (difference {float(b['test_neg_elbo']) - float(a['test_neg_elbo']):+.2e})")
PY
)"

# -- torchrun: NCCL on CUDA (one process, one GPU), gloo in the dry run
stage ddp 90 env COMPILE="${compile[*]}" bash -c 'set -e
  python3 -m vae.launch --standalone --nproc-per-node 1 train.py "$@" --epochs 2 --run-name ddp
  python3 -m vae.launch --standalone --nproc-per-node 1 train.py --resume --out-dir "$RUNS" --run-name ddp \
    --epochs 3 --no-progress $COMPILE' _ "${common[@]}" "${data[@]}" "${model[@]}"
section ddp "$(grep -E '^epoch|^training|^resuming|error' "$out/logs/ddp.log" | head -n 8)"

# -- speed: the per-epoch test bound and checkpoint writes against --eval-every; TF32
stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done; }
export -f stamp
for every in 1 "$speed_epochs"; do
  stage "speed-eval-every-$every" 75 bash -c 'set -o pipefail; python3 train.py "$@" 2>&1 | stamp' _ \
    "${common[@]}" --posterior full "${results[@]}" --batch-size 128 "${compile[@]}" --epochs "$speed_epochs" \
    --eval-every "$every" --run-name "speed-$every"
done
speed=$(python3 - "$out/logs" "$speed_epochs" <<'PY' 2>&1
import csv, os, re, statistics, sys
logs, epochs = sys.argv[1], int(sys.argv[2])
for every in dict.fromkeys((1, epochs)):
    try:
        rows = list(csv.DictReader(open(os.path.join(os.environ["RUNS"], f"speed-{every}", "metrics.csv"))))
        stamps = [float(line.split()[0]) for line in open(os.path.join(logs, f"speed-eval-every-{every}.log"))
                  if re.match(r"[0-9.]+ epoch +[0-9]+ ", line)]
    except (OSError, ValueError) as err:
        print(f"- eval every {every}: no result ({err})"); continue
    train = [float(r["train_seconds"]) for r in rows]
    wall = (stamps[-1] - stamps[1]) / (len(stamps) - 2) if len(stamps) > 2 else float("nan")
    print(f"- eval every {every}: training {statistics.median(train[1:] or train):.3f} s an epoch after the first "
          f"({train[0]:.1f} s, compiling); wall time {wall:.3f} s an epoch from epoch 2 on, test bound and files "
          f"included; 3,280 epochs: {3280 * wall / 60:.1f} min")
PY
)
section "speed: ${results[*]}, full, batch 128 ${compile[*]}" "$speed"
for mode in float32 tf32; do
  flag=""; [ $mode = tf32 ] && flag=1
  stage "tf32-$mode" 40 env ${flag:+TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1} python3 train.py "${common[@]}" --posterior full \
    "${results[@]}" --epochs 3 --eval-every 3 --run-name "tf32-$mode"
done
section "TF32 (eager)" "$(for mode in float32 tf32; do
  echo "- $mode: epochs 2 and 3 took $(grep -E '^epoch +[23] ' "$out/logs/tf32-$mode.log" | awk '{print $NF}' |
    paste -sd' '); $(grep -E '^epoch +3 ' "$out/logs/tf32-$mode.log" | grep -o 'test -ELBO *[0-9.]*') after epoch 3"
  done)"
# -- the convolutional networks: the conv preset's network (channels_last, bf16 on CUDA) for 3 short epochs
stage conv 60 python3 train.py "${common[@]}" --preset results-conv-full "${data[@]}" --epochs 3 --kl-warmup 1 \
  ${quick:+--no-amp --channels 8 16 --hidden 32} --run-name conv
section "conv (--preset results-conv-full, 3 epochs)" "$(grep -E '^precision|^epoch|error' "$out/logs/conv.log")"
stage throughput 60 python3 benchmarks/throughput.py --device "$device" --latent-dims 20 --posteriors full diagonal \
  --no-results-arch --repeats 1 ${quick:+--limit 2000}
section throughput "$(grep -E '^\||^- |^plain' "$out/logs/throughput.log")"

write_summary
cat "$summary"
