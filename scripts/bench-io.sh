#!/usr/bin/env bash
# bench-io.sh -- lsio-ray against fio on the same files, in one run.
#
# Workloads (each run by fio, lsio uring and lsio pread, INTERLEAVED, REPS times):
#   W1  4 KiB random O_DIRECT reads, 64 files x 64 MiB (BIG_COUNT), depth from W1_DEPTHS
#   W2  256 KiB sequential O_DIRECT reads of the same files
#   W3  4 KiB random buffered reads from a warm page cache (fio psync and fio io_uring)
#   W4  whole-file reads of 20,000 files x 16 KiB from a cold cache
#       (sync; echo 3 > /proc/sys/vm/drop_caches before every run: needs root)
# and prints min / median / max per tool with the ratio lsio / fio of the medians
# (scripts/bench_table.py).  Data lives under $LSIO_BENCH_DIR (never committed); files
# are made once and kept (make-files is idempotent).
#
# Settings (environment):
#   LSIO_BENCH_DIR  data and results directory            (/tmp/lsio-bench)
#   DURATION        seconds per time-based run            (10)
#   REPS            repetitions of each run               (3)
#   WORKLOADS       which to run                          ("W1 W2 W3 W4")
#   W1_DEPTHS       queue depths for W1                   ("32 128")
#   W2_DEPTH        queue depth for W2                    (32)
#   W3_THREADS      threads / fio jobs for W3             (2)
#   W3_DEPTH        io_uring depth for W3                 (32)
#   W4_DEPTH        queue depth for W4                    (32)
#   W4_COUNT        files in W4                           (20000)
#   BIG_COUNT       64 MiB files for W1-W3                (64; fewer for a quick check)
#   COLD            0: no drop_caches before W4 (then warm) (1)
#   PYTHON          interpreter with lsio_ray installed   (python3)
#   FIO             fio binary                            (fio)
#   SNAPSHOT        1: run a copy of the installed package  (1)
#
# Thread mapping: fio numjobs = lsio --threads (Python threads, one engine each).  The
# lsio pread backend gets as many worker threads as the io_uring runs have depth (W1,
# W2, W4: the same number of reads outstanding), except in W3 where each of the
# W3_THREADS engines has one worker, i.e. the same number of threads in pread() as
# fio psync has jobs.
set -euo pipefail

BENCH_DIR=${LSIO_BENCH_DIR:-/tmp/lsio-bench}
DURATION=${DURATION:-10}
REPS=${REPS:-3}
WORKLOADS=${WORKLOADS:-"W1 W2 W3 W4"}
W1_DEPTHS=${W1_DEPTHS:-"32 128"}
W2_DEPTH=${W2_DEPTH:-32}
W3_THREADS=${W3_THREADS:-2}
W3_DEPTH=${W3_DEPTH:-32}
W4_DEPTH=${W4_DEPTH:-32}
W4_COUNT=${W4_COUNT:-20000}
BIG_COUNT=${BIG_COUNT:-64}
COLD=${COLD:-1}
PYTHON=${PYTHON:-python3}
FIO=${FIO:-fio}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# BIG_COUNT x 64 MiB (W1, W2, W3); the default keeps the directory of earlier runs
if [ "$BIG_COUNT" = 64 ]; then BIG=$BENCH_DIR/w1; else BIG=$BENCH_DIR/w1-$BIG_COUNT; fi
SMALL=$BENCH_DIR/w4-$W4_COUNT  # W4_COUNT x 16 KiB
OUT=$BENCH_DIR/results/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"

# numpy's OpenBLAS would start one spinning thread per core at import: keep them out
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
lsio() { "$PYTHON" -m lsio_ray.cli "$@"; }

