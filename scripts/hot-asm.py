#!/usr/bin/env python3
"""Instructions of one function, annotated with how often each ran per I/O.

callgrind's own annotator works by source line; in a release build whose
functions inline half the crate, a line of `poll_group.rs` can stand for a
copy made three calls away. This joins callgrind's per-instruction counts
(`--dump-instr=yes`) with `objdump -d`, so a 112-byte struct copied through
the stack shows as the fourteen moves it is.

  valgrind --tool=callgrind --toggle-collect='*run_loop*' --dump-instr=yes \\
      --callgrind-out-file=cg.out target/release/nvmf-bench --config C \\
      --reactor-cores 0 --io-count 200000 --inline -q 128
  scripts/hot-asm.py cg.out 'PollGroup::exec$' target/release/nvmf-bench 200000

BINARY must be the very file that was profiled (addresses are matched; a
rebuild moves them). FUNCTION is a regular expression on callgrind's
demangled function name.
Prints each instruction that ran at least MIN times per I/O (default 0.5),
then the function's total per I/O. The count includes start-up and
shutdown, so use a long run (or compare two, as scripts/per-io.sh does).
"""
import collections
import re
import subprocess
import sys


def rel(tok, prev):
    # callgrind's position compression: absolute, +delta, -delta or * (same).
    if tok == '*':
        return prev
    if tok[0] in '+-':
        return prev + int(tok, 0)
    return int(tok, 0)


def counts(path, fn_re):
    ir = collections.Counter()
    names, cur, addr, line, call_cost_next = {}, None, 0, 0, False
    with open(path) as f:
        for raw in f:
            l = raw.rstrip('\n')
            m = re.match(r'(c?)fn=\((\d+)\)(?: (.*))?', l)
            if m:
                if m.group(3):
                    names[m.group(2)] = m.group(3)
                if not m.group(1):
                    cur = names.get(m.group(2))
                continue
            if l.startswith('calls='):
                # The next cost line is the call's inclusive cost.
                call_cost_next = True
                continue
            if not l or l[0] not in '+-*0123456789':
                continue
            parts = l.split()
            addr = rel(parts[0], addr)
            if len(parts) > 1:
                line = rel(parts[1], line)
            if call_cost_next:
                call_cost_next = False
                continue
            if cur and fn_re.search(cur) and len(parts) > 2:
                ir[addr] += int(parts[2])
    return ir


def main():
    if len(sys.argv) < 5:
        print(__doc__)
        sys.exit(2)
    path, fn, binary, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    floor = float(sys.argv[5]) if len(sys.argv) > 5 else 0.5
    ir = counts(path, re.compile(fn))
    if not ir:
        sys.exit(f'no instruction of a function matching {fn!r} in {path}')
    dis = subprocess.run(['objdump', '-d', '--no-show-raw-insn', '-C', binary],
                         capture_output=True, text=True, check=True).stdout
    total = 0.0
    for l in dis.splitlines():
        m = re.match(r'\s*([0-9a-f]+):\s*(.*)', l)
        if not m:
            continue
        c = ir.get(int(m.group(1), 16))
        if c is None:
            continue
        total += c / n
        if c / n >= floor:
            print('%7.2f  %s' % (c / n, m.group(2)[:100]))
    print('total per I/O: %.1f' % total)


if __name__ == '__main__':
    main()
