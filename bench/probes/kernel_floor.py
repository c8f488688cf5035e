#!/usr/bin/env python3
"""Per-operation kernel cost of what every container needs, at the host's current state.

Run it (as root) on an idle host, then
again with thousands of containers up, to see which kernel operations grow with the count:
    python3 bench/probes/kernel_floor.py [ROUNDS]
Each namespace operation runs ROUNDS times in a forked child (a bare fork and exit is measured
alone and subtracted); the network namespace's teardown and a memory cgroup's offlining run
later in kernel workers and are not counted. Prints a Markdown table of p50 milliseconds."""
import ctypes, os, statistics, sys, tempfile, time
libc = ctypes.CDLL("libc.so.6", use_errno=True)
CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWIPC, CLONE_NEWUTS = 0x20000, 0x40000000, 0x20000000, 0x08000000, 0x04000000
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 100
MNT = tempfile.mkdtemp(prefix="kernel-floor-").encode()
# The v1 memory hierarchy, else the unified one (where the root enables memory for children).
CG = ("/sys/fs/cgroup/memory" if os.path.isdir("/sys/fs/cgroup/memory") else "/sys/fs/cgroup") + "/floor-probe"

def in_child(fn):
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        rc = 0
        try:
            fn()
        except Exception as e:
            sys.stderr.write(f"{e}\n"); rc = 1
        os._exit(rc)
    _, st = os.waitpid(pid, 0)
    if st != 0:
        raise SystemExit(f"child failed: {st}")
    return (time.perf_counter() - t) * 1e3

def check(r):
    if r != 0:
        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))

def nothing(): pass
def netns(): check(libc.unshare(CLONE_NEWNET))
def all_ns(): check(libc.unshare(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID))
def netns_sysfs():
    check(libc.unshare(CLONE_NEWNET | CLONE_NEWNS))
    check(libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None))  # MS_REC|MS_PRIVATE
    check(libc.mount(b"sysfs", MNT, b"sysfs", 0, None))
def mnt_tmpfs():
    check(libc.unshare(CLONE_NEWNS))
    check(libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None))
    check(libc.mount(b"tmpfs", MNT, b"tmpfs", 0, None))

def memcg():
    t = time.perf_counter(); os.mkdir(CG); os.rmdir(CG); return (time.perf_counter() - t) * 1e3

def p50(xs): return statistics.median(xs)
base = p50([in_child(nothing) for _ in range(ROUNDS)])
rows = [("fork + exit (subtracted below)", base)]
for name, fn in [("unshare net", netns), ("unshare net+mnt+ipc+uts+pid", all_ns),
                 ("unshare net+mnt, mount sysfs", netns_sysfs), ("unshare mnt, mount tmpfs", mnt_tmpfs)]:
    rows.append((name, p50([in_child(fn) for _ in range(ROUNDS)]) - base))
rows.append(("memory cgroup mkdir + rmdir", p50([memcg() for _ in range(ROUNDS)])))
print("| operation | p50 ms |")
print("|---|---:|")
for name, ms in rows:
    print(f"| {name} | {ms:.3f} |")
os.rmdir(MNT)