drop_caches() {
    sync
    if [ "$COLD" != 1 ]; then
        log "COLD=$COLD: caches kept, W4 is not cold"
        return
    fi
    if ! { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
        log "WARNING: cannot drop caches (not root?): W4 is not cold"
    fi
}

warm() {  # read twice so the pages are active (and survive proactive reclaim)
    cat "$BIG"/f* >/dev/null
    cat "$BIG"/f* >/dev/null
}

cached_mib() {  # how much of the big files is in the page cache (needs util-linux fincore)
    if command -v fincore >/dev/null; then
        fincore -b -n -o RES "$BIG"/f* | awk '{s += $1} END {printf "%.0f", s / 1048576}'
    else
        echo "?"
    fi
}

# w3 TOOL args...: one warm-cache run (id, rep from the caller).  The page cache is warmed
# first and checked after: a run that lost part of it (reclaim, another process dropping
# caches) is set aside as ...json.cold and left out of the table.
w3() {
    local tool=$1
    shift
    warm
    if [[ $tool == fio-* ]]; then
        run_fio "$id" "$tool" "$rep" --filename="$FILES" "$@"
    else
        run_lsio "$id" "$tool" "$rep" --dir "$BIG" "$@"
    fi
    local after
    after=$(cached_mib)
    local want=$((BIG_COUNT * 64))
    if [[ $after != "?" ]] && ((after < want * 95 / 100)); then
        log "$id $tool #$rep: only $after MiB of $want still cached: run discarded"
        echo "# $id $tool #$rep discarded: $after MiB of $want cached at the end" >>"$OUT/meta.tsv"
        mv "$OUT/${id}__${tool}__${rep}.json" "$OUT/${id}__${tool}__${rep}.json.cold"
    fi
}

# fio --filename takes a ':'-separated list
big_files() { ls "$BIG"/f* | paste -sd: -; }

# run_fio ID TOOL REP fio-args...
run_fio() {
    local id=$1 tool=$2 rep=$3
    shift 3
    log "$id $tool #$rep"
    "$FIO" --name="$id" --thread --invalidate=0 --group_reporting \
        --output-format=json --output="$OUT/${id}__${tool}__${rep}.json" "$@" >/dev/null
}

# run_lsio ID TOOL REP lsio-read-args...
run_lsio() {
    local id=$1 tool=$2 rep=$3
    shift 3
    log "$id $tool #$rep"
    lsio bench read --json "$@" >"$OUT/${id}__${tool}__${rep}.json"
}

# ---------------------------------------------------------------------------------------
# Run a private copy of the package (SNAPSHOT=1): a rebuild of the working tree during
# the run must not mix two engines in one table.  Its build hash goes in the header.
if [ "${SNAPSHOT:-1}" = 1 ]; then
    PKG=$("$PYTHON" -c 'import lsio_ray, os; print(os.path.dirname(lsio_ray.__file__))')
    mkdir -p "$OUT/pkg"
    cp -r "$PKG" "$OUT/pkg/"
    export PYTHONPATH="$OUT/pkg${PYTHONPATH:+:$PYTHONPATH}"
fi
so_hash() {
    "$PYTHON" -c 'import hashlib, lsio_ray._lsio as m; print(hashlib.sha256(open(m.__file__, "rb").read()).hexdigest()[:12])'
}
SO_HASH=$(so_hash)
COMMIT=$(git -C "$HERE/.." describe --always --dirty 2>/dev/null || echo unknown)

log "results in $OUT"
{
    echo "# lsio-ray vs fio $("$FIO" --version) -- $(uname -r), $(getconf _NPROCESSORS_ONLN) CPUs," \
        "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)," \
        "$(df -T "$BENCH_DIR" | awk 'NR==2 {print $2 " on " $1}')"
    echo "# duration ${DURATION}s per time-based run, $REPS repetitions, interleaved;" \
        "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# lsio_ray at $COMMIT, _lsio build $SO_HASH"
} >"$OUT/meta.tsv"

case " $WORKLOADS " in *" W1 "* | *" W2 "* | *" W3 "*)
    log "data: $BIG_COUNT x 64 MiB in $BIG"
    lsio bench make-files --dir "$BIG" --count "$BIG_COUNT" --size 64M
    ;;
esac
case " $WORKLOADS " in *" W4 "*)
    log "data: $W4_COUNT x 16 KiB in $SMALL"
    lsio bench make-files --dir "$SMALL" --count "$W4_COUNT" --size 16K
    ;;
esac
sync

T=$DURATION
FILES=$(big_files 2>/dev/null || true)

