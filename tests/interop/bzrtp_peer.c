/*
 * bzrtp_peer: a standalone ZRTP (RFC 6189) endpoint built on bzrtp, Linphone's
 * ZRTP library, that talks ZRTP (and then SRTP through libsrtp2) over one UDP
 * socket. Used by the pbx_zrtp interoperability tests and benchmarks.
 *
 * Usage:
 *   bzrtp_peer --bind HOST:PORT [--peer HOST:PORT]
 *      [--key-agreement LIST] [--hash LIST] [--cipher LIST] [--auth-tag LIST] [--sas LIST]
 *      [--cache PATH --self-uri URI --peer-uri URI] [--mark-verified]
 *      [--ms-bind HOST:PORT [--ms-peer HOST:PORT] [--ms-port-file PATH] [--ms-pt PT]]
 *      [--srtp N] [--timeout SECONDS] [--port-file PATH] [--linger-ms MS] [--verbose]
 *
 * --ms-bind adds a second channel (a video stream, as Linphone does) on its own
 * socket once the first is secure: bzrtp_addChannel, which bzrtp runs in
 * Multistream mode (RFC 6189 §4.4.3). Its SRTP (--srtp N packets, payload type
 * --ms-pt, default 96) and result go in the report's "multistream" object.
 * Without --ms-peer the first ZRTP datagram on that socket names its peer.
 *
 * LISTs are comma separated ZRTP type names in preference order (X255,DH3k /
 * S256,S384 / AES1,AES3 / HS32,HS80 / B32,B256). bzrtp re-adds its mandatory
 * types (DH3k, Mult, S256, AES1, HS32, HS80, B32) at the end of each list.
 *
 * --bind HOST:0 binds an ephemeral port; --port-file PATH then receives the
 * bound port number (written to PATH.tmp and renamed, so a reader never sees a
 * partial file).
 *
 * --peer may be omitted: the program then waits, and the source address of the
 * first ZRTP datagram it receives becomes the peer (all later datagrams from
 * other addresses are ignored). This lets a test start endpoint A without a
 * peer and with --port-file, read A's port, and start B with --peer A: A learns
 * B's address from B's first Hello. Packets bzrtp wants to send before the peer
 * is known are dropped; when the peer becomes known the Hello retransmission
 * timer is restarted so that our Hello goes out at once.
 *
 * Output: exactly one JSON line on stdout. Exit 0 when the channel went secure,
 * 1 otherwise ({"ok": false, "error": ...}). Diagnostics go to stderr with
 * --verbose.
 *
 * Role: bzrtp does not expose the channel role in its public API, so it is
 * read from the wire: the endpoint that sends Confirm2 (or DHPart2) is the
 * initiator, the one that sends Confirm1 (or DHPart1) the responder.
 * ZIDs are likewise read from the Hello messages (ours and the peer's).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <bzrtp/bzrtp.h>
#include <sqlite3.h>
#include <srtp2/srtp.h>

#define RECV_BUF_SIZE 4096
#define MAX_EARLY_PACKETS 64
#define MAX_EARLY_PACKET_LEN 1500
#define RTP_PAYLOAD_LEN 160
#define SRTP_SEND_INTERVAL_MS 20.0
#define SRTP_DRAIN_MS 1500.0

/* ------------------------------------------------------------------------- */
/* global state (single threaded program) */

typedef struct {
	/* options */
	const char *bind_str;
	const char *peer_str;
	const char *cache_path;
	const char *self_uri;
	const char *peer_uri;
	const char *port_file;
	int mark_verified;
	int srtp_count;
	double timeout_s;
	int linger_ms;
	int verbose;
	uint8_t ka[7], hash[7], cipher[7], auth[7], sas[7];
	int ka_n, hash_n, cipher_n, auth_n, sas_n;

	/* runtime */
	int sock;
	struct sockaddr_storage peer_addr;
	socklen_t peer_addr_len;
	int peer_known;
	uint32_t ssrc;
	double t0_ms;
	bzrtpContext_t *ctx;
	sqlite3 *db;

	/* observed protocol facts */
	int secure;
	double secure_elapsed_ms;
	int sent_commit, sent_dhpart1, sent_dhpart2, sent_confirm1, sent_confirm2;
	int first_commit_from_peer; /* -1 unknown, 0 ours first, 1 peer's first */
	char last_sent[9], last_recv[9];
	uint8_t zid_self[12], zid_peer[12];
	int have_zid_self, have_zid_peer;
	int cache_mismatch_msg;
	int verified_arg;

	/* negotiated */
	char sas_raw[128];
	uint8_t key_agreement_algo, hash_algo, cipher_algo, auth_tag_algo, sas_algo;
	uint8_t cache_mismatch_flag;
	uint8_t self_key[64], self_salt[32], peer_key[64], peer_salt[32];
	int self_key_len, self_salt_len, peer_key_len, peer_salt_len;

	/* SRTP */
	srtp_t srtp_tx, srtp_rx;
	int srtp_sent, srtp_received_ok, srtp_received_bad;
	uint16_t rtp_seq;
	uint32_t rtp_ts;
	double last_srtp_send_ms;
	uint8_t early[MAX_EARLY_PACKETS][MAX_EARLY_PACKET_LEN];
	int early_len[MAX_EARLY_PACKETS];
	int early_n;
} peer_t;

static peer_t G;

/* the second channel (--ms-bind): Multistream, started once the first is secure */
typedef struct {
	const char *bind_str, *peer_str, *port_file;
	int pt;
	int sock;
	struct sockaddr_storage peer_addr;
	socklen_t peer_addr_len;
	int peer_known, started, secure, failed;
	uint32_t ssrc;
	char last_sent[9], last_recv[9], sas_raw[128];
	uint8_t key_agreement_algo, cipher_algo, auth_tag_algo;
	uint8_t self_key[64], self_salt[32], peer_key[64], peer_salt[32];
	int self_key_len, self_salt_len, peer_key_len, peer_salt_len;
	srtp_t srtp_tx, srtp_rx;
	int srtp_sent, srtp_received_ok, srtp_received_bad;
	uint16_t rtp_seq;
	uint32_t rtp_ts;
	double last_srtp_send_ms;
} ms_t;

static ms_t MS;

/* ------------------------------------------------------------------------- */
/* helpers */

static double now_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static void vlog(const char *fmt, ...) {
	if (!G.verbose) return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "[bzrtp_peer %8.1f] ", now_ms() - G.t0_ms);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static void json_str(FILE *f, const char *s) {
	fputc('"', f);
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') { fputc('\\', f); fputc(c, f); }
		else if (c == '\n') fputs("\\n", f);
		else if (c == '\r') fputs("\\r", f);
		else if (c == '\t') fputs("\\t", f);
		else if (c < 0x20 || c >= 0x7f) fprintf(f, "\\u%04x", c);
		else fputc(c, f);
	}
	fputc('"', f);
}

