#!/usr/bin/env bash
# Compare two nvmf-bench configurations (or two builds) in one sitting.
#
#   scripts/compare.sh [-n ROUNDS] [--label-a NAME] [--label-b NAME] -- 'CMD A' 'CMD B'
#
# Each CMD is an nvmf-bench command line without --output (this script adds
# one per run). The two run alternately (A B, B A, A B ...) ROUNDS times, so slow
# drift of a noisy 2-core machine hits both sides alike (which side runs
# first alternates too); the result is the median IOPS of each side and
# the ratio B/A, the median of each round's own B/A and how many rounds B
# won, plus every run's figure.
# Two-core runs also show the host-reactor cache-line round trip nvmf-bench
# measured before and after each (machine.json, as "before>after" ns): on a
# VM it moves between runs, and the IOPS with it. A machine-readable copy goes to compare.json in the output folder
# (COMPARE_OUT, default ./out/compare-<unix-time>).
#
# --max-rtt NS keeps only rounds whose two-core runs all measured a round
# trip of at most NS before and after (both sides of the round): a round
# at another placement of the two vCPUs is run again, up to 3 x ROUNDS
# rounds in all, so both sides are compared at one placement. The rounds
# set aside are counted in the output and compare.json. Runs that measure
# no round trip (one core) always count.
#
# Example: this build against an older one, loop inline QD128:
#   git worktree add /tmp/old <rev> && (cd /tmp/old && cargo build --release -p bench)
#   scripts/compare.sh -n 6 -- \
#     '/tmp/old/target/release/nvmf-bench --config configs/null-bench.toml -q 128 --inline --reactor-cores 0 --runtime 4s' \
#     'target/release/nvmf-bench --config configs/null-bench.toml -q 128 --inline --reactor-cores 0 --runtime 4s'
set -euo pipefail

rounds=6
label_a=A
label_b=B
max_rtt=""
while [ $# -gt 0 ]; do
    case "$1" in
        -n) rounds="$2"; shift 2 ;;
        --label-a) label_a="$2"; shift 2 ;;
        --label-b) label_b="$2"; shift 2 ;;
        --max-rtt) max_rtt="$2"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
if [ $# -ne 2 ]; then
    echo "compare.sh: need exactly two commands after --, got $#" >&2
    exit 2
fi
case "$rounds" in ''|*[!0-9]*) echo "compare.sh: -n takes a whole number, got '$rounds'" >&2; exit 2 ;; esac
case "$max_rtt" in *[!0-9]*) echo "compare.sh: --max-rtt takes whole nanoseconds, got '$max_rtt'" >&2; exit 2 ;; esac
cmd_a="$1"
cmd_b="$2"
out="${COMPARE_OUT:-./out/compare-$(date +%s)}"
mkdir -p "$out"

iops_of() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["total"]["mixed"]["iops"])' "$1"
}

# The host-reactor cache-line round trip nvmf-bench measured before the run
# (two-core runs only), or "-": on a VM it changes between runs, and the
# two-core IOPS with it.
rt_of() {
    python3 -c 'import json,sys
try:
    m = json.load(open(sys.argv[1]))
    a = m.get("core_probe_after")
    print("%.0f" % m["core_probe"]["round_trip_ns"] + ("" if not a else ">%.0f" % a["round_trip_ns"]))
except Exception: print("-")' "$1"
}

run_one() {
    local side="$1" cmd="$2" i="$3" dir
    dir="$out/$side-$i"
    # shellcheck disable=SC2086
    if ! $cmd --output "$dir" >"$dir.log" 2>&1; then
        echo "compare.sh: run $side #$i failed; see $dir.log" >&2
        tail -n 5 "$dir.log" >&2
        exit 1
    fi
    echo "$(iops_of "$dir/summary.json") $(rt_of "$dir/machine.json")"
}

