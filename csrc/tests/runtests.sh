#!/bin/sh
# runtests.sh -- run the C core's test programs (like liburing's test/runtests.sh).
#
#   sh tests/runtests.sh BIN...
#
# Each test runs under `timeout $TEST_TIMEOUT` (default 60 s) with leak checking on.
# Exit status 0 = PASS, 77 = SKIP, anything else (a timeout, a sanitizer report) = FAIL.
# One line per test, the output of failed tests, then "N passed, M failed, K skipped";
# exits non-zero when any test failed.

TIMEOUT=${TEST_TIMEOUT:-60}
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:detect_stack_use_after_return=1}
case "$ASAN_OPTIONS" in *detect_leaks=1*) ;; *) ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=1" ;; esac
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export ASAN_OPTIONS UBSAN_OPTIONS

# each test makes its own mkdtemp directory inside this one; it goes at the end even
# when a test was killed by its timeout
LSIO_TEST_TMPROOT=$(mktemp -d /tmp/lsio-tests.XXXXXX) || exit 1
chmod 755 "$LSIO_TEST_TMPROOT" # errors.c's unprivileged child must get in
export LSIO_TEST_TMPROOT
trap 'rm -rf "$LSIO_TEST_TMPROOT"' EXIT INT TERM

pass=0
fail=0
skip=0
failed=""
for t in "$@"; do
    name=$(basename "$t")
    log="$t.log"
    start=$(date +%s)
    timeout -k 5 "$TIMEOUT" "$t" >"$log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    if [ "$rc" -eq 0 ]; then
        pass=$((pass + 1))
        echo "PASS $name (${secs}s)"
    elif [ "$rc" -eq 77 ]; then
        skip=$((skip + 1))
        echo "SKIP $name ($(tail -n 1 "$log"))"
    else
        fail=$((fail + 1))
        failed="$failed $name"
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            echo "FAIL $name (timed out after ${TIMEOUT}s)"
        else
            echo "FAIL $name (exit $rc)"
        fi
        sed 's/^/    /' "$log"
    fi
done

echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