static void hex_str(char *out, const uint8_t *in, int n) {
	static const char *h = "0123456789abcdef";
	for (int i = 0; i < n; i++) { out[2 * i] = h[in[i] >> 4]; out[2 * i + 1] = h[in[i] & 15]; }
	out[2 * n] = 0;
}

static void cleanup(void) {
	if (G.ctx && MS.started) bzrtp_destroyBzrtpContext(G.ctx, MS.ssrc);
	if (G.ctx) { bzrtp_destroyBzrtpContext(G.ctx, G.ssrc); G.ctx = NULL; }
	if (MS.srtp_tx) { srtp_dealloc(MS.srtp_tx); MS.srtp_tx = NULL; }
	if (MS.srtp_rx) { srtp_dealloc(MS.srtp_rx); MS.srtp_rx = NULL; }
	if (MS.sock >= 0) { close(MS.sock); MS.sock = -1; }
	if (G.srtp_tx) { srtp_dealloc(G.srtp_tx); G.srtp_tx = NULL; }
	if (G.srtp_rx) { srtp_dealloc(G.srtp_rx); G.srtp_rx = NULL; }
	if (G.db) { sqlite3_close(G.db); G.db = NULL; }
	if (G.sock >= 0) { close(G.sock); G.sock = -1; }
}

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fputs("{\"ok\": false, \"error\": ", stdout);
	json_str(stdout, msg);
	fputs("}\n", stdout);
	fflush(stdout);
	cleanup();
	exit(1);
}

/* ------------------------------------------------------------------------- */
/* algorithm names */

typedef struct { const char *name; uint8_t code; uint8_t type; } algo_name_t;
static const algo_name_t ALGOS[] = {
	{"S256", ZRTP_HASH_S256, ZRTP_HASH_TYPE}, {"S384", ZRTP_HASH_S384, ZRTP_HASH_TYPE},
	{"N256", ZRTP_HASH_N256, ZRTP_HASH_TYPE}, {"N384", ZRTP_HASH_N384, ZRTP_HASH_TYPE},
	{"AES1", ZRTP_CIPHER_AES1, ZRTP_CIPHERBLOCK_TYPE}, {"AES2", ZRTP_CIPHER_AES2, ZRTP_CIPHERBLOCK_TYPE},
	{"AES3", ZRTP_CIPHER_AES3, ZRTP_CIPHERBLOCK_TYPE}, {"2FS1", ZRTP_CIPHER_2FS1, ZRTP_CIPHERBLOCK_TYPE},
	{"2FS2", ZRTP_CIPHER_2FS2, ZRTP_CIPHERBLOCK_TYPE}, {"2FS3", ZRTP_CIPHER_2FS3, ZRTP_CIPHERBLOCK_TYPE},
	{"HS32", ZRTP_AUTHTAG_HS32, ZRTP_AUTHTAG_TYPE}, {"HS80", ZRTP_AUTHTAG_HS80, ZRTP_AUTHTAG_TYPE},
	{"SK32", ZRTP_AUTHTAG_SK32, ZRTP_AUTHTAG_TYPE}, {"SK64", ZRTP_AUTHTAG_SK64, ZRTP_AUTHTAG_TYPE},
	{"DH2k", ZRTP_KEYAGREEMENT_DH2k, ZRTP_KEYAGREEMENT_TYPE}, {"X255", ZRTP_KEYAGREEMENT_X255, ZRTP_KEYAGREEMENT_TYPE},
	{"EC25", ZRTP_KEYAGREEMENT_EC25, ZRTP_KEYAGREEMENT_TYPE}, {"X448", ZRTP_KEYAGREEMENT_X448, ZRTP_KEYAGREEMENT_TYPE},
	{"DH3k", ZRTP_KEYAGREEMENT_DH3k, ZRTP_KEYAGREEMENT_TYPE}, {"EC38", ZRTP_KEYAGREEMENT_EC38, ZRTP_KEYAGREEMENT_TYPE},
	{"EC52", ZRTP_KEYAGREEMENT_EC52, ZRTP_KEYAGREEMENT_TYPE}, {"Prsh", ZRTP_KEYAGREEMENT_Prsh, ZRTP_KEYAGREEMENT_TYPE},
	{"Mult", ZRTP_KEYAGREEMENT_Mult, ZRTP_KEYAGREEMENT_TYPE},
	{"B32", ZRTP_SAS_B32, ZRTP_SAS_TYPE}, {"B256", ZRTP_SAS_B256, ZRTP_SAS_TYPE},
#ifdef ZRTP_KEYAGREEMENT_K255_MLK512 /* bzrtp with its post-quantum engine (>= 5.4) */
	{"S512", ZRTP_HASH_S512, ZRTP_HASH_TYPE},
	{"X1M1", ZRTP_KEYAGREEMENT_K255_MLK512, ZRTP_KEYAGREEMENT_TYPE},
	{"X3M3", ZRTP_KEYAGREEMENT_K448_MLK1024, ZRTP_KEYAGREEMENT_TYPE},
	{"X1K1", ZRTP_KEYAGREEMENT_K255_KYB512, ZRTP_KEYAGREEMENT_TYPE},
	{"K255", ZRTP_KEYAGREEMENT_K255, ZRTP_KEYAGREEMENT_TYPE},
#endif
};

static const char *algo_name(uint8_t code) {
	for (size_t i = 0; i < sizeof ALGOS / sizeof ALGOS[0]; i++)
		if (ALGOS[i].code == code) return ALGOS[i].name;
	return "unknown";
}

static int parse_algo_list(const char *opt, const char *list, uint8_t type, uint8_t out[7]) {
	char buf[256];
	int n = 0;
	if (strlen(list) >= sizeof buf) fail("%s: list too long", opt);
	strcpy(buf, list);
	for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ') tok++;
		size_t l = strlen(tok);
		while (l > 0 && tok[l - 1] == ' ') tok[--l] = 0;
		if (l == 0) continue;
		int found = 0;
		for (size_t i = 0; i < sizeof ALGOS / sizeof ALGOS[0]; i++) {
			if (ALGOS[i].type == type && strcasecmp(ALGOS[i].name, tok) == 0) {
				if (n >= 7) fail("%s: at most 7 types", opt);
				out[n++] = ALGOS[i].code;
				found = 1;
				break;
			}
		}
		if (!found) fail("%s: unknown type name '%s'", opt, tok);
	}
	if (n == 0) fail("%s: empty list", opt);
	return n;
}

/* ------------------------------------------------------------------------- */
/* addresses */

