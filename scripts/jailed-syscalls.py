#!/usr/bin/env python3
"""List the syscalls Cordon device processes make after their seccomp filter is installed.

Usage: strace -f -qq --pidns-translation -o TRACE <test command>
       scripts/jailed-syscalls.py TRACE
A process is "jailed" from its successful seccomp(SECCOMP_SET_MODE_FILTER) call on; threads
it creates afterwards are jailed from birth. Prints `name count` sorted by count.
"""
import re
import sys
from collections import Counter

start_re = re.compile(r"^(\d+)\s+(\w+)\(")
resumed_re = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>")
result_re = re.compile(r"= (-?\d+)(?: /\* (\d+) in strace's PID NS \*/)?(?: \w+ \(.*\))?\s*$")

jailed = set()
seen = set()
pending = []
counts = Counter()
for line in open(sys.argv[1], errors="replace"):
    m = start_re.match(line)
    r = resumed_re.match(line)
    if m:
        pid, name = int(m.group(1)), m.group(2)
    elif r:
        pid, name = int(r.group(1)), r.group(2)
    else:
        continue
    seen.add(pid)
    res = result_re.search(line)
    if m and name == "seccomp" and "SECCOMP_SET_MODE_FILTER" in line and res and res.group(1) == "0":
        jailed.add(pid)
        continue
    if pid not in jailed:
        continue
    if m:
        counts[name] += 1
    if name in ("clone", "clone3") and res and int(res.group(1)) > 0:
        # `strace --pidns-translation` adds the host pid of a child in a PID namespace.
        jailed.add(int(res.group(2) or res.group(1)))
for name, n in counts.most_common():
    print(f"{name} {n}")
