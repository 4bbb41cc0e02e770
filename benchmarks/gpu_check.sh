#!/usr/bin/env bash
# One call on the GPU machine checks and times everything, writing under $OUT (default ./gpu_out):
#   PYTHONPATH=. bash benchmarks/gpu_check.sh [tests|tests_models|extremes|tune|table|bench|model|compiled|families|window|
#                                              baseline|launches|train ...]
# (default: tests extremes bench model train). "baseline" needs .baseline/ (python -m locat_bench.baseline make REF).
# "table" measures the config table's entries for this GPU into $OUT/configs.json (TABLE_KERNELS=backward_dkdv
# in a second call: the three kernels together outgrow one call).
# Each step has its own time limit so a slow one cannot starve the others; logs and JSON land in $OUT.
# "tests" runs the kernel files (v10: 156 passed in 174 s with -n 8; v34: 286 in 385 s, near its limit, hence -n 14 with
# one CPU thread a worker as tests_models runs: v35, 289 in 270 s); "tests_models" the rest but the fuzz (v11: 161
# passed, 9 skipped in 66 s with one CPU thread per worker; v10 without that reached 52% in 430 s). The family
# tests need timm >= 1.0.31: where the machine has an older one, carry it (pip download --no-deps timm==1.0.31;
# unzip the wheel into .devdeps/) and run with PYTHONPATH=.:.devdeps.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
steps=${*:-tests extremes bench model train}
for step in $steps; do
  case $step in
    tests)    OMP_NUM_THREADS=1 LOCAT_TEST_SUMMARY=$OUT/cuda_tests.json timeout 400 python3 -m pytest -q \
                -p no:cacheprovider -n 14 --timeout 200 --durations 20 tests/test_launch.py tests/test_kernel.py \
                tests/test_locat_attention.py tests/test_window.py > "$OUT/tests.log" 2>&1 ;;
    tests_models) OMP_NUM_THREADS=1 timeout 560 python3 -m pytest tests -q -rfE -p no:cacheprovider -n 14 \
                --timeout 300 --durations 20 --ignore tests/test_extremes.py --ignore tests/test_launch.py \
                --ignore tests/test_kernel.py --ignore tests/test_locat_attention.py --ignore tests/test_window.py \
                > "$OUT/tests_models.log" 2>&1 ;;
    extremes) LOCAT_FUZZ_CASES=${LOCAT_FUZZ_CASES:-40} LOCAT_FUZZ_SUMMARY=$OUT/fuzz.json timeout 330 python3 -m pytest \
                tests/test_extremes.py -q -rf -p no:cacheprovider -n 4 --timeout 320 > "$OUT/extremes.log" 2>&1 ;;
    tune)     timeout 150 python3 -m locat_bench.tune --output "$OUT/tune.json" > "$OUT/tune.log" 2>&1 ;;
    table)    [ -f "$OUT/configs.json" ] || cp locat_kernels/fused/configs.json "$OUT/configs.json"  # then copy it back
              timeout 560 python3 -m locat_bench.tune --table --kernels ${TABLE_KERNELS:-forward backward_dq} \
                --output "$OUT/tune_table.json" --write "$OUT/configs.json" > "$OUT/table.log" 2>&1 ;;
    bench)    timeout 400 python3 -m locat_bench.cli --output "$OUT/attention.json" > "$OUT/bench.log" 2>&1 ;;
    model)    timeout 400 python3 -m locat_bench.cli --model --modes eager --output "$OUT/model.json" > "$OUT/model.log" 2>&1 ;;
    compiled) timeout 550 python3 -m locat_bench.cli --model --modes compiled --output "$OUT/compiled.json" > "$OUT/compiled.log" 2>&1 ;;
    baseline) PYTHONPATH=.:.baseline timeout 400 python3 -m locat_bench.baseline run --output "$OUT/baseline.json" > "$OUT/baseline.log" 2>&1 ;;
    families) timeout 560 python3 -m locat_bench.cli --model --modes eager \
                --cases rope:base:224:128 jumbo:base:224:128 swin:tiny:224:128 --output "$OUT/families.json" \
                > "$OUT/families.log" 2>&1 ;;
    window)   timeout 300 python3 -m locat_bench.bench_window --output "$OUT/window.json" > "$OUT/window.log" 2>&1 ;;
    launches) timeout 120 python3 -m locat_bench.host_profile --launches --output "$OUT/launches.json" \
                > "$OUT/launches.log" 2>&1 ;;
    train)    timeout 240 python3 -m locat_bench.train_runs --output "$OUT/train.json" > "$OUT/train.log" 2>&1 ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "$step: exit $?"
  tail -3 "$OUT/$step.log" 2>/dev/null || true
done
