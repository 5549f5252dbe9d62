/*
 * glibc's string functions under signals: do they still compute the right answers?
 *
 * On CPUs with AVX512VL/BW glibc picks EVEX variants of memchr, strlen, memcmp, strchr...
 * that keep values in ymm16-31 and k0-7 across their loops (memchr holds the byte it looks
 * for in ymm16), and memset's broadcast leaves the fill byte in ymm16/zmm16. A kernel that
 * loses that state across a signal (Debian's UML 6.1 saves 832 bytes of the XSAVE area)
 * makes the main loop's calls below return wrong answers, or read past their buffers,
 * whenever the SIGALRM handler's own glibc calls ran in the middle of one.
 *
 * Usage: glibc_signals [SIGNALS [SECONDS]] -- runs until SIGNALS signals came (default 200)
 * or SECONDS passed (default 60), then prints one line:
 *   glibc: signals S wrong W memchr A strlen B memcmp C strchr D
 * or, if a call ran off its buffer into unmapped memory:
 *   glibc: signals S crashed
 * Built by tests/test_fpu_state.py with gcc -static -O1 -fno-builtin.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define SIZE (64 * 1024)

static char hay[SIZE], str[SIZE + 1], a[SIZE], b[SIZE];
static char junk[4096], junk2[4096];
static volatile long hits;

static void on_alarm(int sig)
{
	(void)sig;
	/* leave other values in the vector registers glibc's EVEX code uses */
	memset(junk, 0x80 | (hits & 0x7f), sizeof(junk) - 1);
	memcpy(junk2, junk, sizeof(junk));
	hits += strlen(junk2) != 0;
}

static void on_segv(int sig)
{
	char line[64];
	int n = snprintf(line, sizeof(line), "glibc: signals %ld crashed\n", hits);

	(void)sig;
	write(1, line, n);
	_exit(2);
}

int main(int argc, char **argv)
{
	long want = argc > 1 ? atol(argv[1]) : 200, seconds = argc > 2 ? atol(argv[2]) : 60;
	long bad_chr = 0, bad_len = 0, bad_cmp = 0, bad_strchr = 0;
	time_t end = time(NULL) + seconds;
	struct sigaction sa;
	struct itimerval it = { { 0, 1000 }, { 0, 1000 } };

	memset(hay, 'a', SIZE);
	hay[SIZE - 1] = 'Z';
	memset(str, 'b', SIZE);
	str[SIZE] = 0;
	for (int i = 0; i < SIZE; i++)
		a[i] = b[i] = (char)(i * 7 + 1);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_segv;
	sigaction(SIGSEGV, &sa, NULL);
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &it, NULL);
	while (hits < want && time(NULL) < end) {
		for (int i = 0; i < 1000; i++) {
			/* the buffers may have changed: keeps the compiler from hoisting the calls */
			__asm__ volatile("" ::: "memory");
			bad_chr += memchr(hay, 'Z', SIZE) != hay + SIZE - 1;
			bad_len += strlen(str) != SIZE;
			bad_cmp += memcmp(a, b, SIZE) != 0;
			bad_strchr += strchr(str, 'Z') != NULL;
		}
	}
	it.it_value.tv_usec = it.it_interval.tv_usec = 0;
	setitimer(ITIMER_REAL, &it, NULL);
	printf("glibc: signals %ld wrong %ld memchr %ld strlen %ld memcmp %ld strchr %ld\n", hits,
	       bad_chr + bad_len + bad_cmp + bad_strchr, bad_chr, bad_len, bad_cmp, bad_strchr);
	return 0;
}
