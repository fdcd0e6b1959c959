// SPDX-License-Identifier: Apache-2.0
/* holdconns: open N long-lived TCP connections over loopback, move a few bytes
 * on each, and keep them open (established, idle but for a periodic touch)
 * until stdin is closed or a deadline passes.
 *
 *   holdconns -n N [-l LISTENERS] [-a SOURCES] [-s BYTES] [-i TOUCH_S] [-d MAX_S]
 *
 * Listeners are 127.0.0.1:<LISTENERS ephemeral ports>; client sockets bind to
 * 127.0.1.1 .. 127.0.1.SOURCES with IP_BIND_ADDRESS_NO_PORT, so the 4-tuples
 * spread over LISTENERS * SOURCES (address, port) pairs and 100k connections
 * do not run out of ephemeral ports. Each connection does one exchange of BYTES
 * each way at open, and again every TOUCH_S seconds (0: never), spread evenly.
 * Needs 2N + LISTENERS + 16 descriptors (the hard RLIMIT_NOFILE is raised
 * only if the process may). Prints {"ready":N,"setup_seconds":..} once all are open, and
 * {"closed":N,"touches":..} at the end. Connections end with RST (SO_LINGER 0)
 * so that no TIME_WAIT is left behind. Every loop is bounded. Built by
 * bench/run.py into bench/build/. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 500000
#define MAX_LISTENERS 256
#define MAX_SOURCES 250

static int bytes = 16;
static char buf[4096];

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, long i)
{
	fprintf(stderr, "holdconns: %s (connection %ld): %s\n", what, i, strerror(errno));
	exit(1);
}

static int xfer(int from, int to)
{
	int got = 0;

	if (send(from, buf, bytes, 0) != bytes)
		return -1;
	while (got < bytes) {
		ssize_t r = recv(to, buf, bytes - got, 0);

		if (r <= 0)
			return -1;
		got += r;
	}
	return 0;
}

int main(int argc, char **argv)
{
	long n = 0, touches = 0;
	int listeners = 16, sources = 8, opt, one = 1;
	double touch_s = 10, max_s = 600, t0, setup;
	int *cfd, *sfd, lfd[MAX_LISTENERS];
	struct sockaddr_in laddr[MAX_LISTENERS];
	struct rlimit rl;
	struct linger lg = {.l_onoff = 1, .l_linger = 0};

	while ((opt = getopt(argc, argv, "n:l:a:s:i:d:")) != -1) {
		if (opt == 'n')
			n = atol(optarg);
		else if (opt == 'l')
			listeners = atoi(optarg);
		else if (opt == 'a')
			sources = atoi(optarg);
		else if (opt == 's')
			bytes = atoi(optarg);
		else if (opt == 'i')
			touch_s = atof(optarg);
		else if (opt == 'd')
			max_s = atof(optarg);
		else
			return 2;
	}
	if (n < 1 || n > MAX_CONNS || listeners < 1 || listeners > MAX_LISTENERS || sources < 1 ||
	    sources > MAX_SOURCES || bytes < 1 || bytes > (int)sizeof(buf) || touch_s < 0 ||
	    !(max_s > 0 && max_s <= 3600)) {
		fprintf(stderr, "usage: holdconns -n N [-l LISTENERS] [-a SOURCES] [-s BYTES] "
				"[-i TOUCH_S] [-d MAX_S]\n");
		return 2;
	}
	/* raise the soft limit; the hard one only moves with CAP_SYS_RESOURCE, so
	 * run.py splits large N over several processes */
	if (getrlimit(RLIMIT_NOFILE, &rl))
		die("getrlimit", 0);
	if (rl.rlim_max != RLIM_INFINITY && (rlim_t)(2 * n + listeners + 16) > rl.rlim_max) {
		rl.rlim_max = (rlim_t)(2 * n + listeners + 16);
		if (setrlimit(RLIMIT_NOFILE, &rl)) {
			fprintf(stderr, "holdconns: %ld connections need %ld descriptors, more than "
					"the hard RLIMIT_NOFILE; use fewer per process\n",
				n, 2 * n + listeners + 16);
			return 3;
		}
	}
	rl.rlim_cur = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl))
		die("setrlimit RLIMIT_NOFILE", 0);
	cfd = calloc(n, sizeof(int));
	sfd = calloc(n, sizeof(int));
	if (!cfd || !sfd)
		die("calloc", 0);
	memset(buf, 'h', sizeof(buf));
	for (int j = 0; j < listeners; j++) {
		socklen_t len = sizeof(laddr[j]);

		memset(&laddr[j], 0, sizeof(laddr[j]));
		laddr[j].sin_family = AF_INET;
		laddr[j].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		lfd[j] = socket(AF_INET, SOCK_STREAM, 0);
		if (lfd[j] < 0 || bind(lfd[j], (struct sockaddr *)&laddr[j], sizeof(laddr[j])) ||
		    listen(lfd[j], 4096) || getsockname(lfd[j], (struct sockaddr *)&laddr[j], &len))
			die("listen", j);
	}
	t0 = now_s();
	for (long i = 0; i < n; i++) {
		struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = 0};
		int j = i % listeners;

		src.sin_addr.s_addr = htonl((127u << 24) | (1u << 8) | (unsigned)(1 + (i / listeners) % sources));
		cfd[i] = socket(AF_INET, SOCK_STREAM, 0);
		if (cfd[i] < 0)
			die("socket", i);
		setsockopt(cfd[i], IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
		setsockopt(cfd[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (bind(cfd[i], (struct sockaddr *)&src, sizeof(src)))
			die("bind", i);
		if (connect(cfd[i], (struct sockaddr *)&laddr[j], sizeof(laddr[j])))
			die("connect", i);
		sfd[i] = accept(lfd[j], NULL, NULL);
		if (sfd[i] < 0)
			die("accept", i);
		setsockopt(sfd[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (xfer(cfd[i], sfd[i]) || xfer(sfd[i], cfd[i]))
			die("exchange", i);
	}
	setup = now_s() - t0;
	printf("{\"ready\":%ld,\"setup_seconds\":%.3f,\"listeners\":%d,\"sources\":%d}\n", n, setup,
	       listeners, sources);
	fflush(stdout);

	/* hold: touch n / (touch_s * 10) connections every 100 ms */
	{
		double start = now_s();
		long next = 0;
		double per_tick = touch_s > 0 ? (double)n / (touch_s * 10.0) : 0, owed = 0;
		struct pollfd in = {.fd = 0, .events = POLLIN};

		while (now_s() - start < max_s) {
			int r = poll(&in, 1, 100);

			if (r > 0) {
				char c;

				if (read(0, &c, 1) <= 0 || c == 'q')
					break;
			}
			owed += per_tick;
			for (long k = 0; k < (long)owed && k < n; k++) {
				if (xfer(cfd[next], sfd[next]) || xfer(sfd[next], cfd[next]))
					die("touch", next);
				touches++;
				next = (next + 1) % n;
			}
			owed -= (long)owed;
		}
	}
	for (long i = 0; i < n; i++) {
		setsockopt(cfd[i], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		setsockopt(sfd[i], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		close(cfd[i]);
		close(sfd[i]);
	}
	for (int j = 0; j < listeners; j++)
		close(lfd[j]);
	printf("{\"closed\":%ld,\"touches\":%ld}\n", n, touches);
	return 0;
}