static int parse_hostport(const char *s, struct sockaddr_storage *out, socklen_t *outlen, int passive) {
	char host[256], port[16];
	const char *colon;
	if (s[0] == '[') {
		const char *end = strchr(s, ']');
		if (!end || end[1] != ':') return -1;
		size_t hl = (size_t)(end - s - 1);
		if (hl >= sizeof host) return -1;
		memcpy(host, s + 1, hl); host[hl] = 0;
		colon = end + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon) return -1;
		size_t hl = (size_t)(colon - s);
		if (hl >= sizeof host) return -1;
		memcpy(host, s, hl); host[hl] = 0;
	}
	if (strlen(colon + 1) == 0 || strlen(colon + 1) >= sizeof port) return -1;
	strcpy(port, colon + 1);
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_DGRAM;
	hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
	if (getaddrinfo(host[0] ? host : NULL, port, &hints, &res) != 0 || !res) return -1;
	memcpy(out, res->ai_addr, res->ai_addrlen);
	*outlen = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

static int same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
	if (a->ss_family != b->ss_family) return 0;
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	if (a->ss_family == AF_INET6) {
		const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
		return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
	}
	return 0;
}

/* ------------------------------------------------------------------------- */
/* ZRTP wire inspection (packet header 12 bytes, then preamble 0x505a, length,
 * 8-byte message type) */

static int is_zrtp(const uint8_t *p, size_t n) {
	return n >= 12 && (p[0] & 0xF0) == 0x10 && memcmp(p + 4, "ZRTP", 4) == 0;
}

static void msg_type(const uint8_t *p, size_t n, char out[9]) {
	if (n >= 24 && p[12] == 0x50 && p[13] == 0x5a) {
		memcpy(out, p + 16, 8);
		out[8] = 0;
		for (int i = 7; i >= 0 && out[i] == ' '; i--) out[i] = 0;
	} else {
		strcpy(out, "?");
	}
}

/* ZID offset in a Hello packet: 12 (pkt hdr) + 4 + 8 (type) + 4 (version) + 16 (client id) + 32 (H3) */
#define HELLO_ZID_OFFSET 76

/* ------------------------------------------------------------------------- */
/* SRTP */

static srtp_t make_srtp(int outbound, uint8_t cipher, uint8_t auth, const uint8_t *key, int key_len,
		const uint8_t *salt, int salt_len) {
	srtp_policy_t pol;
	uint8_t master[64];
	srtp_t s = NULL;
	memset(&pol, 0, sizeof pol);
	int hs80 = (auth == ZRTP_AUTHTAG_HS80);
	if (cipher == ZRTP_CIPHER_AES3) {
		if (hs80) srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80(&pol.rtp);
		else srtp_crypto_policy_set_aes_cm_256_hmac_sha1_32(&pol.rtp);
	} else if (cipher == ZRTP_CIPHER_AES2) {
		if (hs80) srtp_crypto_policy_set_aes_cm_192_hmac_sha1_80(&pol.rtp);
		else srtp_crypto_policy_set_aes_cm_192_hmac_sha1_32(&pol.rtp);
	} else {
		if (hs80) srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&pol.rtp);
		else srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32(&pol.rtp);
	}
	srtp_crypto_policy_set_rtcp_default(&pol.rtcp);
	if (key_len + salt_len > (int)sizeof master) return NULL;
	memcpy(master, key, (size_t)key_len);
	memcpy(master + key_len, salt, (size_t)salt_len);
	pol.key = master;
	pol.ssrc.type = outbound ? ssrc_any_outbound : ssrc_any_inbound;
	pol.window_size = 1024;
	pol.allow_repeat_tx = 0;
	pol.next = NULL;
	srtp_err_status_t e = srtp_create(&s, &pol);
	memset(master, 0, sizeof master);
	if (e != srtp_err_status_ok) {
		vlog("srtp_create(%s) failed: %d", outbound ? "tx" : "rx", (int)e);
		return NULL;
	}
	return s;
}

static void srtp_try_unprotect(const uint8_t *p, size_t n) {
	uint8_t buf[RECV_BUF_SIZE];
	if (n < 12 || n > sizeof buf) { G.srtp_received_bad++; return; }
	memcpy(buf, p, n);
	int len = (int)n;
	srtp_err_status_t e = srtp_unprotect(G.srtp_rx, buf, &len);
	if (e == srtp_err_status_ok) G.srtp_received_ok++;
	else { G.srtp_received_bad++; vlog("srtp_unprotect failed: %d", (int)e); }
}

static void handle_media(const uint8_t *p, size_t n) {
	if (G.srtp_rx) {
		srtp_try_unprotect(p, n);
	} else if (G.early_n < MAX_EARLY_PACKETS && n <= MAX_EARLY_PACKET_LEN) {
		memcpy(G.early[G.early_n], p, n);
		G.early_len[G.early_n] = (int)n;
		G.early_n++;
	}
}

static void flush_early(void) {
	if (!G.srtp_rx) return;
	for (int i = 0; i < G.early_n; i++) srtp_try_unprotect(G.early[i], (size_t)G.early_len[i]);
	G.early_n = 0;
}

static void send_raw(const uint8_t *p, size_t n) {
	if (!G.peer_known) return;
	if (sendto(G.sock, p, n, 0, (const struct sockaddr *)&G.peer_addr, G.peer_addr_len) < 0)
		vlog("sendto failed: %s", strerror(errno));
}

static void send_one_srtp(void) {
	uint8_t pkt[12 + RTP_PAYLOAD_LEN + SRTP_MAX_TRAILER_LEN + 16];
	G.rtp_seq++;
	G.rtp_ts += 160;
	pkt[0] = 0x80;
	pkt[1] = 0x00; /* PT 0 (PCMU), no marker */
	pkt[2] = (uint8_t)(G.rtp_seq >> 8); pkt[3] = (uint8_t)G.rtp_seq;
	pkt[4] = (uint8_t)(G.rtp_ts >> 24); pkt[5] = (uint8_t)(G.rtp_ts >> 16);
	pkt[6] = (uint8_t)(G.rtp_ts >> 8); pkt[7] = (uint8_t)G.rtp_ts;
	pkt[8] = (uint8_t)(G.ssrc >> 24); pkt[9] = (uint8_t)(G.ssrc >> 16);
	pkt[10] = (uint8_t)(G.ssrc >> 8); pkt[11] = (uint8_t)G.ssrc;
	memset(pkt + 12, 0xFF, RTP_PAYLOAD_LEN);
	int len = 12 + RTP_PAYLOAD_LEN;
	srtp_err_status_t e = srtp_protect(G.srtp_tx, pkt, &len);
	if (e != srtp_err_status_ok) fail("srtp_protect failed: %d", (int)e);
	send_raw(pkt, (size_t)len);
	G.srtp_sent++;
	G.last_srtp_send_ms = now_ms();
}

/* the second channel's media: SRTP with its own keys, payload type --ms-pt */

