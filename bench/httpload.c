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
 *   httpload -ka|-ca IP PORT IP2 PORT2 PATH SECONDS
 *                                      the same, one process alternating its requests between
 *                                      two servers (each with its own keep-alive connection
 *                                      with -ka): prints one line per server, its elapsed time
 *                                      the time spent on its own requests (failed ones too).
 *                                      Load that changes during the run falls on both alike,
 *                                      where two runs one after the other each meet their own.
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

/* One server's side of a run: its address, request, connection and what it measured. */
struct side {
	struct sockaddr_in addr;
	char req[512];
	int len, fd;
	size_t cap, count, failed;
	double *lat, spent;
};

static int side_init(struct side *sd, const char *ip, const char *port, const char *path,
		     int keepalive)
{
	memset(sd, 0, sizeof(*sd));
	sd->addr.sin_family = AF_INET;
	sd->addr.sin_port = htons(atoi(port));
	if (inet_pton(AF_INET, ip, &sd->addr.sin_addr) != 1) {
		fprintf(stderr, "httpload: bad address %s\n", ip);
		return -1;
	}
	sd->len = snprintf(sd->req, sizeof(sd->req), "GET %s HTTP/1.1\r\nHost: %s:%s\r\n%s\r\n",
			   path, ip, port, keepalive ? "" : "Connection: close\r\n");
	sd->fd = -1;
	sd->cap = 1 << 16;
	sd->lat = malloc(sd->cap * sizeof(*sd->lat));
	return sd->lat ? 0 : -1;
}

/* One request of `sd` (a new connection first when it has none): 0 answered, 1 failed, -2 a
 * wrong answer (exit). Its time goes to the side's spent time either way. */
static int one_request(struct side *sd, int keepalive, char *buf)
{
	double t = now();
	int rc;
	if (sd->fd < 0 && (sd->fd = dial(&sd->addr)) < 0) {
		sd->failed++;
		sd->spent += now() - t;
		return 1;
	}
	rc = write(sd->fd, sd->req, (size_t)sd->len) != sd->len ? -1 : response(sd->fd, keepalive,
										    buf);
	if (rc == -2)
		return -2;
	if (rc != 0 || !keepalive) {
		close(sd->fd);
		sd->fd = -1;
	}
	sd->spent += now() - t;
	if (rc != 0) {
		sd->failed++;
		return 1;
	}
	if (sd->count == sd->cap)
		sd->lat = realloc(sd->lat, (sd->cap *= 2) * sizeof(*sd->lat));
	sd->lat[sd->count++] = (now() - t) * 1e6;
	return 0;
}

static int report(struct side *sd, double elapsed)
{
	if (sd->count == 0) {
		fprintf(stderr, "httpload: no request answered (%zu failed)\n", sd->failed);
		return 1;
	}
	qsort(sd->lat, sd->count, sizeof(*sd->lat), cmp);
	printf("%zu %.6f %.1f %.1f %zu\n", sd->count, elapsed, sd->lat[sd->count / 2],
	       sd->lat[sd->count * 99 / 100], sd->failed);
	return 0;
}

int main(int argc, char **argv)
{
	static char buf[BUF];
	static struct side sides[2];
	int keepalive, alternate, n, i = 0;
	double start, end;

	alternate = argc == 8 && (!strcmp(argv[1], "-ka") || !strcmp(argv[1], "-ca"));
	if (!alternate && (argc != 6 || (strcmp(argv[1], "-k") && strcmp(argv[1], "-c")))) {
		fprintf(stderr, "usage: httpload -k|-c IP PORT PATH SECONDS\n"
				"       httpload -ka|-ca IP PORT IP2 PORT2 PATH SECONDS\n");
		return 2;
	}
	keepalive = argv[1][1] == 'k';
	n = alternate ? 2 : 1;
	for (int k = 0; k < n; k++)
		if (side_init(&sides[k], argv[2 + 2 * k], argv[3 + 2 * k], argv[2 + 2 * n],
			      keepalive))
			return 2;
	signal(SIGPIPE, SIG_IGN);
	start = now();
	end = start + atof(argv[3 + 2 * n]);
	do {
		if (one_request(&sides[i], keepalive, buf) == -2)
			return 1;
		i = (i + 1) % n;
	} while (now() < end || i != 0);
	if (!alternate)
		return report(&sides[0], now() - start);
	for (int k = 0; k < n; k++)
		if (report(&sides[k], sides[k].spent))
			return 1;
	return 0;
}
