// SPDX-License-Identifier: Apache-2.0
/* sendloop: the cost of one send() and one recv() of a small message over a
 * loopback socket pair, in one thread, so that what the kernel does per call
 * (and what a BPF program attached to that path adds) is all that is timed.
 *
 *   sendloop tcp|udp|udpu ITERATIONS [-s BYTES] [-c CPU] [-w WARMUP]
 *
 * Each iteration is send() of BYTES on socket a, then recv() of BYTES on
 * socket b (blocking; on loopback the data is already queued when send()
 * returns). udpu: unconnected UDP sockets, sendto() with b's address. Prints one JSON line:
 *   {"proto":..,"iterations":N,"bytes":B,"ns_per_pair":..,"ns_per_call":..}
 * ns_per_call = elapsed / (2 * N): one call is a send() or a recv().
 * Connects only to 127.0.0.1. Built by bench/run.py into bench/build/. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_ITER 100000000L
#define MAX_BYTES 65536

static void die(const char *what)
{
	fprintf(stderr, "sendloop: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static struct sockaddr_in loopback(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

static void tcp_pair(int *a, int *b)
{
	struct sockaddr_in addr = loopback();
	socklen_t len = sizeof(addr);
	int one = 1;
	int l = socket(AF_INET, SOCK_STREAM, 0);

	if (l < 0 || bind(l, (struct sockaddr *)&addr, sizeof(addr)) || listen(l, 1) ||
	    getsockname(l, (struct sockaddr *)&addr, &len))
		die("listen");
	*a = socket(AF_INET, SOCK_STREAM, 0);
	if (*a < 0 || connect(*a, (struct sockaddr *)&addr, sizeof(addr)))
		die("connect");
	*b = accept(l, NULL, NULL);
	if (*b < 0)
		die("accept");
	close(l);
	/* no Nagle: every send() leaves at once, like a request/response protocol */
	setsockopt(*a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(*b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static struct sockaddr_in dest; /* udpu: where sendto() sends */
static int unconnected;
static int eagain; /* tcpagain: one recv() per iteration on an empty socket */

static void udp_pair(int *a, int *b)
{
	struct sockaddr_in aa = loopback(), ba = loopback();
	socklen_t len = sizeof(aa);

	*a = socket(AF_INET, SOCK_DGRAM, 0);
	*b = socket(AF_INET, SOCK_DGRAM, 0);
	if (*a < 0 || *b < 0 || bind(*a, (struct sockaddr *)&aa, sizeof(aa)) ||
	    bind(*b, (struct sockaddr *)&ba, sizeof(ba)))
		die("udp bind");
	if (getsockname(*a, (struct sockaddr *)&aa, &len))
		die("getsockname");
	len = sizeof(ba);
	if (getsockname(*b, (struct sockaddr *)&ba, &len))
		die("getsockname");
	dest = ba;
	if (unconnected)
		return;
	if (connect(*a, (struct sockaddr *)&ba, sizeof(ba)) ||
	    connect(*b, (struct sockaddr *)&aa, sizeof(aa)))
		die("udp connect");
}

static void run(int a, int b, long n, char *buf, int bytes, int stream)
{
	/* what ends every read loop of an event-driven server */
	for (long i = 0; eagain && i < n; i++)
		if (recv(b, buf, bytes, MSG_DONTWAIT) != -1 || errno != EAGAIN)
			die("recv: expected EAGAIN");
	for (long i = 0; !eagain && i < n; i++) {
		ssize_t s = unconnected ? sendto(a, buf, bytes, 0, (struct sockaddr *)&dest,
						 sizeof(dest))
					: send(a, buf, bytes, 0);
		ssize_t got = 0;

		if (s != bytes)
			die("send");
		/* a stream may (rarely) return less than one message per recv() */
		while (got < bytes) {
			ssize_t r = recv(b, buf + got, bytes - got, 0);

			if (r <= 0)
				die("recv");
			got += r;
			if (!stream)
				break;
		}
	}
}

int main(int argc, char **argv)
{
	int bytes = 64, cpu = -1, a, b, stream;
	long n, warmup = 10000;
	char buf[MAX_BYTES];
	double t0, t1;
	int opt;

	if (argc < 3) {
		fprintf(stderr,
			"usage: sendloop tcp|udp|udpu|tcpagain ITERATIONS [-s BYTES] [-c CPU] [-w WARMUP]\n");
		return 2;
	}
	eagain = !strcmp(argv[1], "tcpagain");
	stream = eagain || !strcmp(argv[1], "tcp");
	unconnected = !strcmp(argv[1], "udpu");
	if (!stream && !unconnected && strcmp(argv[1], "udp")) {
		fprintf(stderr, "sendloop: protocol must be tcp, udp, udpu or tcpagain\n");
		return 2;
	}
	n = atol(argv[2]);
	optind = 3;
	while ((opt = getopt(argc, argv, "s:c:w:")) != -1) {
		if (opt == 's')
			bytes = atoi(optarg);
		else if (opt == 'c')
			cpu = atoi(optarg);
		else if (opt == 'w')
			warmup = atol(optarg);
		else
			return 2;
	}
	if (n < 1 || n > MAX_ITER || bytes < 1 || bytes > MAX_BYTES || warmup < 0 ||
	    warmup > MAX_ITER) {
		fprintf(stderr, "sendloop: bad arguments\n");
		return 2;
	}
	if (cpu >= 0) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set))
			die("sched_setaffinity");
	}
	memset(buf, 'x', sizeof(buf));
	if (stream)
		tcp_pair(&a, &b);
	else
		udp_pair(&a, &b);
	run(a, b, warmup, buf, bytes, stream);
	t0 = now_ns();
	run(a, b, n, buf, bytes, stream);
	t1 = now_ns();
	printf("{\"proto\":\"%s\",\"iterations\":%ld,\"bytes\":%d,\"cpu\":%d,"
	       "\"ns_per_pair\":%.2f,\"ns_per_call\":%.2f}\n",
	       argv[1], n, bytes, cpu, (t1 - t0) / n, (t1 - t0) / (eagain ? n : 2.0 * n));
	close(a);
	close(b);
	return 0;
}