static void ms_send_raw(const uint8_t *p, size_t n) {
	if (!MS.peer_known) return;
	if (sendto(MS.sock, p, n, 0, (const struct sockaddr *)&MS.peer_addr, MS.peer_addr_len) < 0)
		vlog("ms sendto failed: %s", strerror(errno));
}

static void ms_send_one_srtp(void) {
	uint8_t pkt[12 + RTP_PAYLOAD_LEN + SRTP_MAX_TRAILER_LEN + 16];
	MS.rtp_seq++;
	MS.rtp_ts += 3000; /* 90 kHz video clock, 30 frames a second */
	pkt[0] = 0x80;
	pkt[1] = (uint8_t)(MS.pt & 0x7f);
	pkt[2] = (uint8_t)(MS.rtp_seq >> 8); pkt[3] = (uint8_t)MS.rtp_seq;
	pkt[4] = (uint8_t)(MS.rtp_ts >> 24); pkt[5] = (uint8_t)(MS.rtp_ts >> 16);
	pkt[6] = (uint8_t)(MS.rtp_ts >> 8); pkt[7] = (uint8_t)MS.rtp_ts;
	pkt[8] = (uint8_t)(MS.ssrc >> 24); pkt[9] = (uint8_t)(MS.ssrc >> 16);
	pkt[10] = (uint8_t)(MS.ssrc >> 8); pkt[11] = (uint8_t)MS.ssrc;
	memset(pkt + 12, 0x5A, RTP_PAYLOAD_LEN);
	int len = 12 + RTP_PAYLOAD_LEN;
	srtp_err_status_t e = srtp_protect(MS.srtp_tx, pkt, &len);
	if (e != srtp_err_status_ok) fail("ms srtp_protect failed: %d", (int)e);
	ms_send_raw(pkt, (size_t)len);
	MS.srtp_sent++;
	MS.last_srtp_send_ms = now_ms();
}

static void ms_handle_media(const uint8_t *p, size_t n) {
	uint8_t buf[RECV_BUF_SIZE];
	if (!MS.srtp_rx || n < 12 || n > sizeof buf) { MS.srtp_received_bad++; return; }
	memcpy(buf, p, n);
	int len = (int)n;
	if (srtp_unprotect(MS.srtp_rx, buf, &len) == srtp_err_status_ok) MS.srtp_received_ok++;
	else MS.srtp_received_bad++;
}

static void ms_copy_secrets(const bzrtpSrtpSecrets_t *s) {
	if (s->selfSrtpKey && s->selfSrtpKeyLength <= sizeof MS.self_key && s->selfSrtpSalt &&
			s->selfSrtpSaltLength <= sizeof MS.self_salt) {
		memcpy(MS.self_key, s->selfSrtpKey, s->selfSrtpKeyLength); MS.self_key_len = s->selfSrtpKeyLength;
		memcpy(MS.self_salt, s->selfSrtpSalt, s->selfSrtpSaltLength); MS.self_salt_len = s->selfSrtpSaltLength;
	}
	if (s->peerSrtpKey && s->peerSrtpKeyLength <= sizeof MS.peer_key && s->peerSrtpSalt &&
			s->peerSrtpSaltLength <= sizeof MS.peer_salt) {
		memcpy(MS.peer_key, s->peerSrtpKey, s->peerSrtpKeyLength); MS.peer_key_len = s->peerSrtpKeyLength;
		memcpy(MS.peer_salt, s->peerSrtpSalt, s->peerSrtpSaltLength); MS.peer_salt_len = s->peerSrtpSaltLength;
	}
	MS.cipher_algo = s->cipherAlgo;
	MS.auth_tag_algo = s->authTagAlgo;
}

static int ms_send(const uint8_t *p, uint16_t n) {
	char t[9];
	msg_type(p, n, t);
	memcpy(MS.last_sent, t, sizeof t);
	vlog("ms send %s (%u bytes)%s", t, n, MS.peer_known ? "" : " [dropped: peer unknown]");
	ms_send_raw(p, n);
	return 0;
}

static int ms_secure(const bzrtpSrtpSecrets_t *s) {
	ms_copy_secrets(s);
	if (s->sas) snprintf(MS.sas_raw, sizeof MS.sas_raw, "%s", s->sas);
	MS.key_agreement_algo = s->keyAgreementAlgo;
	MS.secure = 1;
	vlog("ms secure: key agreement %s", algo_name(MS.key_agreement_algo));
	if (G.srtp_count > 0) {
		if (!MS.srtp_tx)
			MS.srtp_tx = make_srtp(1, MS.cipher_algo, MS.auth_tag_algo, MS.self_key, MS.self_key_len, MS.self_salt, MS.self_salt_len);
		if (!MS.srtp_rx)
			MS.srtp_rx = make_srtp(0, MS.cipher_algo, MS.auth_tag_algo, MS.peer_key, MS.peer_key_len, MS.peer_salt, MS.peer_salt_len);
		if (!MS.srtp_tx || !MS.srtp_rx) fail("ms: secure but SRTP session setup failed");
	}
	return 0;
}

/* ------------------------------------------------------------------------- */
/* bzrtp callbacks */

static int cb_status(void *cd, const uint8_t level, const uint8_t id, const char *msg) {
	(void)cd;
	if (id == BZRTP_MESSAGE_CACHEMISMATCH) G.cache_mismatch_msg = 1;
	vlog("status level=%u id=%u %s", level, id, msg ? msg : "");
	return 0;
}

static int cb_send(void *cd, const uint8_t *p, uint16_t n) {
	if (cd == &MS) return ms_send(p, n);
	char t[9];
	msg_type(p, n, t);
	memcpy(G.last_sent, t, sizeof t);
	if (!strcmp(t, "Hello") && n >= HELLO_ZID_OFFSET + 12) {
		memcpy(G.zid_self, p + HELLO_ZID_OFFSET, 12);
		G.have_zid_self = 1;
	} else if (!strcmp(t, "Commit")) {
		if (!G.sent_commit && G.first_commit_from_peer < 0) G.first_commit_from_peer = 0;
		G.sent_commit = 1;
	} else if (!strcmp(t, "DHPart1")) G.sent_dhpart1 = 1;
	else if (!strcmp(t, "DHPart2")) G.sent_dhpart2 = 1;
	else if (!strcmp(t, "Confirm1")) G.sent_confirm1 = 1;
	else if (!strcmp(t, "Confirm2")) G.sent_confirm2 = 1;
	vlog("send %s (%u bytes)%s", t, n, G.peer_known ? "" : " [dropped: peer unknown]");
	send_raw(p, n);
	return 0;
}

