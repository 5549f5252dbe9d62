/*
 * What a signal frame holds of the FP state, and what sigreturn takes back from it, as a
 * user program sees it. Run on the host and in a guest: a kernel that builds frames the way
 * the host's does prints the same lines (Linux's arch/x86/kernel/fpu/signal.c: the XSAVE area
 * 64-byte aligned, its size and features in the software bytes of the FXSAVE area,
 * FP_XSTATE_MAGIC2 after it, the handler started with a fresh FP state; at sigreturn a frame
 * with bad software bytes gives back x87 and SSE only, no frame a fresh state).
 *
 * Each case sets ymm0, zmm16 and MXCSR, sends itself SIGUSR1 with a raw tgkill (nothing
 * runs between setting and reading the registers but the handler) and prints what the
 * registers hold afterwards:
 *   plain   the handler changes nothing
 *   edit    the handler writes new values into the frame's xmm0 and zmm16
 *   fxonly  the same, and breaks FP_XSTATE_MAGIC2
 *   null    the handler sets uc_mcontext.fpregs to NULL
 * Built by tests/test_fpu_state.py with gcc -static -O1 -mavx512f.
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define MAGIC1 0x46505853U
#define MAGIC2 0x46505845U
#define XMM0_OFFSET 160

static int mode;
static unsigned int hi16_offset;	/* zmm16 in the standard format (CPUID 0xD, 7) */
static char frame_line[256], entry_line[128];

static void on_usr1(int sig, siginfo_t *si, void *ctx)
{
	ucontext_t *uc = ctx;
	unsigned char *fp = (unsigned char *)uc->uc_mcontext.fpregs;
	uint32_t magic1, extended, xstate_size, magic2 = 0, mxcsr;
	uint64_t xfeatures, bv, z16;

	(void)sig;
	(void)si;
	__asm__ volatile("stmxcsr %0\n\tvmovq %%xmm16, %1" : "=m"(mxcsr), "=r"(z16));
	snprintf(entry_line, sizeof(entry_line), "entry: mxcsr=%#x zmm16=%#lx", mxcsr,
		 (unsigned long)z16);
	memcpy(&magic1, fp + 464, 4);
	memcpy(&extended, fp + 468, 4);
	memcpy(&xfeatures, fp + 472, 8);
	memcpy(&xstate_size, fp + 480, 4);
	if (magic1 == MAGIC1)
		memcpy(&magic2, fp + xstate_size, 4);
	memcpy(&bv, fp + 512, 8);
	snprintf(frame_line, sizeof(frame_line),
		 "frame: uc_flags=%#lx align64=%d magic1=%d extended=%u xfeatures=%#lx "
		 "xstate_size=%u magic2=%d xstate_bv(ymm,hi16)=%d,%d",
		 uc->uc_flags & 1, ((uintptr_t)fp & 63) == 0, magic1 == MAGIC1, extended,
		 (unsigned long)xfeatures, xstate_size, magic2 == MAGIC2, (int)(bv >> 2 & 1),
		 (int)(bv >> 7 & 1));
	if (mode == 1 || mode == 2) {
		uint64_t x = 0x3333333333333333, z = 0x4444444444444444;

		memcpy(fp + XMM0_OFFSET, &x, 8);
		memcpy(fp + hi16_offset, &z, 8);
	}
	if (mode == 2)
		memset(fp + xstate_size, 0, 4);
	if (mode == 3)
		uc->uc_mcontext.fpregs = NULL;
}

static void run(const char *name)
{
	uint64_t ymm0_in[4] = { 0x2222222222222222, 0x2222222222222222, 0x2222222222222222,
				0x2222222222222222 };
	uint64_t zmm16_in[8], ymm0_out[4], zmm16_out[8];
	uint32_t mxcsr_in = 0x7f80, mxcsr_out;	/* round toward zero */
	long pid = getpid(), tid = syscall(SYS_gettid);

	for (int i = 0; i < 8; i++)
		zmm16_in[i] = 0x1111111111111111;
	__asm__ volatile("ldmxcsr %[mi]\n\t"
			 "vmovdqu64 %[zi], %%zmm16\n\t"
			 "vmovdqu %[yi], %%ymm0\n\t"
			 "syscall\n\t"
			 "vmovdqu64 %%zmm16, %[zo]\n\t"
			 "vmovdqu %%ymm0, %[yo]\n\t"
			 "stmxcsr %[mo]"
			 : [zo] "=m"(zmm16_out), [yo] "=m"(ymm0_out), [mo] "=m"(mxcsr_out)
			 : [zi] "m"(zmm16_in), [yi] "m"(ymm0_in), [mi] "m"(mxcsr_in),
			   "a"(SYS_tgkill), "D"(pid), "S"(tid), "d"(SIGUSR1)
			 : "rcx", "r11", "xmm0", "xmm16", "memory");
	__asm__ volatile("vpxord %%zmm16, %%zmm16, %%zmm16\n\tvzeroupper" ::: "xmm16");
	printf("%s: xmm0=%#lx ymm0.hi=%#lx zmm16=%#lx zmm16.top=%#lx mxcsr=%#x\n", name,
	       (unsigned long)ymm0_out[0], (unsigned long)ymm0_out[2],
	       (unsigned long)zmm16_out[0], (unsigned long)zmm16_out[7], mxcsr_out);
}

int main(void)
{
	struct sigaction sa;
	unsigned int eax, ebx, ecx, edx;
	static const char *names[] = { "plain", "edit", "fxonly", "null" };

	__cpuid_count(0xd, 7, eax, ebx, ecx, edx);
	hi16_offset = ebx;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_usr1;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGUSR1, &sa, NULL);
	for (mode = 0; mode < 4; mode++) {
		run(names[mode]);
		if (mode == 0)
			printf("%s\n%s\n", frame_line, entry_line);
	}
	return 0;
}
