/* connrate: short TCP connections per second, at C speed (netperf TCP_CRR style).
 *
 * Compiled at bench time with the system cc (bench/tools.py). One connection at a time:
 *   server: connrate -s PORT
 *           accept, read the request, write the response, close (the server closes first, so
 *           TIME_WAIT stays on the server side and the client's ports are free at once);
 *   client: connrate -c IP PORT SECONDS
 *           socket, connect, send 64 bytes, read the 64-byte response, read EOF, close; in a
 *           loop for SECONDS; prints "<connections> <elapsed seconds>" on stdout.
 * The client exits non-zero on the first failed connection (a policy drop shows as a timeout).
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
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MSG 64

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int read_full(int fd, char *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = read(fd, buf + got, len - got);
		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	return 0;
}

static int server(int port)
{
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
	int one = 1, ls = socket(AF_INET, SOCK_STREAM, 0);
	char buf[MSG];

	signal(SIGPIPE, SIG_IGN);
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(ls, (struct sockaddr *)&addr, sizeof(addr)) || listen(ls, 4096)) {
		perror("connrate server");
		return 1;
	}
	for (;;) {
		int fd = accept(ls, NULL, NULL);
		if (fd < 0)
			continue;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (read_full(fd, buf, MSG) == 0)
			(void)!write(fd, buf, MSG);
		close(fd);
	}
}

static int client(const char *ip, int port, double seconds)
{
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
	struct timeval tv = {.tv_sec = 1};
	char buf[MSG] = {0};
	long count = 0;
	int one = 1;
	double start, end;

	signal(SIGPIPE, SIG_IGN);
	if (inet_pton(AF_INET, ip, &addr.sin_addr) != 1) {
		fprintf(stderr, "connrate: bad address %s\n", ip);
		return 2;
	}
	start = now();
	end = start + seconds;
	do {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) || write(fd, buf, MSG) != MSG ||
		    read_full(fd, buf, MSG) || read(fd, buf, 1) != 0) {
			fprintf(stderr, "connrate: connection %ld failed: %s\n", count, strerror(errno));
			close(fd);
			return 1;
		}
		close(fd);
		count++;
	} while (now() < end);
	printf("%ld %.6f\n", count, now() - start);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "-s"))
		return server(atoi(argv[2]));
	if (argc == 5 && !strcmp(argv[1], "-c"))
		return client(argv[2], atoi(argv[3]), atof(argv[4]));
	fprintf(stderr, "usage: connrate -s PORT | connrate -c IP PORT SECONDS\n");
	return 2;
}