static void copy_secrets(const bzrtpSrtpSecrets_t *s, int self_part, int peer_part) {
	if (self_part && s->selfSrtpKey && s->selfSrtpKeyLength <= sizeof G.self_key &&
			s->selfSrtpSalt && s->selfSrtpSaltLength <= sizeof G.self_salt) {
		memcpy(G.self_key, s->selfSrtpKey, s->selfSrtpKeyLength); G.self_key_len = s->selfSrtpKeyLength;
		memcpy(G.self_salt, s->selfSrtpSalt, s->selfSrtpSaltLength); G.self_salt_len = s->selfSrtpSaltLength;
	}
	if (peer_part && s->peerSrtpKey && s->peerSrtpKeyLength <= sizeof G.peer_key &&
			s->peerSrtpSalt && s->peerSrtpSaltLength <= sizeof G.peer_salt) {
		memcpy(G.peer_key, s->peerSrtpKey, s->peerSrtpKeyLength); G.peer_key_len = s->peerSrtpKeyLength;
		memcpy(G.peer_salt, s->peerSrtpSalt, s->peerSrtpSaltLength); G.peer_salt_len = s->peerSrtpSaltLength;
	}
	G.cipher_algo = s->cipherAlgo;
	G.auth_tag_algo = s->authTagAlgo;
}

static int cb_secrets(void *cd, const bzrtpSrtpSecrets_t *s, uint8_t part) {
	if (cd == &MS) { ms_copy_secrets(s); return 0; }
	int self_part = (part & ZRTP_SRTP_SECRETS_FOR_SENDER) != 0;
	int peer_part = (part & ZRTP_SRTP_SECRETS_FOR_RECEIVER) != 0;
	vlog("srtpSecretsAvailable part=%u", part);
	copy_secrets(s, self_part, peer_part);
	if (self_part && !G.srtp_tx && G.srtp_count > 0)
		G.srtp_tx = make_srtp(1, G.cipher_algo, G.auth_tag_algo, G.self_key, G.self_key_len, G.self_salt, G.self_salt_len);
	if (peer_part && !G.srtp_rx) {
		G.srtp_rx = make_srtp(0, G.cipher_algo, G.auth_tag_algo, G.peer_key, G.peer_key_len, G.peer_salt, G.peer_salt_len);
		flush_early();
	}
	return 0;
}

static int cb_start_srtp(void *cd, const bzrtpSrtpSecrets_t *s, int32_t verified) {
	if (cd == &MS) return ms_secure(s);
	copy_secrets(s, 1, 1);
	if (s->sas) {
		size_t l = strnlen(s->sas, sizeof G.sas_raw - 1);
		if (s->sasLength > 0 && (size_t)s->sasLength <= sizeof G.sas_raw && l > s->sasLength) l = s->sasLength;
		memcpy(G.sas_raw, s->sas, l);
		G.sas_raw[l] = 0;
	}
	G.key_agreement_algo = s->keyAgreementAlgo;
	G.hash_algo = s->hashAlgo;
	G.sas_algo = s->sasAlgo;
	G.cache_mismatch_flag = s->cacheMismatch;
	G.verified_arg = verified;
	G.secure = 1;
	G.secure_elapsed_ms = now_ms() - G.t0_ms;
	vlog("secure: sas=%s verified=%d cacheMismatch=%u", G.sas_raw, verified, s->cacheMismatch);
	if (G.srtp_count > 0) {
		if (!G.srtp_tx)
			G.srtp_tx = make_srtp(1, G.cipher_algo, G.auth_tag_algo, G.self_key, G.self_key_len, G.self_salt, G.self_salt_len);
		if (!G.srtp_rx) {
			G.srtp_rx = make_srtp(0, G.cipher_algo, G.auth_tag_algo, G.peer_key, G.peer_key_len, G.peer_salt, G.peer_salt_len);
			flush_early();
		}
	}
	return 0;
}

/* ------------------------------------------------------------------------- */

static const char *channel_status_name(int st) {
	switch (st) {
		case BZRTP_CHANNEL_NOTFOUND: return "NOTFOUND";
		case BZRTP_CHANNEL_INITIALISED: return "INITIALISED";
		case BZRTP_CHANNEL_ONGOING: return "ONGOING";
		case BZRTP_CHANNEL_SECURE: return "SECURE";
		case BZRTP_CHANNEL_ERROR: return "ERROR";
		default: return "?";
	}
}

static const char *role_name(void) {
	if (G.sent_confirm2 || G.sent_dhpart2) return "initiator";
	if (G.sent_confirm1 || G.sent_dhpart1) return "responder";
	if (G.first_commit_from_peer == 1) return "responder";
	if (G.first_commit_from_peer == 0) return "initiator";
	return "unknown";
}

static void print_success(void) {
	char zs[25] = "", zp[25] = "", sk[129], ss[65], pk[129], ps[65], sas[128];
	if (G.have_zid_self) hex_str(zs, G.zid_self, 12);
	if (G.have_zid_peer) hex_str(zp, G.zid_peer, 12);
	hex_str(sk, G.self_key, G.self_key_len);
	hex_str(ss, G.self_salt, G.self_salt_len);
	hex_str(pk, G.peer_key, G.peer_key_len);
	hex_str(ps, G.peer_salt, G.peer_salt_len);
	/* normalise: B256 "word1:word2" -> "word1 word2" */
	snprintf(sas, sizeof sas, "%s", G.sas_raw);
	if (G.sas_algo == ZRTP_SAS_B256)
		for (char *c = sas; *c; c++) if (*c == ':' || *c == '-') *c = ' ';
	FILE *f = stdout;
	fputs("{\"ok\": true, \"sas\": ", f); json_str(f, sas);
	fputs(", \"sas_raw\": ", f); json_str(f, G.sas_raw);
	fprintf(f, ", \"sas_type\": \"%s\", \"key_agreement\": \"%s\", \"hash\": \"%s\", \"cipher\": \"%s\", \"auth_tag\": \"%s\"",
			algo_name(G.sas_algo), algo_name(G.key_agreement_algo), algo_name(G.hash_algo),
			algo_name(G.cipher_algo), algo_name(G.auth_tag_algo));
	fprintf(f, ", \"role\": \"%s\", \"zid_self\": \"%s\", \"zid_peer\": \"%s\"", role_name(), zs, zp);
	fprintf(f, ", \"srtp_self_key\": \"%s\", \"srtp_self_salt\": \"%s\", \"srtp_peer_key\": \"%s\", \"srtp_peer_salt\": \"%s\"",
			sk, ss, pk, ps);
	fprintf(f, ", \"cache_mismatch\": %s, \"previously_verified\": %s",
			(G.cache_mismatch_flag || G.cache_mismatch_msg) ? "true" : "false", G.verified_arg ? "true" : "false");
	fprintf(f, ", \"srtp\": {\"sent\": %d, \"received_ok\": %d, \"received_bad\": %d}", G.srtp_sent, G.srtp_received_ok,
			G.srtp_received_bad);
	fprintf(f, ", \"elapsed_ms\": %.3f", G.secure_elapsed_ms);
	if (MS.bind_str) {
		if (MS.secure) {
			char msk[129], mss[65], mpk[129], mps[65];
			hex_str(msk, MS.self_key, MS.self_key_len);
			hex_str(mss, MS.self_salt, MS.self_salt_len);
			hex_str(mpk, MS.peer_key, MS.peer_key_len);
			hex_str(mps, MS.peer_salt, MS.peer_salt_len);
			fprintf(f, ", \"multistream\": {\"ok\": true, \"key_agreement\": \"%s\", \"cipher\": \"%s\", \"auth_tag\": \"%s\"",
					algo_name(MS.key_agreement_algo), algo_name(MS.cipher_algo), algo_name(MS.auth_tag_algo));
			fputs(", \"sas\": ", f); json_str(f, MS.sas_raw);
			fprintf(f, ", \"srtp_self_key\": \"%s\", \"srtp_self_salt\": \"%s\", \"srtp_peer_key\": \"%s\", \"srtp_peer_salt\": \"%s\"",
					msk, mss, mpk, mps);
			fprintf(f, ", \"srtp\": {\"sent\": %d, \"received_ok\": %d, \"received_bad\": %d}}", MS.srtp_sent,
					MS.srtp_received_ok, MS.srtp_received_bad);
		} else {
			int st = MS.started ? bzrtp_getChannelStatus(G.ctx, MS.ssrc) : 0;
			fprintf(f, ", \"multistream\": {\"ok\": false, \"error\": \"channel %s, started %d, last sent %s, last received %s\"}",
					channel_status_name(st), MS.started, MS.last_sent, MS.last_recv);
		}
	}
	fputs("}\n", f);
	fflush(f);
}

