#!/usr/bin/env python3
"""Host side of the `hotplug` VM test (scripts/vm/run.sh).

Runs QEMU (the command after `--`), copies its serial console to LOG line by
line (carriage returns dropped), and when the guest prints

    VM-HOTPLUG-REQUEST device_del <id>

sends `device_del <id>` on QEMU's monitor socket (the recipe in
/work/shared/VM.md: the slot's attention button, then the guest's pciehp).
Each id is unplugged at most once. QEMU is killed if this script is
terminated (run.sh wraps it in `timeout`). Exit status: QEMU's.

usage: hotplug-harness.py LOG MONITOR_SOCKET -- qemu-system-x86_64 ...
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

ESC = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MARK = re.compile(r"VM-HOTPLUG-REQUEST device_del ([A-Za-z0-9_-]+)\s*$")


def read_until(s, out, done, secs=5):
    """Reads from `s` onto `out` until `done(out)`, EOF or `secs` pass."""
    end = time.time() + secs
    while not done(out) and time.time() < end:
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            break
        if not chunk:
            break
        out += chunk
    return out


def monitor(sock_path, command, log):
    """Sends one HMP command; returns what the monitor answered."""
    deadline = time.time() + 10
    while True:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock_path)
            break
        except OSError as e:
            if time.time() > deadline:
                return f"monitor connect failed: {e}"
            time.sleep(0.1)
    s.settimeout(2)
    out = b""
    try:
        # The greeting up to its prompt first, then the command. The
        # greeting can come in two reads (banner, then prompt): taking the
        # prompt of the greeting for the command's answer closed the socket
        # before QEMU had read the command, and the command was lost.
        out = read_until(s, out, lambda o: b"(qemu)" in o)
        s.sendall(command.encode() + b"\n")
        # Done when the monitor has echoed the command and prompted again.
        cmd = command.encode()
        out = read_until(s, out, lambda o: cmd in o and b"(qemu)" in o.split(cmd)[-1])
    finally:
        s.close()
    return out.decode(errors="replace").replace("\r", "")


def main():
    if len(sys.argv) < 5 or sys.argv[3] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    log_path, sock_path, cmd = sys.argv[1], sys.argv[2], sys.argv[4:]
    qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)

    def stop(signum, _frame):
        qemu.kill()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    done = set()
    with open(log_path, "w") as log:
        try:
            for raw in qemu.stdout:
                line = raw.decode(errors="replace").replace("\r", "")
                log.write(line)
                log.flush()
                m = MARK.search(line)
                if m and m.group(1) not in done:
                    dev = m.group(1)
                    done.add(dev)
                    t = time.time()
                    ans = monitor(sock_path, f"device_del {dev}", log)
                    # The monitor echoes the command with terminal redraws:
                    # keep only what it said after it (an error, or nothing).
                    ans = ESC.sub("", ans.rsplit(f"device_del {dev}", 1)[-1])
                    ans = " | ".join(a.strip() for a in ans.splitlines() if a.strip())
                    log.write(f"HARNESS: sent device_del {dev} in {time.time() - t:.2f}s; monitor: {ans}\n")
                    log.flush()
        finally:
            if qemu.poll() is None:
                try:
                    qemu.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    qemu.kill()
                    qemu.wait()
    return qemu.returncode


if __name__ == "__main__":
    sys.exit(main())
