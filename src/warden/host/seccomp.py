"""A seccomp allowlist for the host processes of a jailed guest (issue 4, item 5).

Why UML's design allows one: every system call a guest program makes is intercepted with
PTRACE_SYSEMU by the UML kernel (arch/um/os-Linux/skas/process.c) and emulated; the host
skips it. In the host kernel's syscall entry (kernel/entry/common.c, syscall_trace_enter)
ptrace comes first and, under SYSEMU, returns before seccomp runs: guest system calls never
reach the filter. What does reach it are the host calls UML itself makes: the kernel process
and its helper threads (ptrace, wait4, timers, epoll, reads and writes on its disks and
consoles, mconsole sockets...) and the stub code in each guest address space, which maps and
unmaps memory on the kernel's behalf. That set is small and stable, so it is an allowlist.

The list was measured, not guessed: ftrace's raw_syscalls:sys_enter tracepoint fires after
seccomp in the same function, so it sees exactly what a filter would see. It counted the
calls of every process named linux.uml (or linux, a kernel warden built) on a busy test
host for 40 minutes (every feature's tests: consoles, NICs, tty logs, the honeypot kernel,
Debian and busybox guests) and of jailed guests put through a workload of their own (boot,
shell, disk and memory use, every mconsole command warden sends, pause, reboot, stop, panic,
kill). docs/decisions/2026-11-29-cgroups-and-jails.md, "Jails", has the numbers. A few calls
no run made are allowed for paths named below (RARE).

Anything else fails with ENOSYS (not a kill: a missed rare path then shows as a clear error in
the kernel's log rather than a dead guest, and glibc falls back from clone3 to clone on it).
Two allowed calls are narrowed by their arguments: clone may not ask for a new namespace
(no user namespace, the door to most of the host kernel's attack surface), and socket only
opens AF_UNIX sockets (the mconsole; a guest's network is a passed fd).
"""

import errno
import struct

# x86-64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl; a stable ABI).
# Every call seen, most frequent first (the filter tests them in this order), with the count
# summed over the measuring runs (the long runs left out the frequent calls, so the counts of
# the first dozen come from the shorter runs that kept them).
MEASURED: dict[str, int] = {
    "epoll_ctl": 233,  # 31193148
    "ptrace": 101,  # 4612794
    "writev": 20,  # 4003872
    "readv": 19,  # 3475258
    "wait4": 61,  # 1080876
    "sendto": 44,  # 593151
    "timer_gettime": 224,  # 436304
    "rt_sigsuspend": 130,  # 436211
    "mmap": 9,  # 332516
    "clone": 56,  # 332025
    "sigaltstack": 131,  # 287503
    "modify_ldt": 154,  # 287317
    "recvfrom": 45,  # 237883
    "ioctl": 16,  # 196548
    "write": 1,  # 188884
    "madvise": 28,  # 186860
    "munmap": 11,  # 130176
    "pwrite64": 18,  # 125534
    "poll": 7,  # 73246
    "openat": 257,  # 55215
    "rt_sigreturn": 15,  # 50600
    "newfstatat": 262,  # 49720
    "fcntl": 72,  # 42135
    "epoll_wait": 232,  # 41613
    "rt_sigprocmask": 14,  # 22883
    "fallocate": 285,  # 21891
    "pread64": 17,  # 20143
    "timer_settime": 223,  # 19102
    "getpid": 39,  # 17008
    "kill": 62,  # 16943
    "rt_sigaction": 13,  # 16646
    "getrandom": 318,  # 15482
    "arch_prctl": 158,  # 14543
    "close": 3,  # 14203
    "read": 0,  # 11786
    "mprotect": 10,  # 5820
    "set_robust_list": 273,  # 5663
    "getppid": 110,  # 5564
    "lseek": 8,  # 4961
    "exit_group": 231,  # 4609
    "brk": 12,  # 3630
    "prlimit64": 302,  # 3478
    "access": 21,  # 3327
    "socketpair": 53,  # 3285
    "mkdir": 83,  # 2255
    "uname": 63,  # 2230
    "socket": 41,  # 1990
    "set_tid_address": 218,  # 1210
    "rseq": 334,  # 1210
    "setsid": 112,  # 1154
    "statfs": 137,  # 1115
    "fsync": 74,  # 1115
    "epoll_create": 213,  # 1115
    "timer_create": 222,  # 1115
    "bind": 49,  # 1110
    "getcwd": 79,  # 488
    "chdir": 80,  # 488
    "getdents64": 217,  # 189
    "unlink": 87,  # 111
    "rmdir": 84,  # 72
    "restart_syscall": 219,  # 36
    "recvmmsg": 299,  # 18
    "execve": 59,  # 8
}
# Allowed without being seen, each for a path no measured run took (arch/um sources).
RARE: dict[str, tuple[int, str]] = {
    "exit": (60, "a helper thread ending by itself"),
}

# CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET (clone()'s low byte is the exit
# signal, so CLONE_NEWTIME, 0x80, exists only for clone3 and unshare, both refused anyway)
CLONE_NAMESPACES = 0x7E020000
AF_UNIX = 1

# struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; } (linux/filter.h)
_INSN = struct.Struct("=HBBI")
LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
RET_K = 0x06  # BPF_RET | BPF_K
# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
OFF_NR, OFF_ARCH, OFF_ARG0 = 0, 4, 16  # args[0]'s low word on a little-endian host
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
RET_KILL_PROCESS = 0x80000000
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000


def allowed() -> dict[str, int]:
    return {**MEASURED, **{name: nr for name, (nr, _why) in RARE.items()}}


def compile_filter(errno_default: int = errno.ENOSYS) -> bytes:
    """The BPF program (sock_filter array, host byte order) for PR_SET_SECCOMP."""
    prog: list[tuple[int, int, int, int]] = [
        (LD_W_ABS, 0, 0, OFF_ARCH),
        (JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (RET_K, 0, 0, RET_KILL_PROCESS),  # another ABI (i386 via int 0x80): never UML's
        (LD_W_ABS, 0, 0, OFF_NR),
        (JGE_K, 0, 1, X32_SYSCALL_BIT),
        (RET_K, 0, 0, RET_ERRNO | errno_default),
    ]
    special = {MEASURED["clone"], MEASURED["socket"]}
    for nr in allowed().values():  # most frequent first: most calls pass after a few tests
        if nr not in special:
            prog += [(JEQ_K, 0, 1, nr), (RET_K, 0, 0, RET_ALLOW)]
    # clone: no new namespace of any kind. socket: AF_UNIX only. (A still holds nr here.)
    prog += [
        (JEQ_K, 0, 4, MEASURED["clone"]),
        (LD_W_ABS, 0, 0, OFF_ARG0),
        (JSET_K, 1, 0, CLONE_NAMESPACES),
        (RET_K, 0, 0, RET_ALLOW),
        (RET_K, 0, 0, RET_ERRNO | errno.EPERM),
        (JEQ_K, 0, 4, MEASURED["socket"]),
        (LD_W_ABS, 0, 0, OFF_ARG0),
        (JEQ_K, 0, 1, AF_UNIX),
        (RET_K, 0, 0, RET_ALLOW),
        (RET_K, 0, 0, RET_ERRNO | errno.EAFNOSUPPORT),
        (RET_K, 0, 0, RET_ERRNO | errno_default),
    ]
    return b"".join(_INSN.pack(*insn) for insn in prog)
