#!/usr/bin/env bash
# compute-sanitizer over the `gpu` tests of the CUDA operators (GPU machine, after the build):
# memcheck, racecheck and initcheck, one process per tool and test file, all side by side (the
# GPU is shared; each run stops after SECONDS_PER_RUN, the tests it finished still count).
#   bash scripts/gpu_sanitize.sh [OUT_DIR] [SECONDS_PER_RUN] [TOOLS (default: all three)]
# Writes OUT_DIR/<tool>_<file>.log and prints one line per run: tool, file, tests passed /
# failed, whether the run finished, and the sanitizer's error count. Exit status 1 if any
# sanitizer reported an error or a test failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-sanitize_out}
limit=${2:-300}
read -r -a tools <<< "${3:-memcheck racecheck initcheck}"
mkdir -p "$out"
files=(test_fixed_masker_ops test_learned_maskers test_page_maskers test_sampling_maskers
       test_attention_ops test_mask_rows_ops)
declare -A opts=(
  [memcheck]="--tool memcheck --leak-check no"
  [racecheck]="--tool racecheck"
  [initcheck]="--tool initcheck"
)
for tool in "${tools[@]}"; do
  for f in "${files[@]}"; do
    (
      # shellcheck disable=SC2086
      timeout "$limit" compute-sanitizer ${opts[$tool]} --target-processes all --print-limit 50 \
        python3 -m pytest -m gpu "tests/python/$f.py" -v -p no:cacheprovider \
        > "$out/${tool}_$f.log" 2>&1
      echo "rc=$?" >> "$out/${tool}_$f.log"
    ) &
  done
done
wait
status=0
for tool in "${tools[@]}"; do
  for f in "${files[@]}"; do
    log="$out/${tool}_$f.log"
    passed=$(grep -c " PASSED" "$log")
    failed=$(grep -c " FAILED" "$log")
    errors=$(grep -oE "ERROR SUMMARY: [0-9]+ error" "$log" | awk '{s += $3} END {print s + 0}')
    # A run stopped by the time limit prints no summary: count the reports themselves.
    reports=$(grep -cE "^========= +(Invalid|Race|Uninitialized|Program hit|Error|Warning)" "$log")
    [ "$errors" = "0" ] && errors=$reports
    rc=$(grep -oE "rc=[0-9]+$" "$log" | tail -1)
    done_=finished
    [ "$rc" = "rc=124" ] && done_="stopped at ${limit}s"
    echo "$tool $f: $passed passed, $failed failed, $done_ ($rc) | sanitizer errors: $errors"
    [ "$failed" != "0" ] && status=1
    [ "$errors" != "0" ] && status=1
  done
done
exit $status