static void usage_fail(const char *why) { fail("usage: %s", why); }

static void parse_args(int argc, char **argv) {
	G.timeout_s = 10.0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
#define NEXT() (i + 1 < argc ? argv[++i] : (usage_fail("missing value"), (char *)NULL))
		if (!strcmp(a, "--bind")) G.bind_str = NEXT();
		else if (!strcmp(a, "--peer")) G.peer_str = NEXT();
		else if (!strcmp(a, "--key-agreement")) G.ka_n = parse_algo_list(a, NEXT(), ZRTP_KEYAGREEMENT_TYPE, G.ka);
		else if (!strcmp(a, "--hash")) G.hash_n = parse_algo_list(a, NEXT(), ZRTP_HASH_TYPE, G.hash);
		else if (!strcmp(a, "--cipher")) G.cipher_n = parse_algo_list(a, NEXT(), ZRTP_CIPHERBLOCK_TYPE, G.cipher);
		else if (!strcmp(a, "--auth-tag")) G.auth_n = parse_algo_list(a, NEXT(), ZRTP_AUTHTAG_TYPE, G.auth);
		else if (!strcmp(a, "--sas")) G.sas_n = parse_algo_list(a, NEXT(), ZRTP_SAS_TYPE, G.sas);
		else if (!strcmp(a, "--cache")) G.cache_path = NEXT();
		else if (!strcmp(a, "--self-uri")) G.self_uri = NEXT();
		else if (!strcmp(a, "--peer-uri")) G.peer_uri = NEXT();
		else if (!strcmp(a, "--mark-verified")) G.mark_verified = 1;
		else if (!strcmp(a, "--srtp")) {
			char *end; long v = strtol(NEXT(), &end, 10);
			if (*end || v < 0 || v > 100000) usage_fail("--srtp N (0..100000)");
			G.srtp_count = (int)v;
		} else if (!strcmp(a, "--timeout")) {
			char *end; double v = strtod(NEXT(), &end);
			if (*end || !(v > 0) || v > 86400) usage_fail("--timeout SECONDS (>0)");
			G.timeout_s = v;
		} else if (!strcmp(a, "--linger-ms")) {
			char *end; long v = strtol(NEXT(), &end, 10);
			if (*end || v < 0 || v > 60000) usage_fail("--linger-ms MS (0..60000)");
			G.linger_ms = (int)v;
		} else if (!strcmp(a, "--port-file")) G.port_file = NEXT();
		else if (!strcmp(a, "--ms-bind")) MS.bind_str = NEXT();
		else if (!strcmp(a, "--ms-peer")) MS.peer_str = NEXT();
		else if (!strcmp(a, "--ms-port-file")) MS.port_file = NEXT();
		else if (!strcmp(a, "--ms-pt")) {
			char *end; long v = strtol(NEXT(), &end, 10);
			if (*end || v < 0 || v > 127) usage_fail("--ms-pt PT (0..127)");
			MS.pt = (int)v;
		}
		else if (!strcmp(a, "--verbose") || !strcmp(a, "-v")) G.verbose = 1;
		else { char m[300]; snprintf(m, sizeof m, "unknown argument '%s'", a); usage_fail(m); }
#undef NEXT
	}
	if (!G.bind_str) usage_fail("--bind HOST:PORT is required");
	if (G.cache_path && (!G.self_uri || !G.peer_uri)) usage_fail("--cache needs --self-uri and --peer-uri");
	if (G.mark_verified && !G.cache_path) usage_fail("--mark-verified needs --cache");
	if ((MS.peer_str || MS.port_file) && !MS.bind_str) usage_fail("--ms-peer and --ms-port-file need --ms-bind");
}

static void write_port_file_of(int sock, const char *path) {
	struct sockaddr_storage ss;
	socklen_t l = sizeof ss;
	if (getsockname(sock, (struct sockaddr *)&ss, &l) < 0) fail("getsockname: %s", strerror(errno));
	int port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
	                                    : ntohs(((struct sockaddr_in *)&ss)->sin_port);
	char tmp[4200];
	if (strlen(path) > 4096) fail("--port-file path too long");
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f) fail("cannot write %s: %s", tmp, strerror(errno));
	fprintf(f, "%d\n", port);
	if (fclose(f) != 0) fail("cannot write %s", tmp);
	if (rename(tmp, path) < 0) fail("cannot rename %s: %s", tmp, strerror(errno));
}

static void write_port_file(void) { write_port_file_of(G.sock, G.port_file); }

