/* connrate: short TCP connections per second, at C speed (netperf TCP_CRR style).
 *
 * Compiled at bench time with the system cc (bench/tools.py). One connection at a time:
 *   server: connrate -s PORT
 *           accept, read the request, write the response, close (the server closes first, so
 *           TIME_WAIT stays on the server side and the client's ports are free at once);
 *   client: connrate -c IP PORT SECONDS
 *           socket, connect, send 64 bytes, read the 64-byte response, read EOF, close; in a
 *           loop for SECONDS; prints "<connections> <elapsed seconds>" on stdout.
 *   pair:   connrate -a NETNS_A IP_A NETNS_B IP_B PORT SECONDS
 *           the client's connections alternate between two destinations, each from its own
 *           network namespace (/run/netns/NAME: a socket belongs to the namespace it was created
 *           in; setns before each socket(), outside the timing), so that whatever else loads the
 *           machine falls on both alike; prints "<connections A> <seconds A> <connections B>
 *           <seconds B>", the seconds summed over each side's connections (socket to close).
 * The client exits non-zero on the first failed connection (a policy drop shows as a timeout).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
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

/* One connection from the current namespace: 0, or -1 (errno says why). */
static int one_connection(const struct sockaddr_in *addr)
{
	struct timeval tv = {.tv_sec = 1};
	char buf[MSG] = {0};
	int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) || write(fd, buf, MSG) != MSG ||
	    read_full(fd, buf, MSG) || read(fd, buf, 1) != 0) {
		int err = errno;
		close(fd);
		errno = err;
		return -1;
	}
	close(fd);
	return 0;
}

static int pair(char **ns, char **ip, int port, double seconds)
{
	struct sockaddr_in addr[2];
	double took[2] = {0, 0}, end;
	long count[2] = {0, 0};
	int nsfd[2];

	signal(SIGPIPE, SIG_IGN);
	for (int i = 0; i < 2; i++) {
		char path[256];
		memset(&addr[i], 0, sizeof(addr[i]));
		addr[i].sin_family = AF_INET;
		addr[i].sin_port = htons(port);
		if (inet_pton(AF_INET, ip[i], &addr[i].sin_addr) != 1) {
			fprintf(stderr, "connrate: bad address %s\n", ip[i]);
			return 2;
		}
		snprintf(path, sizeof(path), "/run/netns/%s", ns[i]);
		nsfd[i] = open(path, O_RDONLY | O_CLOEXEC);
		if (nsfd[i] < 0) {
			fprintf(stderr, "connrate: %s: %s\n", path, strerror(errno));
			return 2;
		}
	}
	end = now() + seconds;
	for (long n = 0; now() < end || count[1] < count[0]; n++) {
		int side = n % 2;
		if (setns(nsfd[side], CLONE_NEWNET)) {
			fprintf(stderr, "connrate: setns %s: %s\n", ns[side], strerror(errno));
			return 2;
		}
		double t0 = now();
		if (one_connection(&addr[side])) {
			fprintf(stderr, "connrate: connection %ld to %s failed: %s\n", count[side],
				ip[side], strerror(errno));
			return 1;
		}
		took[side] += now() - t0;
		count[side]++;
	}
	printf("%ld %.6f %ld %.6f\n", count[0], took[0], count[1], took[1]);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 8 && !strcmp(argv[1], "-a")) {
		char *ns[2] = {argv[2], argv[4]}, *ip[2] = {argv[3], argv[5]};
		return pair(ns, ip, atoi(argv[6]), atof(argv[7]));
	}
	if (argc == 3 && !strcmp(argv[1], "-s"))
		return server(atoi(argv[2]));
	if (argc == 5 && !strcmp(argv[1], "-c"))
		return client(argv[2], atoi(argv[3]), atof(argv[4]));
	fprintf(stderr, "usage: connrate -s PORT | connrate -c IP PORT SECONDS |"
			" connrate -a NETNS_A IP_A NETNS_B IP_B PORT SECONDS\n");
	return 2;
}
