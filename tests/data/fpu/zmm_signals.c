/*
 * Does a signal handler's AVX-512 state leak into the code it interrupted?
 *
 * The main loop keeps k1, zmm15 and zmm16 at zero and checks them between its own
 * instructions; a SIGALRM handler (every millisecond) sets all three to ones. A kernel that
 * saves and restores the whole XSAVE area around the handler gives the loop its zeros back;
 * Debian's UML 6.1 saves 832 bytes (x87, SSE, the AVX upper halves of ymm0-15), so it loses
 * k1 (opmask), the upper half of zmm15 (ZMM_Hi256) and all of zmm16 (Hi16_ZMM).
 *
 * Usage: zmm_signals [SIGNALS [SECONDS]] -- runs until SIGNALS signals came (default 200)
 * or SECONDS passed (default 60), then prints one line:
 *   zmm: signals S corrupted C k1 K zmm15 H zmm16 Z
 * C counts the signals after which any register was wrong (at most one per signal: the loop
 * puts zeros back after a detection); K, H, Z count each register's detections.
 * Built by tests/test_fpu_state.py with gcc -static -O1 -mavx512f.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static volatile long hits;

static void on_alarm(int sig)
{
	(void)sig;
	__asm__ volatile("vpternlogd $0xff, %%zmm16, %%zmm16, %%zmm16\n\t"
			 "vpternlogd $0xff, %%zmm15, %%zmm15, %%zmm15\n\t"
			 "kxnorw %%k1, %%k1, %%k1" ::: "xmm15", "xmm16", "k1");
	hits++;
}

static void zero(void)
{
	__asm__ volatile("vpxord %%zmm16, %%zmm16, %%zmm16\n\t"
			 "vpxord %%zmm15, %%zmm15, %%zmm15\n\t"
			 "kxorw %%k1, %%k1, %%k1" ::: "xmm15", "xmm16", "k1");
}

int main(int argc, char **argv)
{
	long want = argc > 1 ? atol(argv[1]) : 200, seconds = argc > 2 ? atol(argv[2]) : 60;
	long corrupted = 0, bad_k1 = 0, bad_hi = 0, bad_16 = 0;
	time_t end = time(NULL) + seconds;
	struct sigaction sa;
	struct itimerval it = { { 0, 1000 }, { 0, 1000 } };

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	zero();
	setitimer(ITIMER_REAL, &it, NULL);
	while (hits < want && time(NULL) < end) {
		for (long i = 0; i < 1000000; i++) {
			unsigned int k1, hi, z16;

			/* k1 itself; any set bit in zmm15's 512 bits and in zmm16's */
			__asm__ volatile("kmovw %%k1, %0\n\t"
					 "vptestmq %%zmm15, %%zmm15, %%k2\n\t"
					 "kmovw %%k2, %1\n\t"
					 "vptestmq %%zmm16, %%zmm16, %%k2\n\t"
					 "kmovw %%k2, %2"
					 : "=r"(k1), "=r"(hi), "=r"(z16) : : "k2");
			if (k1 | hi | z16) {
				corrupted++;
				bad_k1 += k1 != 0;
				bad_hi += hi != 0;
				bad_16 += z16 != 0;
				zero();
			}
		}
	}
	it.it_value.tv_usec = it.it_interval.tv_usec = 0;
	setitimer(ITIMER_REAL, &it, NULL);
	printf("zmm: signals %ld corrupted %ld k1 %ld zmm15 %ld zmm16 %ld\n", hits, corrupted,
	       bad_k1, bad_hi, bad_16);
	return 0;
}