/* The second channel's datagrams (its own socket and peer). */
static void ms_process_datagram(const uint8_t *buf, size_t n, const struct sockaddr_storage *from, socklen_t fromlen) {
	if (!MS.peer_known) {
		if (!is_zrtp(buf, n)) return;
		memcpy(&MS.peer_addr, from, fromlen);
		MS.peer_addr_len = fromlen;
		MS.peer_known = 1;
		if (MS.started) {
			bzrtp_resetRetransmissionTimer(G.ctx, MS.ssrc);
			bzrtp_iterate(G.ctx, MS.ssrc, (uint64_t)now_ms());
		}
	} else if (!same_addr(from, &MS.peer_addr)) {
		return;
	}
	if (is_zrtp(buf, n)) {
		char t[9];
		msg_type(buf, n, t);
		memcpy(MS.last_recv, t, sizeof t);
		vlog("ms recv %s (%zu bytes)%s", t, n, MS.started ? "" : " [channel not started yet: dropped]");
		if (!MS.started) return; /* the peer retransmits: taken once our channel runs */
		uint8_t copy[RECV_BUF_SIZE];
		memcpy(copy, buf, n);
		int r = bzrtp_processMessage(G.ctx, MS.ssrc, copy, (uint16_t)n);
		if (r != 0) vlog("ms bzrtp_processMessage(%s) returned 0x%x", t, r);
	} else {
		ms_handle_media(buf, n);
	}
}

/* Once the first channel is secure: the second channel joins the context (Mult). */
static void ms_start(void) {
	int r = bzrtp_addChannel(G.ctx, MS.ssrc);
	if (r != 0) fail("bzrtp_addChannel failed: 0x%x", r);
	if (bzrtp_setClientData(G.ctx, MS.ssrc, &MS) != 0) fail("bzrtp_setClientData (ms) failed");
	MS.started = 1;
	r = bzrtp_startChannelEngine(G.ctx, MS.ssrc);
	if (r != 0) fail("bzrtp_startChannelEngine (ms) failed: 0x%x", r);
	vlog("ms channel started");
}

/* Whether the second channel (if any) has done its part. */
static int ms_done(double now) {
	if (!MS.bind_str) return 1;
	if (!MS.secure) return 0;
	if (G.srtp_count <= 0) return 1;
	if (MS.srtp_sent < G.srtp_count &&
			(MS.srtp_sent == 0 || now - MS.last_srtp_send_ms >= SRTP_SEND_INTERVAL_MS))
		ms_send_one_srtp();
	return MS.srtp_sent >= G.srtp_count &&
		(MS.srtp_received_ok >= G.srtp_count || now - MS.last_srtp_send_ms >= SRTP_DRAIN_MS);
}

static void process_datagram(const uint8_t *buf, size_t n, const struct sockaddr_storage *from, socklen_t fromlen) {
	if (!G.peer_known) {
		if (!is_zrtp(buf, n)) return; /* only a ZRTP packet may teach us the peer */
		memcpy(&G.peer_addr, from, fromlen);
		G.peer_addr_len = fromlen;
		G.peer_known = 1;
		vlog("learnt peer address from first ZRTP datagram");
		/* Our Hellos so far went nowhere (bzrtp stops retransmitting Hello after 20
		 * tries, ~4 s, and would then only re-send it after its HelloACK): restart the
		 * Hello timer so that our Hello goes out right now. */
		bzrtp_resetRetransmissionTimer(G.ctx, G.ssrc);
		bzrtp_iterate(G.ctx, G.ssrc, (uint64_t)now_ms());
	} else if (!same_addr(from, &G.peer_addr)) {
		return;
	}
	if (is_zrtp(buf, n)) {
		char t[9];
		msg_type(buf, n, t);
		memcpy(G.last_recv, t, sizeof t);
		if (!strcmp(t, "Hello") && n >= HELLO_ZID_OFFSET + 12) {
			memcpy(G.zid_peer, buf + HELLO_ZID_OFFSET, 12);
			G.have_zid_peer = 1;
		} else if (!strcmp(t, "Commit") && G.first_commit_from_peer < 0) {
			G.first_commit_from_peer = 1;
		}
		vlog("recv %s (%zu bytes)", t, n);
		uint8_t copy[RECV_BUF_SIZE];
		memcpy(copy, buf, n);
		int r = bzrtp_processMessage(G.ctx, G.ssrc, copy, (uint16_t)n);
		if (r != 0) vlog("bzrtp_processMessage(%s) returned 0x%x", t, r);
	} else {
		handle_media(buf, n);
	}
}

