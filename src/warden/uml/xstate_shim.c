/*
 * xstate_shim.c - lets an unmodified UML 6.1 kernel save and restore its guests' FPU state on
 * hosts whose XSAVE area is larger than the buffer UML was compiled with.
 *
 * Why: arch/x86/um/os-Linux/registers.c passes a fixed 2696-byte buffer (HOST_FP_SIZE in
 * arch/x86/um/user-offsets.c: enough for x87, SSE, AVX and AVX-512) to
 * ptrace(PTRACE_SETREGSET, NT_X86_XSTATE). The host's xstateregs_set() (arch/x86/kernel/fpu/
 * regset.c) refuses any size but the host's full XSAVE size with EFAULT. On CPUs with AMX
 * (tile state: 8 KiB more) that size is about 11 KiB, so UML's first return to a guest process
 * fails with "userspace - ptrace set fp regs failed, errno = 14" and init dies.
 *
 * What: linux.uml is dynamically linked, so warden loads this file with LD_PRELOAD. It wraps
 * ptrace(): GETREGSET reads the whole host area into a static buffer and hands UML the part it
 * asked for; SETREGSET pads UML's part to the host size with the features UML cannot know
 * about (bits at or past the end of its buffer) marked as in their initial state. Guests never
 * own such state: enabling AMX needs arch_prctl(ARCH_REQ_XCOMP_PERM), a host syscall that UML
 * never makes for them. Every other request goes straight to the system call.
 *
 * The buffer is static, not on the stack: UML calls this on its own kernel stacks (16 KiB).
 * UML issues ptrace from one host thread at a time, so one buffer suffices.
 *
 * The same file carries a second fix, for a kernel that runs as pid 1 of its own pid namespace
 * (as warden runs every guest): after a panic UML ends in uml_abort() (arch/um/os-Linux/
 * util.c), which loops on kill(getpid(), SIGABRT) until the signal kills it. A namespace's init
 * never receives signals it has no handler for, so the loop spins at 100% CPU forever. kill()
 * below turns that one call into _exit(128 + SIGABRT), the status a shell reports for an abort.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define NT_X86_XSTATE 0x202
#define XSAVE_HEADER_OFFSET 512 /* XSTATE_BV, the first u64 of the XSAVE header */
#define XSAVE_MAX (64 * 1024)

static unsigned char host_area[XSAVE_MAX];
static size_t host_size; /* learnt from the first GETREGSET; 0 until then */

/* Standard-format offsets of the features a given buffer length can hold completely. */
static uint64_t features_within(size_t len)
{
	/* x87 and SSE live in the legacy area; each later feature's offset and size come from
	 * CPUID leaf 0xD, which we read once. */
	static uint64_t cached_len = 0, cached_mask = 0;
	if (cached_len == len)
		return cached_mask;
	uint64_t mask = 0x3; /* x87, SSE */
	for (unsigned i = 2; i < 63; i++) {
		unsigned eax, ebx, ecx, edx;
		__asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(0xd), "c"(i));
		if (eax == 0)
			continue;          /* feature not supported */
		if ((uint64_t)ebx + eax <= len)
			mask |= 1ULL << i; /* eax = size, ebx = offset in the standard format */
	}
	cached_len = len;
	cached_mask = mask;
	return mask;
}

static long raw_ptrace(long req, pid_t pid, void *addr, void *data)
{
	return syscall(SYS_ptrace, req, pid, addr, data);
}

static long xstate_get(pid_t pid, struct iovec *iov)
{
	struct iovec whole = { host_area, host_size ? host_size : sizeof(host_area) };
	if (raw_ptrace(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE, &whole) < 0)
		return -1;
	host_size = whole.iov_len;
	size_t n = iov->iov_len < whole.iov_len ? iov->iov_len : whole.iov_len;
	memcpy(iov->iov_base, host_area, n);
	iov->iov_len = n;
	return 0;
}

static long xstate_set(pid_t pid, struct iovec *iov)
{
	if (host_size == 0 || iov->iov_len >= host_size || iov->iov_len <= XSAVE_HEADER_OFFSET + 8)
		return raw_ptrace(PTRACE_SETREGSET, pid, (void *)NT_X86_XSTATE, iov);
	memcpy(host_area, iov->iov_base, iov->iov_len);
	memset(host_area + iov->iov_len, 0, host_size - iov->iov_len);
	uint64_t bv;
	memcpy(&bv, host_area + XSAVE_HEADER_OFFSET, sizeof(bv));
	bv &= features_within(iov->iov_len);
	memcpy(host_area + XSAVE_HEADER_OFFSET, &bv, sizeof(bv));
	struct iovec whole = { host_area, host_size };
	return raw_ptrace(PTRACE_SETREGSET, pid, (void *)NT_X86_XSTATE, &whole);
}

long ptrace(enum __ptrace_request request, ...)
{
	va_list ap;
	va_start(ap, request);
	pid_t pid = va_arg(ap, pid_t);
	void *addr = va_arg(ap, void *);
	void *data = va_arg(ap, void *);
	va_end(ap);

	if ((long)addr == NT_X86_XSTATE && data != NULL) {
		if (request == PTRACE_GETREGSET)
			return xstate_get(pid, data);
		if (request == PTRACE_SETREGSET)
			return xstate_set(pid, data);
	}
	if (request == PTRACE_PEEKTEXT || request == PTRACE_PEEKDATA || request == PTRACE_PEEKUSER) {
		/* glibc's wrapper returns the word read; the system call stores it at `data`. */
		long word;
		if (raw_ptrace(request, pid, addr, &word) < 0)
			return -1;
		errno = 0;
		return word;
	}
	return raw_ptrace(request, pid, addr, data);
}

int kill(pid_t pid, int sig)
{
	if (sig == SIGABRT && getpid() == 1 && (pid == 1 || pid == 0))
		_exit(128 + SIGABRT);
	return (int)syscall(SYS_kill, pid, sig);
}
