/* httpload: HTTP/1.1 GET requests per second and per-request latency, one request in flight.
 *
 * The l7 group's load generator (bench/l7.py), compiled at bench time with the system cc as
 * bench/connrate.c is (no wrk or h2load on this machine). One process, one request at a time:
 *   httpload -k IP PORT PATH SECONDS   one keep-alive connection, GET after GET;
 *   httpload -c IP PORT PATH SECONDS   a new connection per request (Connection: close; the
 *                                      server closes first, so TIME_WAIT stays on its side).
 * Each request is timed from its write to the last byte of its response (Content-Length read;
 * with -c, until EOF). Prints "<requests> <elapsed s> <p50 us> <p99 us> <failed>" on stdout:
 * requests answered 200, and failed ones (no connection within 2 s, a reset, a timeout: a
 * dropped packet; the time they took stays in the elapsed time), after which a new connection
 * is made. An answer other than 200 or a malformed one exits 1 at once (a denial is not load).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BUF 16384

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static int dial(const struct sockaddr_in *addr)
{
	struct timeval tv = {.tv_sec = 2};
	int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (const struct sockaddr *)addr, sizeof(*addr))) {
		close(fd);
		return -1;
	}
	return fd;
}

/* One response: its status line must say 200; keep-alive reads Content-Length bytes of body,
 * close reads until EOF. 0 on success. */
static int response(int fd, int keepalive, char *buf)
{
	size_t got = 0, need = 0;
	char *end = NULL;
	for (;;) {
		ssize_t n = read(fd, buf + got, BUF - 1 - got);
		if (n < 0)
			return -1;
		if (n == 0)
			return (!keepalive && end != NULL) ? 0 : -1;
		got += (size_t)n;
		buf[got] = 0;
		if (end == NULL && (end = strstr(buf, "\r\n\r\n")) != NULL) {
			if (strncmp(buf, "HTTP/1.1 200 ", 13) != 0) {
				fprintf(stderr, "httpload: %.40s\n", buf);
				return -2;
			}
			if (keepalive) {
				char *cl = strcasestr(buf, "\r\ncontent-length:");
				if (cl == NULL || cl > end) {
					fprintf(stderr, "httpload: no Content-Length\n");
					return -2;
				}
				need = (size_t)(end + 4 - buf) + strtoul(cl + 17, NULL, 10);
			}
		}
		if (end != NULL && keepalive && got >= need)
			return got == need ? 0 : -2;
		if (got >= BUF - 1)
			return -2;
	}
}

int main(int argc, char **argv)
{
	struct sockaddr_in addr = {.sin_family = AF_INET};
	static char buf[BUF];
	char req[512];
	size_t cap = 1 << 16, count = 0, failed = 0;
	double *lat, start, end, t;
	int keepalive, fd = -1, len;

	if (argc != 6 || (strcmp(argv[1], "-k") && strcmp(argv[1], "-c"))) {
		fprintf(stderr, "usage: httpload -k|-c IP PORT PATH SECONDS\n");
		return 2;
	}
	keepalive = !strcmp(argv[1], "-k");
	addr.sin_port = htons(atoi(argv[3]));
	if (inet_pton(AF_INET, argv[2], &addr.sin_addr) != 1) {
		fprintf(stderr, "httpload: bad address %s\n", argv[2]);
		return 2;
	}
	len = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s:%s\r\n%s\r\n", argv[4],
		       argv[2], argv[3], keepalive ? "" : "Connection: close\r\n");
	signal(SIGPIPE, SIG_IGN);
	lat = malloc(cap * sizeof(*lat));
	start = now();
	end = start + atof(argv[5]);
	do {
		int rc;
		t = now();
		if (fd < 0 && (fd = dial(&addr)) < 0) {
			failed++;
			continue;
		}
		rc = write(fd, req, (size_t)len) != len ? -1 : response(fd, keepalive, buf);
		if (rc == -2)
			return 1;
		if (rc != 0 || !keepalive) {
			if (rc != 0)
				failed++;
			close(fd);
			fd = -1;
		}
		if (rc != 0)
			continue;
		if (count == cap)
			lat = realloc(lat, (cap *= 2) * sizeof(*lat));
		lat[count++] = (now() - t) * 1e6;
	} while (now() < end);
	t = now() - start;
	if (count == 0) {
		fprintf(stderr, "httpload: no request answered (%zu failed)\n", failed);
		return 1;
	}
	qsort(lat, count, sizeof(*lat), cmp);
	printf("%zu %.6f %.1f %.1f %zu\n", count, t, lat[count / 2], lat[count * 99 / 100],
	       failed);
	return 0;
}