for W in $WORKLOADS; do
    case $W in
    W1)
        for D in $W1_DEPTHS; do
            id="W1-d$D"
            printf '%s\tiops\t4K randread O_DIRECT %sx64M depth %s\n' "$id" "$BIG_COUNT" "$D" \
                >>"$OUT/meta.tsv"
            for rep in $(seq 1 "$REPS"); do
                run_fio "$id" fio-io_uring "$rep" --filename="$FILES" --ioengine=io_uring \
                    --direct=1 --rw=randread --bs=4k --iodepth="$D" --norandommap \
                    --randrepeat=0 --time_based --runtime="$T"
                run_lsio "$id" lsio-uring "$rep" --dir "$BIG" --pattern random --bs 4K \
                    --direct --depth "$D" --backend uring --duration "${T}s"
                run_lsio "$id" lsio-pread "$rep" --dir "$BIG" --pattern random --bs 4K \
                    --direct --depth "$D" --backend pread --io-threads "$D" --duration "${T}s"
            done
        done
        ;;
    W2)
        D=$W2_DEPTH
        id="W2-d$D"
        printf '%s\tmibs\t256K seq read O_DIRECT %sx64M depth %s\n' "$id" "$BIG_COUNT" "$D" \
            >>"$OUT/meta.tsv"
        for rep in $(seq 1 "$REPS"); do
            run_fio "$id" fio-io_uring "$rep" --filename="$FILES" --ioengine=io_uring \
                --direct=1 --rw=read --bs=256k --iodepth="$D" --file_service_type=sequential \
                --time_based --runtime="$T"
            run_lsio "$id" lsio-uring "$rep" --dir "$BIG" --pattern sequential --bs 256K \
                --direct --depth "$D" --backend uring --duration "${T}s"
            run_lsio "$id" lsio-pread "$rep" --dir "$BIG" --pattern sequential --bs 256K \
                --direct --depth "$D" --backend pread --io-threads "$D" --duration "${T}s"
        done
        ;;
    W3)
        N=$W3_THREADS
        D=$W3_DEPTH
        id="W3-t$N"
        printf '%s\tiops\t4K randread warm cache %sx64M %s threads, uring depth %s\n' \
            "$id" "$BIG_COUNT" "$N" "$D" >>"$OUT/meta.tsv"
        for rep in $(seq 1 "$REPS"); do
            w3 fio-psync --ioengine=psync --numjobs="$N" --rw=randread --bs=4k --norandommap \
                --randrepeat=0 --time_based --runtime="$T"
            w3 fio-io_uring --ioengine=io_uring --numjobs="$N" --iodepth="$D" --rw=randread \
                --bs=4k --norandommap --randrepeat=0 --time_based --runtime="$T"
            w3 lsio-uring --pattern random --bs 4K --threads "$N" --depth "$D" \
                --backend uring --duration "${T}s"
            w3 lsio-pread --pattern random --bs 4K --threads "$N" --io-threads 1 --depth "$D" \
                --backend pread --duration "${T}s"
        done
        ;;
    W4)
        D=$W4_DEPTH
        id="W4-d$D"
        printf '%s\tfiles\twhole-file 16K x %s %s cache depth %s\n' "$id" "$W4_COUNT" \
            "$([ "$COLD" = 1 ] && echo cold || echo WARM)" "$D" \
            >>"$OUT/meta.tsv"
        for rep in $(seq 1 "$REPS"); do
            # fio: opendir adds every file; bs = file size, so one read per file
            drop_caches
            run_fio "$id" fio-io_uring "$rep" --opendir="$SMALL" --ioengine=io_uring \
                --rw=read --bs=16k --iodepth="$D" --openfiles=$((2 * D))
            drop_caches
            run_lsio "$id" lsio-uring "$rep" --dir "$SMALL" --pattern whole-file \
                --depth "$D" --backend uring --passes 1 --duration 0
            drop_caches
            run_lsio "$id" lsio-uring-knownsize "$rep" --dir "$SMALL" --pattern whole-file \
                --known-size --depth "$D" --backend uring --passes 1 --duration 0
            drop_caches
            run_lsio "$id" lsio-pread "$rep" --dir "$SMALL" --pattern whole-file \
                --depth "$D" --backend pread --io-threads "$D" --passes 1 --duration 0
        done
        ;;
    *)
        log "unknown workload $W (use W1 W2 W3 W4)"
        exit 2
        ;;
    esac
done

echo "# load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/meta.tsv"
if [ "$(so_hash)" != "$SO_HASH" ]; then
    echo "# WARNING: the _lsio build changed during the run ($SO_HASH -> $(so_hash))" \
        >>"$OUT/meta.tsv"
fi
"$PYTHON" "$HERE/bench_table.py" "$OUT" | tee "$OUT/table.md"