int main(int argc, char **argv) {
	memset(&G, 0, sizeof G);
	memset(&MS, 0, sizeof MS);
	G.sock = -1;
	MS.sock = -1;
	MS.pt = 96;
	strcpy(MS.last_sent, "-");
	strcpy(MS.last_recv, "-");
	G.first_commit_from_peer = -1;
	strcpy(G.last_sent, "-");
	strcpy(G.last_recv, "-");
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);
	parse_args(argc, argv);

	/* socket */
	struct sockaddr_storage bind_addr;
	socklen_t bind_len;
	if (parse_hostport(G.bind_str, &bind_addr, &bind_len, 1) < 0) fail("bad --bind address '%s'", G.bind_str);
	if (G.peer_str) {
		if (parse_hostport(G.peer_str, &G.peer_addr, &G.peer_addr_len, 0) < 0) fail("bad --peer address '%s'", G.peer_str);
		G.peer_known = 1;
	}
	G.sock = socket(bind_addr.ss_family, SOCK_DGRAM, 0);
	if (G.sock < 0) fail("socket: %s", strerror(errno));
	if (bind(G.sock, (struct sockaddr *)&bind_addr, bind_len) < 0) fail("bind %s: %s", G.bind_str, strerror(errno));
	fcntl(G.sock, F_SETFL, fcntl(G.sock, F_GETFL) | O_NONBLOCK);
	G.t0_ms = now_ms();
	if (G.port_file) write_port_file();
	if (MS.bind_str) {
		struct sockaddr_storage ms_addr;
		socklen_t ms_len;
		if (parse_hostport(MS.bind_str, &ms_addr, &ms_len, 1) < 0) fail("bad --ms-bind address '%s'", MS.bind_str);
		if (MS.peer_str) {
			if (parse_hostport(MS.peer_str, &MS.peer_addr, &MS.peer_addr_len, 0) < 0) fail("bad --ms-peer address '%s'", MS.peer_str);
			MS.peer_known = 1;
		}
		MS.sock = socket(ms_addr.ss_family, SOCK_DGRAM, 0);
		if (MS.sock < 0) fail("socket: %s", strerror(errno));
		if (bind(MS.sock, (struct sockaddr *)&ms_addr, ms_len) < 0) fail("bind %s: %s", MS.bind_str, strerror(errno));
		fcntl(MS.sock, F_SETFL, fcntl(MS.sock, F_GETFL) | O_NONBLOCK);
		if (MS.port_file) write_port_file_of(MS.sock, MS.port_file);
	}

	if (getrandom(&G.ssrc, sizeof G.ssrc, 0) != sizeof G.ssrc) G.ssrc = (uint32_t)getpid() * 2654435761u ^ (uint32_t)G.t0_ms;
	if (G.ssrc == 0) G.ssrc = 1;
	MS.ssrc = G.ssrc ^ 0x5a5a5a5au;
	if (MS.ssrc == 0 || MS.ssrc == G.ssrc) MS.ssrc = G.ssrc + 1;

	if (srtp_init() != srtp_err_status_ok) fail("srtp_init failed");

	/* bzrtp context */
	G.ctx = bzrtp_createBzrtpContext();
	if (!G.ctx) fail("bzrtp_createBzrtpContext failed");
	if (G.cache_path) {
		if (sqlite3_open_v2(G.cache_path, &G.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK)
			fail("cannot open cache %s: %s", G.cache_path, G.db ? sqlite3_errmsg(G.db) : "?");
		int r = bzrtp_setZIDCache_lock(G.ctx, G.db, G.self_uri, G.peer_uri, NULL);
		if (r != 0 && r != BZRTP_CACHE_SETUP && r != BZRTP_CACHE_UPDATE) fail("bzrtp_setZIDCache failed: 0x%x", r);
	}
	bzrtpCallbacks_t cbs;
	memset(&cbs, 0, sizeof cbs);
	cbs.bzrtp_statusMessage = cb_status;
	cbs.bzrtp_messageLevel = G.verbose ? BZRTP_MESSAGE_DEBUG : BZRTP_MESSAGE_ERROR;
	cbs.bzrtp_sendData = cb_send;
	cbs.bzrtp_srtpSecretsAvailable = cb_secrets;
	cbs.bzrtp_startSrtpSession = cb_start_srtp;
	if (bzrtp_setCallbacks(G.ctx, &cbs) != 0) fail("bzrtp_setCallbacks failed");
	if (G.ka_n) bzrtp_setSupportedCryptoTypes(G.ctx, ZRTP_KEYAGREEMENT_TYPE, G.ka, (uint8_t)G.ka_n);
	if (G.hash_n) bzrtp_setSupportedCryptoTypes(G.ctx, ZRTP_HASH_TYPE, G.hash, (uint8_t)G.hash_n);
	if (G.cipher_n) bzrtp_setSupportedCryptoTypes(G.ctx, ZRTP_CIPHERBLOCK_TYPE, G.cipher, (uint8_t)G.cipher_n);
	if (G.auth_n) bzrtp_setSupportedCryptoTypes(G.ctx, ZRTP_AUTHTAG_TYPE, G.auth, (uint8_t)G.auth_n);
	if (G.sas_n) bzrtp_setSupportedCryptoTypes(G.ctx, ZRTP_SAS_TYPE, G.sas, (uint8_t)G.sas_n);
	int r = bzrtp_initBzrtpContext(G.ctx, G.ssrc);
	if (r != 0) fail("bzrtp_initBzrtpContext failed: 0x%x", r);
	if (bzrtp_setClientData(G.ctx, G.ssrc, &G) != 0) fail("bzrtp_setClientData failed");
	bzrtp_iterate(G.ctx, G.ssrc, (uint64_t)now_ms());
	r = bzrtp_startChannelEngine(G.ctx, G.ssrc);
	if (r != 0) fail("bzrtp_startChannelEngine failed: 0x%x", r);

	const double deadline = G.t0_ms + G.timeout_s * 1000.0;
	double done_at = -1; /* when set: time at which we print and leave */
	int printed = 0, verified_marked = 0;
	uint8_t buf[RECV_BUF_SIZE];

	for (;;) {
		double now = now_ms();
		if (now >= deadline) break;

		/* wait for input at most ~10 ms */
		struct pollfd pfd[2] = {{.fd = G.sock, .events = POLLIN}, {.fd = MS.sock, .events = POLLIN}};
		int wait = 10;
		if (deadline - now < wait) wait = (int)(deadline - now) + 1;
		int pr = poll(pfd, MS.sock >= 0 ? 2 : 1, wait);
		if (pr < 0 && errno != EINTR) fail("poll: %s", strerror(errno));

		/* drain the socket */
		for (int k = 0; k < 256; k++) {
			struct sockaddr_storage from;
			socklen_t fromlen = sizeof from;
			ssize_t n = recvfrom(G.sock, buf, sizeof buf, MSG_TRUNC, (struct sockaddr *)&from, &fromlen);
			if (n < 0) break;
			if (n == 0 || (size_t)n > sizeof buf || n > 65535) continue; /* empty or truncated: drop */
			process_datagram(buf, (size_t)n, &from, fromlen);
		}
		for (int k = 0; MS.sock >= 0 && k < 256; k++) {
			struct sockaddr_storage from;
			socklen_t fromlen = sizeof from;
			ssize_t n = recvfrom(MS.sock, buf, sizeof buf, MSG_TRUNC, (struct sockaddr *)&from, &fromlen);
			if (n < 0) break;
			if (n == 0 || (size_t)n > sizeof buf || n > 65535) continue;
			ms_process_datagram(buf, (size_t)n, &from, fromlen);
		}

		bzrtp_iterate(G.ctx, G.ssrc, (uint64_t)now_ms());
		if (MS.started) bzrtp_iterate(G.ctx, MS.ssrc, (uint64_t)now_ms());

		if (!G.secure) continue;
		now = now_ms();
		if (MS.bind_str && !MS.started) ms_start();
		int second_done = ms_done(now);

		if (G.mark_verified && !verified_marked) {
			bzrtp_SASVerified(G.ctx);
			verified_marked = 1;
		}

		if (G.srtp_count > 0) {
			if (!G.srtp_tx || !G.srtp_rx) fail("secure but SRTP session setup failed");
			if (G.srtp_sent < G.srtp_count &&
					(G.srtp_sent == 0 || now - G.last_srtp_send_ms >= SRTP_SEND_INTERVAL_MS))
				send_one_srtp();
			if (G.srtp_sent >= G.srtp_count &&
					(G.srtp_received_ok >= G.srtp_count || now - G.last_srtp_send_ms >= SRTP_DRAIN_MS) && second_done) {
				if (!printed) { print_success(); printed = 1; }
				if (done_at < 0) done_at = now + G.linger_ms;
			}
		} else if (second_done) {
			if (!printed) { print_success(); printed = 1; }
			if (done_at < 0) done_at = now + G.linger_ms;
		}
		if (done_at >= 0 && now >= done_at) break;
	}

	if (G.secure) {
		/* deadline reached after going secure: report what we have */
		if (!printed) print_success();
		cleanup();
		return 0;
	}
	int st = G.ctx ? bzrtp_getChannelStatus(G.ctx, G.ssrc) : 0;
	fail("timeout after %.1f s: bzrtp channel status %s, peer %s, last sent %s, last received %s", G.timeout_s,
			channel_status_name(st), G.peer_known ? "known" : "unknown (nothing received)", G.last_sent, G.last_recv);
}
