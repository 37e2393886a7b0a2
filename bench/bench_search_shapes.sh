#!/usr/bin/env bash
# The exact-search shape table of issue 25 item 1: bench_search.py (knn vs faiss
# IndexFlatIP, paired rounds, median of per-round ratios) over the shapes we use:
# d 128 (face), 512 (named face models), 1024 (pixel), 3072 (tiled); a small
# database, one query, a batch; k 1 and 10; two threads, and one thread at d 128;
# then 10,000 queries and a 1M-row database at d 128.
# Run from the repository root: bash bench/bench_search_shapes.sh [ROUNDS]
set -euo pipefail
rounds=${1:-5}
py=${PYTHON:-.venv/bin/python}
run() {  # threads dim n_db n_query k
  echo "## threads=$1 d=$2 db=$3 queries=$4 k=$5"
  OMP_NUM_THREADS=$1 MKL_NUM_THREADS=$1 "$py" bench/bench_search.py --n-db "$3" \
    --n-query "$4" --dim "$2" --k "$5" --rounds "$rounds" --skip-torch | grep -E '^\| (faiss|knn|matrix)'
}
for dim in 128 512 1024 3072; do
  big=$([ "$dim" = 3072 ] && echo 30000 || echo 100000)
  batch=$([ "$dim" = 3072 ] && echo 1000 || echo 2000)
  for k in 1 10; do
    run 2 "$dim" 10000 1000 "$k"
    run 2 "$dim" "$big" 1 "$k"
    run 2 "$dim" "$big" "$batch" "$k"
  done
done
for k in 1 10; do
  run 1 128 100000 1 "$k"
  run 1 128 100000 2000 "$k"
done
run 2 128 100000 10000 10
run 2 128 1000000 1000 10
run 1 128 1000000 1000 10
