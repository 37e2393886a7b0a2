#!/usr/bin/env bash
# One GPU session's checks in one command (a lent H100/H200 machine, Python with
# CUDA torch and no dlib). Needs ../shared/data/{orl_faces,orl_faces_92x112,coil20}
# and OUT (a folder for results). Face scores are added afterwards on a machine
# with dlib: experiments/orl_inversion_deep.py --rescore RUN.json RUN.npz.
#   1. smoke: every inversion method on CUDA at 1% of the steps (stops here on failure)
#   2. exact search on the GPU vs the CPU (bench/bench_gpu_search.py), GPU otherwise idle
#   3. deep-split inversion at 112x92, one process per job below, all on one GPU
#   4. the CUDA-marked tests (pytest -m gpu), beside step 3
# INVERSION_ONLY=1 skips steps 2 and 4.
# JOBS: "NAME WIDTH SPLITS METHODS SCALE" per line; the default is the first run's.
set -u
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
LIMIT=${LIMIT:-420}
ALL=optimize,dci-noise,dci-generator,decoder
JOBS=${JOBS:-"$(for m in ${ALL//,/ }; do
  echo "l4-x1-$m 16 layer4 $m 1"; echo "l4-x4-$m 16 layer4 $m 4"; echo "l3-x2-$m 16 layer3 $m 2"
done; echo "l2-x1 16 layer2 $ALL 1"; echo "l1-x1 16 layer1 $ALL 1")"}
RUN=$OUT/deep; mkdir -p "$RUN" /tmp/clf  # classifiers stay out of $OUT (size limits)
E="python3 experiments/orl_inversion_deep.py --size 112x92 --device cuda --threads 1 --no-faces"
nvidia-smi -L
$E --epochs 1 --scale 0.01 --splits layer4 --out /tmp/smoke.json --save-recon /tmp/smoke.npz \
  > "$OUT/smoke.log" 2>&1 || { tail -40 "$OUT/smoke.log"; exit 1; }
echo "smoke ok"
if [ -z "${INVERSION_ONLY:-}" ]; then
  timeout 120 python3 bench/bench_gpu_search.py --n-db 1000000 --queries 100000 \
    > "$OUT/gpu_search.json" 2> "$OUT/gpu_search.err"; tail -3 "$OUT/gpu_search.err"
  cat "$OUT/gpu_search.json"
fi
for w in $(echo "$JOBS" | awk '{print $2}' | sort -u); do
  $E --splits "" --width "$w" --classifier "/tmp/clf/$w.pt" --out "$RUN/train$w.json" \
    > "$RUN/train$w.log" 2>&1 || { tail -40 "$RUN/train$w.log"; exit 1; }
done
while read -r name w splits methods scale; do
  timeout "$LIMIT" $E --width "$w" --classifier "/tmp/clf/$w.pt" --splits "$splits" \
    --methods "$methods" --scale "$scale" --budget $((LIMIT - 90)) --out "$RUN/$name.json" \
    --save-recon "$RUN/$name.npz" > "$RUN/$name.log" 2>&1 &
done <<< "$JOBS"
if [ -z "${INVERSION_ONLY:-}" ]; then
  timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_model_devices.py \
    tests/test_cli.py > "$OUT/gpu_tests.log" 2>&1; tail -4 "$OUT/gpu_tests.log"
fi
wait
grep -h '"split"' "$RUN"/*.log | grep -v defense | cut -c1-150
tar czf "$OUT/deep.tgz" -C "$OUT" deep
