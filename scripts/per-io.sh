#!/usr/bin/env bash
# Instructions, cache misses and branch misses per I/O of one nvmf-bench
# command line, by callgrind (counts, not wall clock: usable on a loaded
# machine). Two runs, SHORT and LONG I/Os, counting only the reactor loop
# (--toggle-collect='*run_loop*'); the difference divided by LONG-SHORT is
# the cost of one I/O, start-up and shutdown cancelled out.
#
#   scripts/per-io.sh [-b BIN] [-c CONFIG] [-n SHORT,LONG] -- NVMF-BENCH-ARGS...
#   scripts/per-io.sh -- --target direct --inline -q 128
#   scripts/per-io.sh -- --inline -q 1
#
# CONFIG defaults to configs/null-bench.toml with idle_backoff_us = 1000 (an
# idle reactor must not spin under valgrind) and --reactor-cores 0 is added.
# Prints: Ir (instructions), Ir without the bench's once-a-second interval
# closes (under valgrind a run lasts ~100x longer, so those would add a
# wall-clock-dependent share), L1 data misses (D1mr+D1mw) and branch
# mispredictions (Bcm+Bim) per I/O, then the per-I/O breakdown by stage.
# Output files stay in PER_IO_OUT (default ./out/per-io-<unix time>) for
# callgrind_annotate.
set -euo pipefail
bin=target/release/nvmf-bench
config=""
counts=100000,300000
while [ $# -gt 0 ]; do
    case "$1" in
        -b) bin="$2"; shift 2 ;;
        -c) config="$2"; shift 2 ;;
        -n) counts="$2"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
short=${counts%,*}
long=${counts#*,}
out="${PER_IO_OUT:-./out/per-io-$(date +%s)}"
mkdir -p "$out"
if [ -z "$config" ]; then
    config="$out/null-bench-valgrind.toml"
    sed 's/^cores = \[0\].*/cores = [0]\nidle_backoff_us = 1000/' configs/null-bench.toml >"$config"
fi
for n in "$short" "$long"; do
    valgrind --tool=callgrind --toggle-collect='*run_loop*' --cache-sim=yes --branch-sim=yes \
        --callgrind-out-file="$out/cg.$n.out" "$bin" --config "$config" --reactor-cores 0 \
        --io-count "$n" --output "$out/bench-$n" "$@" >"$out/cg.$n.log" 2>&1
    # A run cut short (a keep-alive timeout of a starved host thread under
    # valgrind ends a long run, for one) would make the difference a lie.
    if ! grep -q "elapsed .* $n I/Os" "$out/bench-$n/summary.txt" || grep -q failed "$out/bench-$n/summary.txt"; then
        echo "per-io.sh: the $n-I/O run did not complete $n I/Os cleanly; see $out/bench-$n/summary.txt" >&2
        echo "per-io.sh: try smaller counts, e.g. -n 30000,90000" >&2
        exit 1
    fi
done
python3 - "$out/cg.$short.out" "$out/cg.$long.out" $((long - short)) <<'PY'
import collections, re, subprocess, sys
EV = ['Ir', 'D1mr', 'D1mw', 'Bcm', 'Bim']
def costs(f):
    out = subprocess.run(['callgrind_annotate', '--inclusive=no', '--auto=no', '--threshold=100',
                          '--show=' + ','.join(EV), f], capture_output=True, text=True).stdout
    d = collections.Counter(); on = False
    for l in out.splitlines():
        if 'file:function' in l: on = True; continue
        if not on or not l.strip() or l.startswith('--'): continue
        parts = re.sub(r'\(\s*[0-9.]+%\)', '', l).split()
        nums = []
        while parts and (parts[0].replace(',', '').isdigit() or parts[0] == '.'):
            p = parts.pop(0); nums.append(0 if p == '.' else int(p.replace(',', '')))
        # file:function, the file being where the inlined code came from:
        # a job's step holds the host's submit, its reap the job's handler.
        fn = ' '.join(parts).split(' [')[0]
        for k, v in zip(EV, nums): d[(fn, k)] += v
    inc = subprocess.run(['callgrind_annotate', '--inclusive=yes', '--auto=no', '--threshold=100',
                          '--show=Ir', f], capture_output=True, text=True).stdout
    ci = max([int(l.split()[0].replace(',', '')) for l in inc.splitlines()
              if 'Recorder::close_interval' in l and l.split()[0].replace(',', '').isdigit()] or [0])
    return d, ci
(a, ca), (b, cb) = costs(sys.argv[1]), costs(sys.argv[2])
n = int(sys.argv[3])
per = lambda fn, k: (b[(fn, k)] - a[(fn, k)]) / n
fns = {k[0] for k in list(a) + list(b)}
tot = {k: sum(per(fn, k) for fn in fns) for k in EV}
print('Ir/IO %.0f  Ir/IO without interval closes %.0f  L1 D misses/IO %.2f  branch misses/IO %.2f'
      % (tot['Ir'], tot['Ir'] - (cb - ca) / n, tot['D1mr'] + tot['D1mw'], tot['Bcm'] + tot['Bim']))
# The job steps its port by type (AnyPort), so the host's submit is
# compiled into JobRun::step and the job's completion handler into the
# host's reap (HostQpair::finish), or the direct port's poll closure: host
# code is told from the job's by the file it came from, and job code
# inlined into a backend's function too. Standard-library code inlined
# into the job's or host's functions counts to the job.
HOST_FILES = ['transport-loop/', 'doorbell_ring.rs', '/spec/', 'host_cmds.rs', 'nvmf/transport.rs']
HOST_FNS = ['JobRun::step', 'HostQpair::', 'LoopPort']
GROUPS = [
    ('host: SQE build + SQ push, CQ reap',
     lambda fl, fn: any(p in fl for p in HOST_FILES) and any(p in fn for p in HOST_FNS)),
    ('bench job (step, workload, stats record)',
     lambda fl, fn: any(p in fn for p in ['runner::JobRun', '::stats::', 'InlineJob', 'rand::', 'Workload',
                                          'HostQpair::finish', 'LoopPort as jobengine'])
     or any(p in fl for p in ['jobengine/', '/hist.rs', '/rand-'])),
    ('backend: null submit/poll, check_io, direct port', ['NullChannel', 'check_io', 'DirectPort']),
    ('target: fetch, decode, validate, ns lookup', ['PollGroup::exec', '::recv', 'io::plan']),
    ('target: completion routing, CQE build + push', ['poll_channels', 'respond', '::send']),
    ('per pass: reactor loop, poll-group pass', ['run_loop', 'PollGroup::poll', 'PgPoller', 'SegQueue']),
    ('clock reads', ['Timespec', 'clock_gettime']),
]
used = set()
print('| stage | Ir/IO | L1 D misses/IO | branch misses/IO |')
print('|---|---|---|---|')
def matches(key, pats):
    fl, _, fn = key.partition(':')
    if callable(pats):
        return pats(fl, fn)
    return any(p in fn for p in pats)
for name, pats in GROUPS + [('other (copies, Vec glue)', [''])]:
    mine = {fn for fn in fns - used if matches(fn, pats)}
    used |= mine
    s = lambda k: sum(per(fn, k) for fn in mine)
    print('| %s | %.0f | %.2f | %.2f |' % (name, s('Ir'), s('D1mr') + s('D1mw'), s('Bcm') + s('Bim')))
PY