a_runs=()
b_runs=()
a_rts=()
b_rts=()
# "yes" when every round trip in "B>A" figures (or "-") is within --max-rtt.
placed() {
    [ -z "$max_rtt" ] && { echo yes; return; }
    local x
    for x in ${1//>/ } ${2//>/ }; do
        [ "$x" = "-" ] && continue
        [ "$x" -le "$max_rtt" ] || { echo no; return; }
    done
    echo yes
}

i=0
tries=0
set_aside=0
while [ "$i" -lt "$rounds" ] && [ "$tries" -lt $((rounds * 3)) ]; do
    tries=$((tries + 1))
    # A first in odd tries, B first in even ones: whatever the run before
    # leaves behind (a warmer cache, a turbo budget spent, the host's
    # other load drifting) falls on both sides alike.
    if [ $((tries % 2)) -eq 1 ]; then
        read -r a rta <<<"$(run_one a "$cmd_a" "$tries")"
        read -r b rtb <<<"$(run_one b "$cmd_b" "$tries")"
    else
        read -r b rtb <<<"$(run_one b "$cmd_b" "$tries")"
        read -r a rta <<<"$(run_one a "$cmd_a" "$tries")"
    fi
    rt=""
    [ "$rta$rtb" != "--" ] && rt=" (core round trip $rta / $rtb ns)"
    if [ "$(placed "$rta" "$rtb")" != yes ]; then
        set_aside=$((set_aside + 1))
        awk -v la="$label_a" -v lb="$label_b" -v a="$a" -v b="$b" -v rt="$rt" -v m="$max_rtt" \
            'BEGIN { printf "set aside (round trip above %s ns): %s %.3f M IOPS, %s %.3f M IOPS%s\n", m, la, a / 1e6, lb, b / 1e6, rt }'
        continue
    fi
    i=$((i + 1))
    a_runs+=("$a")
    b_runs+=("$b")
    a_rts+=("$rta")
    b_rts+=("$rtb")
    awk -v i="$i" -v n="$rounds" -v la="$label_a" -v lb="$label_b" -v a="$a" -v b="$b" -v rt="$rt" \
        'BEGIN { printf "round %d/%d: %s %.3f M IOPS, %s %.3f M IOPS%s\n", i, n, la, a / 1e6, lb, b / 1e6, rt }'
done
if [ "$i" -eq 0 ]; then
    echo "compare.sh: no round within --max-rtt $max_rtt ns in $tries tries ($set_aside set aside)" >&2
    exit 1
fi

python3 - "$out/compare.json" "$label_a" "$label_b" "$cmd_a" "$cmd_b" \
    "${a_runs[*]}" "${b_runs[*]}" "${a_rts[*]}" "${b_rts[*]}" "$max_rtt" "$set_aside" <<'PY'
import json, statistics, sys
path, la, lb, ca, cb, ra, rb, ta, tb, max_rtt, aside = sys.argv[1:12]
def rts(v):
    # "before>after" ns per run, "-" when not measured
    return [None if x == "-" else [float(y) for y in x.split(">")] for x in v.split()]
a = [float(x) for x in ra.split()]
b = [float(x) for x in rb.split()]
ma, mb = statistics.median(a), statistics.median(b)
# Each round's own ratio: the two runs of a round share the machine's
# state of that minute, so their ratio is steadier than either side.
pairs = [y / x for x, y in zip(a, b) if x]
pm = statistics.median(pairs) if pairs else None
b_wins = sum(1 for r in pairs if r > 1)
def spread(v):
    m = statistics.median(v)
    return (max(v) - min(v)) / m if m else 0.0
res = {
    "a": {"label": la, "command": ca, "iops": a, "median": ma, "spread": spread(a),
          "core_round_trip_ns": rts(ta)},
    "b": {"label": lb, "command": cb, "iops": b, "median": mb, "spread": spread(b),
          "core_round_trip_ns": rts(tb)},
    "ratio_b_over_a": mb / ma if ma else None,
    "round_ratios_b_over_a": pairs,
    "round_ratio_median": pm,
    "rounds_b_faster": b_wins,
    "max_round_trip_ns": int(max_rtt) if max_rtt else None,
    "rounds_set_aside": int(aside),
}
json.dump(res, open(path, "w"), indent=2)
print(f"{la}: median {ma/1e6:.3f} M IOPS (spread {spread(a)*100:.1f} %)")
print(f"{lb}: median {mb/1e6:.3f} M IOPS (spread {spread(b)*100:.1f} %)")
print(f"ratio {lb}/{la}: {mb/ma:.3f}" if ma else "ratio: n/a")
if pm is not None:
    print(f"ratio by round: median {pm:.3f}, {lb} faster in {b_wins} of {len(pairs)} rounds")
if max_rtt:
    print(f"rounds kept: {len(a)} with core round trips at most {max_rtt} ns; set aside: {aside}")
print(f"results: {path}")
PY
