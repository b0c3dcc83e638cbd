/*
 * exec-moved CPU N: what starting a program on another CPU costs the
 * machine itself, without smpc. From CPU 0 it forks and executes /bin/true
 * N times, the child first moving itself to CPU (sched_setaffinity), and
 * prints the mean time from fork until the new program is in place (the
 * parent waits for its close-on-exec pipe to close, as Go's os/exec does).
 * Run with CPU 0 and with another CPU: the difference is the floor under
 * smpc bench's exec-placed, whose placed programs start on another OSlet's
 * CPUs (docs/performance.md).
 *
 *   gcc -O2 -o /var/tmp/exec-moved e2e/testdata/exec-moved.c
 *   /var/tmp/exec-moved 0 2000; /var/tmp/exec-moved 1 2000
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof set, &set) != 0) {
		perror("sched_setaffinity");
		_exit(1);
	}
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: exec-moved CPU N\n");
		return 2;
	}
	int cpu = atoi(argv[1]), n = atoi(argv[2]);
	pin(0);
	double total = 0;
	for (int i = 0; i < n; i++) {
		int p[2];
		if (pipe2(p, O_CLOEXEC) != 0) {
			perror("pipe2");
			return 1;
		}
		double start = now_us();
		pid_t pid = fork();
		if (pid == 0) {
			char *args[] = {"/bin/true", NULL};
			pin(cpu);
			execv(args[0], args);
			_exit(127);
		}
		close(p[1]);
		char c;
		if (read(p[0], &c, 1) != 0) /* 0: the exec closed the pipe */
			return 1;
		total += now_us() - start;
		close(p[0]);
		waitpid(pid, NULL, 0);
	}
	printf("fork+exec of /bin/true moved to CPU %d: %.0f us\n", cpu, total / n);
	return 0;
}
