// SPDX-License-Identifier: Apache-2.0
/* churn: short TCP connections over loopback as fast as THREADS client
 * threads can make them, each answered by one of THREADS server threads in
 * the same process.
 *
 *   churn [-t THREADS] [-d SECONDS] [-s BYTES] [-p PORT] [-a ADDR] [-r RATE]
 *
 * -r paces the clients to RATE connections/s in total (0: as fast as they can).
 * A client connects, sends BYTES, reads BYTES back and then EOF, and closes.
 * The server accepts, reads BYTES, writes BYTES and closes first (so TIME_WAIT
 * sits on the server side and client ports are free again at once, as with
 * HTTP/1.0). A connection counts as completed when the client got the whole
 * reply and the EOF. Prints one JSON line:
 *   {"threads":T,"seconds":S,"connections":N,"failed":F,"per_second":R,"port":P}
 * ADDR must be a 127/8 address (default 127.0.0.1); every loop is bounded by
 * the deadline. Built by bench/run.py into bench/build/. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 64
#define MAX_BYTES 65536
#define MAX_SECONDS 600

static struct sockaddr_in target;
static int listen_fd = -1;
static int msg_bytes = 64;
static double per_thread_rate; /* 0: unpaced */
static double deadline;
static atomic_long completed, failed, connect_failed, served;
static atomic_int stopping;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void set_timeouts(int fd)
{
	struct timeval tv = {.tv_sec = 5, .tv_usec = 0};

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* Read exactly n bytes (n > 0) or up to EOF (n == 0: expect EOF). */
static int read_n(int fd, char *buf, int n)
{
	int got = 0;

	if (n == 0) {
		char c;

		return recv(fd, &c, 1, 0) == 0 ? 0 : -1;
	}
	while (got < n) {
		ssize_t r = recv(fd, buf + got, n - got, 0);

		if (r <= 0)
			return -1;
		got += r;
	}
	return 0;
}

static int write_n(int fd, const char *buf, int n)
{
	int put = 0;

	while (put < n) {
		ssize_t w = send(fd, buf + put, n - put, MSG_NOSIGNAL);

		if (w <= 0)
			return -1;
		put += w;
	}
	return 0;
}

static void *client(void *arg)
{
	char buf[MAX_BYTES];

	double start = now_s();
	long k = 0;

	(void)arg;
	memset(buf, 'q', sizeof(buf));
	while (now_s() < deadline) {
		int fd;

		if (per_thread_rate > 0) {
			/* connection k of this thread is due at start + k / rate */
			double due = start + (double)k++ / per_thread_rate, wait = due - now_s();

			if (due >= deadline)
				break;
			if (wait > 0) {
				struct timespec ts = {.tv_sec = (time_t)wait,
						      .tv_nsec = (long)((wait - (time_t)wait) * 1e9)};

				nanosleep(&ts, NULL);
			}
		}
		fd = socket(AF_INET, SOCK_STREAM, 0);

		if (fd < 0) {
			atomic_fetch_add(&connect_failed, 1);
			continue;
		}
		set_timeouts(fd);
		if (connect(fd, (struct sockaddr *)&target, sizeof(target))) {
			atomic_fetch_add(&connect_failed, 1);
			close(fd);
			continue;
		}
		if (write_n(fd, buf, msg_bytes) || read_n(fd, buf, msg_bytes) || read_n(fd, buf, 0))
			atomic_fetch_add(&failed, 1);
		else
			atomic_fetch_add(&completed, 1);
		close(fd);
	}
	return NULL;
}

static void *server(void *arg)
{
	char buf[MAX_BYTES];

	(void)arg;
	memset(buf, 'r', sizeof(buf));
	for (;;) {
		int fd = accept(listen_fd, NULL, NULL);

		if (fd < 0) {
			if (atomic_load(&stopping))
				break;
			if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN)
				continue;
			break;
		}
		set_timeouts(fd);
		if (!read_n(fd, buf, msg_bytes))
			write_n(fd, buf, msg_bytes);
		close(fd);
		atomic_fetch_add(&served, 1);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int threads = 4, port = 0, opt, one = 1;
	double seconds = 10, rate = 0, t0, t1;
	const char *addr = "127.0.0.1";
	pthread_t cl[MAX_THREADS], sv[MAX_THREADS];
	socklen_t len = sizeof(target);

	while ((opt = getopt(argc, argv, "t:d:s:p:a:r:")) != -1) {
		if (opt == 't')
			threads = atoi(optarg);
		else if (opt == 'd')
			seconds = atof(optarg);
		else if (opt == 's')
			msg_bytes = atoi(optarg);
		else if (opt == 'p')
			port = atoi(optarg);
		else if (opt == 'a')
			addr = optarg;
		else if (opt == 'r')
			rate = atof(optarg);
		else
			return 2;
	}
	if (threads < 1 || threads > MAX_THREADS || !(seconds > 0 && seconds <= MAX_SECONDS) ||
	    msg_bytes < 1 || msg_bytes > MAX_BYTES || port < 0 || port > 65535 || rate < 0 ||
	    rate > 1e7) {
		fprintf(stderr, "churn: bad arguments\n");
		return 2;
	}
	per_thread_rate = rate / threads;
	target.sin_family = AF_INET;
	target.sin_port = htons(port);
	if (inet_pton(AF_INET, addr, &target.sin_addr) != 1 ||
	    (ntohl(target.sin_addr.s_addr) >> 24) != 127) {
		fprintf(stderr, "churn: -a must be a 127/8 address\n");
		return 2;
	}
	listen_fd = socket(AF_INET, SOCK_STREAM, 0);
	if (listen_fd < 0 || setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(listen_fd, (struct sockaddr *)&target, sizeof(target)) ||
	    listen(listen_fd, 4096) || getsockname(listen_fd, (struct sockaddr *)&target, &len)) {
		fprintf(stderr, "churn: listen: %s\n", strerror(errno));
		return 1;
	}
	for (int i = 0; i < threads; i++)
		pthread_create(&sv[i], NULL, server, NULL);
	t0 = now_s();
	deadline = t0 + seconds;
	for (int i = 0; i < threads; i++)
		pthread_create(&cl[i], NULL, client, NULL);
	for (int i = 0; i < threads; i++)
		pthread_join(cl[i], NULL);
	t1 = now_s();
	/* clients are done: wake the servers blocked in accept() */
	atomic_store(&stopping, 1);
	shutdown(listen_fd, SHUT_RDWR);
	for (int i = 0; i < threads; i++)
		pthread_join(sv[i], NULL);
	close(listen_fd);
	printf("{\"threads\":%d,\"rate\":%.0f,\"seconds\":%.3f,\"connections\":%ld,\"failed\":%ld,"
	       "\"connect_failed\":%ld,\"served\":%ld,\"per_second\":%.1f,\"port\":%d}\n",
	       threads, rate, t1 - t0, atomic_load(&completed), atomic_load(&failed),
	       atomic_load(&connect_failed), atomic_load(&served),
	       atomic_load(&completed) / (t1 - t0), ntohs(target.sin_port));
	return 0;
}
