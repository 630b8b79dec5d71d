/*
 * What every interop peer program shares (libzrtp_peer.c, zrtpcpp_peer.cpp): the
 * clock, logging, the one JSON line's string escaping, failing with a JSON line,
 * and UDP sockets. C and C++ alike; header-only, each function static.
 *
 * Before including it, a peer defines PEER_NAME (its log prefix), PEER_VERBOSE and
 * PEER_T0 (expressions: verbose flag, start time in ms) and may define
 * PEER_ON_FAIL() (clean-up before exiting on a failure).
 */
#ifndef PBX_ZRTP_PEER_COMMON_H
#define PBX_ZRTP_PEER_COMMON_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef PEER_ON_FAIL
#define PEER_ON_FAIL() ((void)0)
#endif

static double now_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static void vlog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void vlog(const char *fmt, ...) {
	if (!PEER_VERBOSE) return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "[" PEER_NAME " %8.1f] ", now_ms() - PEER_T0);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static void json_str(const char *s) {
	putchar('"');
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') { putchar('\\'); putchar(c); }
		else if (c < 0x20 || c >= 0x7f) printf("\\u%04x", c);
		else putchar(c);
	}
	putchar('"');
}

static void hex(char *out, const uint8_t *in, int n) {
	static const char *h = "0123456789abcdef";
	for (int i = 0; i < n; i++) { out[2 * i] = h[in[i] >> 4]; out[2 * i + 1] = h[in[i] & 15]; }
	out[2 * n] = 0;
}

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fputs("{\"ok\": false, \"error\": ", stdout);
	json_str(msg);
	fputs("}\n", stdout);
	fflush(stdout);
	PEER_ON_FAIL();
	exit(1);
}

/* ------------------------------------------------------------------ addresses */

static int parse_hostport(const char *s, struct sockaddr_storage *out, socklen_t *len, int passive) {
	char host[256];
	const char *colon = strrchr(s, ':');
	if (!colon || (size_t)(colon - s) >= sizeof host) return -1;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = 0;
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_DGRAM;
	hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
	if (getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &res) != 0 || !res) return -1;
	memcpy(out, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

static int same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
	const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)b;
	return a->ss_family == AF_INET && b->ss_family == AF_INET && x->sin_port == y->sin_port &&
		x->sin_addr.s_addr == y->sin_addr.s_addr;
}

static void write_port_file(int sock, const char *path) {
	struct sockaddr_in sa;
	socklen_t l = sizeof sa;
	char tmp[4200];
	if (getsockname(sock, (struct sockaddr *)&sa, &l) < 0) fail("getsockname: %s", strerror(errno));
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f) fail("cannot write %s", tmp);
	fprintf(f, "%d\n", ntohs(sa.sin_port));
	fclose(f);
	if (rename(tmp, path) < 0) fail("cannot rename %s", tmp);
}

static int open_socket(const char *bind_str, const char *port_file) {
	struct sockaddr_storage a;
	socklen_t l;
	if (parse_hostport(bind_str, &a, &l, 1) < 0) fail("bad bind address '%s'", bind_str);
	int s = socket(a.ss_family, SOCK_DGRAM, 0);
	if (s < 0 || bind(s, (struct sockaddr *)&a, l) < 0) fail("bind %s: %s", bind_str, strerror(errno));
	fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK);
	if (port_file) write_port_file(s, port_file);
	return s;
}

#endif
