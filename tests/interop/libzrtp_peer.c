/*
 * libzrtp_peer: a ZRTP (RFC 6189) endpoint built on Zfone's libzrtp (the
 * reference implementation by the protocol's author, which FreeSWITCH <= 1.10.8
 * embedded), talking ZRTP and then SRTP (libzrtp's own) over UDP. Used by the
 * pbx_zrtp interoperability tests; built by libzrtp_build.py, never shipped.
 *
 * Usage:
 *   libzrtp_peer --bind HOST:PORT [--peer HOST:PORT]
 *      [--key-agreement LIST] [--hash LIST] [--cipher LIST] [--auth-tag LIST] [--sas LIST]
 *      [--license passive|active|unlimited] [--cache PATH] [--mark-verified]
 *      [--accept-enrollment] [--sas-relay-wait MS]
 *      [--ms-bind HOST:PORT [--ms-peer HOST:PORT] [--ms-port-file PATH]]
 *      [--srtp N] [--timeout SECONDS] [--port-file PATH] [--linger-ms MS] [--verbose]
 *
 * Without a list option libzrtp's stock profile is used (S256; AES3, AES1; HS32;
 * EC25, DH3k, DH2k, Mult; B256, B32). --license defaults to unlimited (libzrtp's
 * own default, passive, refuses any peer with the M flag: Error 0xA0).
 * --cache PATH keeps libzrtp's file cache there and this endpoint's ZID in PATH.zid.
 * --ms-bind starts a second stream on its own socket once the first is secure:
 * libzrtp runs it in Multistream mode ("multistream" in the report).
 * Without --peer the first ZRTP datagram's source becomes the peer.
 *
 * Output: exactly one JSON line (as bzrtp_peer). SRTP keys are captured where
 * libzrtp hands them to its SRTP engine (link with -Wl,--wrap=zrtp_srtp_create).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <zrtp.h>

#define BUF 4096
#define RTP_PAYLOAD_LEN 160
#define SRTP_SEND_INTERVAL_MS 20.0
#define SRTP_DRAIN_MS 1500.0
#define MAX_TASKS 64

typedef struct {
	int sock;
	struct sockaddr_storage peer;
	socklen_t peer_len;
	int peer_known;
	uint32_t ssrc;
	zrtp_stream_t *zs;
	int started, secure, failed;
	double secure_ms;
	int sent_commit, sent_dhpart1, sent_dhpart2, sent_confirm1, sent_confirm2, got_commit_first;
	uint8_t self_key[32], self_salt[14], peer_key[32], peer_salt[14];
	int self_key_len, peer_key_len, have_keys;
	int srtp_sent, srtp_ok, srtp_bad;
	uint16_t rtp_seq;
	uint32_t rtp_ts;
	double last_send;
	char last_sent[9], last_recv[9];
	int error_code;
} stream_t;

static struct {
	const char *bind_str, *peer_str, *ms_bind, *ms_peer, *ms_port_file, *port_file, *cache;
	const char *ka, *hash, *cipher, *auth, *sas;
	int license, mark_verified, accept_enrollment, sas_relay_wait_ms, srtp_count, linger_ms, verbose;
	double timeout_s, t0;
	zrtp_global_t *zrtp;
	zrtp_session_t *session;
	stream_t st[2];
	int nstreams;
	stream_t *creating; /* stream whose SRTP keys are being set up */
	int enrollment_offered, enrolled, already_enrolled, sas_updated, passive_restriction;
	char sas_at_secure[64];
	int verified_at_secure;
	struct { zrtp_stream_t *s; zrtp_retry_task_t *t; double due; } tasks[MAX_TASKS];
	int ntasks;
} G;

#define PEER_NAME "libzrtp_peer"
#define PEER_VERBOSE G.verbose
#define PEER_T0 G.t0
#include "peer_common.h"

static void log_engine(int level, char *data, int len, int offset) {
	(void)offset;
	if (G.verbose || level <= 1) fprintf(stderr, "%.*s", len, data);
}

/* ------------------------------------------------------------------ algorithms */

static void set_list(uint8_t *out, zrtp_crypto_comp_t type, const char *list, const char *opt) {
	char buf[256];
	int n = 0;
	if (!list) return;
	snprintf(buf, sizeof buf, "%s", list);
	memset(out, 0, ZRTP_MAX_COMP_COUNT + 1);
	for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char name[5] = "    ";
		memcpy(name, tok, strlen(tok) < 4 ? strlen(tok) : 4);
		uint8_t id = zrtp_comp_type2id(type, name);
		if (!id) fail("%s: libzrtp does not know '%s'", opt, tok);
		if (n >= ZRTP_MAX_COMP_COUNT) fail("%s: too many types", opt);
		out[n++] = id;
	}
}

static zrtp_profile_t *G_profile;

static void ensure(uint8_t *list, zrtp_crypto_comp_t type, uint8_t id) {
	int n = 0;
	if (zrtp_profile_find(G_profile, type, id) >= 0) return;
	while (list[n]) n++;
	if (n < ZRTP_MAX_COMP_COUNT) list[n] = id;
}

static void comp_name(char out[5], const zrtp_uchar4_t type) {
	memcpy(out, type, 4);
	out[4] = 0;
	for (int i = 3; i >= 0 && out[i] == ' '; i--) out[i] = 0;
}

/* ------------------------------------------------------------------ scheduler (single thread) */

static zrtp_status_t sched_init(zrtp_global_t *z) { (void)z; return zrtp_status_ok; }
static void sched_down(void) {}
static void sched_call_later(zrtp_stream_t *s, zrtp_retry_task_t *t) {
	if (!t->_is_enabled) return;
	for (int i = 0; i < G.ntasks; i++)
		if (G.tasks[i].t == t) { G.tasks[i].due = now_ms() + (double)t->timeout; return; }
	if (G.ntasks >= MAX_TASKS) fail("scheduler full");
	G.tasks[G.ntasks].s = s;
	G.tasks[G.ntasks].t = t;
	G.tasks[G.ntasks].due = now_ms() + (double)t->timeout;
	G.ntasks++;
}
static void sched_cancel(zrtp_stream_t *s, zrtp_retry_task_t *t) {
	for (int i = 0; i < G.ntasks;) {
		if (G.tasks[i].s == s && (t == NULL || G.tasks[i].t == t)) G.tasks[i] = G.tasks[--G.ntasks];
		else i++;
	}
}
static void sched_wait(zrtp_stream_t *s) { (void)s; }

static void run_due_tasks(void) {
	for (int round = 0; round < 16; round++) {
		int found = -1;
		double now = now_ms();
		for (int i = 0; i < G.ntasks; i++)
			if (G.tasks[i].due <= now && (found < 0 || G.tasks[i].due < G.tasks[found].due)) found = i;
		if (found < 0) return;
		zrtp_stream_t *s = G.tasks[found].s;
		zrtp_retry_task_t *t = G.tasks[found].t;
		G.tasks[found] = G.tasks[--G.ntasks];
		if (t->_is_enabled) {
			t->_is_busy = 1;
			t->callback(s, t);
			t->_is_busy = 0;
		}
	}
}

/* ------------------------------------------------------------------ callbacks */

static stream_t *find(const zrtp_stream_t *zs) {
	for (int i = 0; i < G.nstreams; i++) if (G.st[i].zs == zs) return &G.st[i];
	return NULL;
}

static void msg_type(const uint8_t *p, size_t n, char out[9]) {
	if (n >= 24 && p[12] == 0x50 && p[13] == 0x5a) {
		memcpy(out, p + 16, 8);
		out[8] = 0;
		for (int i = 7; i >= 0 && out[i] == ' '; i--) out[i] = 0;
	} else strcpy(out, "?");
}

static int on_send(const zrtp_stream_t *zs, char *packet, unsigned int length) {
	stream_t *st = find(zs);
	if (!st) return zrtp_status_fail;
	char t[9];
	msg_type((const uint8_t *)packet, length, t);
	memcpy(st->last_sent, t, 9);
	if (!strcmp(t, "Commit")) { if (!st->sent_commit && st->got_commit_first < 0) st->got_commit_first = 0; st->sent_commit = 1; }
	else if (!strcmp(t, "DHPart1")) st->sent_dhpart1 = 1;
	else if (!strcmp(t, "DHPart2")) st->sent_dhpart2 = 1;
	else if (!strcmp(t, "Confirm1")) st->sent_confirm1 = 1;
	else if (!strcmp(t, "Confirm2")) st->sent_confirm2 = 1;
	vlog("stream %d send %s (%u bytes)%s", (int)(st - G.st), t, length, st->peer_known ? "" : " [peer unknown]");
	if (st->peer_known) sendto(st->sock, packet, length, 0, (struct sockaddr *)&st->peer, st->peer_len);
	return 0; /* zrtp_status_ok: 0 means sent, whatever the header says */
}

static void on_protocol_event(zrtp_stream_t *zs, zrtp_protocol_event_t ev) {
	stream_t *st = find(zs);
	vlog("protocol event %d", (int)ev);
	switch (ev) {
		case ZRTP_EVENT_IS_CLIENT_ENROLLMENT:
			G.enrollment_offered = 1;
			if (G.accept_enrollment) {
				zrtp_status_t s = zrtp_register_with_trusted_mitm(zs); /* stores the pbxsecret */
				vlog("zrtp_register_with_trusted_mitm -> %d", (int)s);
				if (s == zrtp_status_ok) G.enrolled = 1;
			}
			break;
		case ZRTP_EVENT_USER_ALREADY_ENROLLED: G.already_enrolled = 1; break;
		case ZRTP_EVENT_LOCAL_SAS_UPDATED:
		case ZRTP_EVENT_REMOTE_SAS_UPDATED: G.sas_updated = 1; break;
		case ZRTP_EVENT_IS_PASSIVE_RESTRICTION: G.passive_restriction = 1; break;
		case ZRTP_EVENT_IS_SECURE:
			if (st && !st->secure) { st->secure = 1; st->secure_ms = now_ms() - G.t0; }
			break;
		default: break;
	}
}

static void on_security_event(zrtp_stream_t *zs, zrtp_security_event_t ev) {
	stream_t *st = find(zs);
	vlog("security event %d", (int)ev);
	if (ev == ZRTP_EVENT_PROTOCOL_ERROR && st) {
		zrtp_stream_info_t info;
		zrtp_stream_get(zs, &info);
		st->error_code = (int)info.last_error;
		st->failed = 1;
	}
}

static void on_secure(zrtp_stream_t *zs) {
	stream_t *st = find(zs);
	if (st && !st->secure) { st->secure = 1; st->secure_ms = now_ms() - G.t0; }
}

static void on_not_secure(zrtp_stream_t *zs) {
	stream_t *st = find(zs);
	vlog("not secure");
	if (st && !st->secure) st->failed = 1;
}

/* libzrtp derives the SRTP keys and hands them only to its SRTP engine. */
zrtp_srtp_ctx_t *__real_zrtp_srtp_create(zrtp_srtp_global_t *g, zrtp_srtp_profile_t *in, zrtp_srtp_profile_t *out);
zrtp_srtp_ctx_t *__wrap_zrtp_srtp_create(zrtp_srtp_global_t *g, zrtp_srtp_profile_t *in, zrtp_srtp_profile_t *out) {
	for (int i = 0; i < G.nstreams; i++) {
		stream_t *st = &G.st[i];
		if (st->have_keys || !st->zs || !st->zs->protocol) continue;
		if (st->zs->protocol->_srtp) continue;
		if (in->key.length > 32 || out->key.length > 32 || in->salt.length != 14 || out->salt.length != 14) break;
		memcpy(st->peer_key, in->key.buffer, in->key.length); st->peer_key_len = in->key.length;
		memcpy(st->peer_salt, in->salt.buffer, 14);
		memcpy(st->self_key, out->key.buffer, out->key.length); st->self_key_len = out->key.length;
		memcpy(st->self_salt, out->salt.buffer, 14);
		st->have_keys = 1;
		break;
	}
	return __real_zrtp_srtp_create(g, in, out);
}

/* ------------------------------------------------------------------ media */

static void send_srtp(stream_t *st) {
	char pkt[12 + RTP_PAYLOAD_LEN + 64];
	unsigned int len = 12 + RTP_PAYLOAD_LEN;
	st->rtp_seq++;
	st->rtp_ts += 160;
	pkt[0] = (char)0x80; pkt[1] = 0;
	pkt[2] = (char)(st->rtp_seq >> 8); pkt[3] = (char)st->rtp_seq;
	uint32_t ts = htonl(st->rtp_ts), ssrc = htonl(st->ssrc);
	memcpy(pkt + 4, &ts, 4);
	memcpy(pkt + 8, &ssrc, 4);
	memset(pkt + 12, 0xff, RTP_PAYLOAD_LEN);
	if (zrtp_process_rtp(st->zs, pkt, &len) != zrtp_status_ok) fail("zrtp_process_rtp failed");
	sendto(st->sock, pkt, len, 0, (struct sockaddr *)&st->peer, st->peer_len);
	st->srtp_sent++;
	st->last_send = now_ms();
}

static void start_stream(stream_t *st) {
	if (st->started) return;
	if (zrtp_stream_attach(G.session, &st->zs) != zrtp_status_ok) fail("zrtp_stream_attach failed");
	if (zrtp_stream_start(st->zs, st->ssrc) != zrtp_status_ok) fail("zrtp_stream_start failed");
	st->started = 1;
}

static void receive(stream_t *st) {
	char buf[BUF];
	for (int k = 0; k < 256; k++) {
		struct sockaddr_storage from;
		socklen_t fl = sizeof from;
		ssize_t n = recvfrom(st->sock, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
		if (n <= 0) return;
		int is_zrtp = n >= 12 && (buf[0] & 0xF0) == 0x10 && !memcmp(buf + 4, "ZRTP", 4);
		if (!st->peer_known) {
			if (!is_zrtp) continue;
			memcpy(&st->peer, &from, fl);
			st->peer_len = fl;
			st->peer_known = 1;
		} else if (!same_addr(&from, &st->peer)) continue;
		if (!st->started) continue; /* a Multistream stream waits for the first to be secure */
		if (is_zrtp) {
			msg_type((uint8_t *)buf, (size_t)n, st->last_recv);
			if (!strcmp(st->last_recv, "Commit") && st->got_commit_first < 0) st->got_commit_first = 1;
			vlog("stream %d recv %s", (int)(st - G.st), st->last_recv);
		}
		unsigned int len = (unsigned int)n;
		zrtp_status_t s = zrtp_process_srtp(st->zs, buf, &len);
		if (!is_zrtp && st->secure) {
			if (s == zrtp_status_ok) st->srtp_ok++;
			else st->srtp_bad++;
		}
	}
}

/* ------------------------------------------------------------------ report */

static const char *role(const stream_t *st) {
	if (st->sent_confirm2 || st->sent_dhpart2) return "initiator";
	if (st->sent_confirm1 || st->sent_dhpart1) return "responder";
	return st->got_commit_first == 1 ? "responder" : "initiator";
}

static void stream_fields(const stream_t *st) {
	char sk[65], ss[29], pk[65], ps[29];
	hex(sk, st->self_key, st->self_key_len);
	hex(ss, st->self_salt, 14);
	hex(pk, st->peer_key, st->peer_key_len);
	hex(ps, st->peer_salt, 14);
	printf("\"role\": \"%s\", \"srtp_self_key\": \"%s\", \"srtp_self_salt\": \"%s\", \"srtp_peer_key\": \"%s\", "
		"\"srtp_peer_salt\": \"%s\", \"srtp\": {\"sent\": %d, \"received_ok\": %d, \"received_bad\": %d}, "
		"\"elapsed_ms\": %.1f", role(st), sk, ss, pk, ps, st->srtp_sent, st->srtp_ok, st->srtp_bad, st->secure_ms);
}

static void current_sas(char *out, size_t n) {
	zrtp_session_info_t info;
	zrtp_session_get(G.session, &info);
	if (info.sas2.length)
		snprintf(out, n, "%.*s %.*s", (int)info.sas1.length, info.sas1.buffer, (int)info.sas2.length, info.sas2.buffer);
	else
		snprintf(out, n, "%.*s", (int)info.sas1.length, info.sas1.buffer);
}

static void print_success(void) {
	zrtp_session_info_t info;
	zrtp_session_get(G.session, &info);
	zrtp_session_t *s = G.session;
	stream_t *st = &G.st[0];
	char zs[25], zp[25], hash[5], cipher[5], auth[5], sas_type[5], ka[5], displayed[64];
	hex(zs, (const uint8_t *)G.zrtp->zid.buffer, 12);
	hex(zp, (const uint8_t *)s->peer_zid.buffer, 12);
	comp_name(hash, s->hash->base.type);
	comp_name(cipher, s->blockcipher->base.type);
	comp_name(auth, s->authtaglength->base.type);
	comp_name(sas_type, s->sasscheme->base.type);
	comp_name(ka, st->zs->pubkeyscheme->base.type);
	current_sas(displayed, sizeof displayed);
	uint32_t rs = ZRTP_BIT_RS1 | ZRTP_BIT_RS2;
	int mismatch = (info.cached_flags & rs) && !(info.matches_flags & rs);
	printf("{\"ok\": true, \"sas\": ");
	json_str(G.sas_at_secure);
	printf(", \"sas_type\": \"%s\", \"key_agreement\": \"%s\", \"hash\": \"%s\", \"cipher\": \"%s\", \"auth_tag\": \"%s\", ",
		sas_type, ka, hash, cipher, auth);
	printf("\"zid_self\": \"%s\", \"zid_peer\": \"%s\", ", zs, zp);
	stream_fields(st);
	printf(", \"cache_mismatch\": %s, \"previously_verified\": %s, \"cached_flags\": %u, \"matches_flags\": %u",
		mismatch ? "true" : "false", G.verified_at_secure ? "true" : "false", info.cached_flags, info.matches_flags);
	printf(", \"peer_mitm\": %s, \"enrollment_offered\": %s, \"enrolled\": %s, \"pbx_trusted\": %s",
		st->zs->peer_mitm_flag ? "true" : "false", G.enrollment_offered ? "true" : "false",
		G.enrolled ? "true" : "false", (info.matches_flags & ZRTP_BIT_PBX) ? "true" : "false");
	printf(", \"sas_updated\": %s, \"displayed_sas\": ", G.sas_updated ? "true" : "false");
	json_str(displayed);
	if (G.nstreams > 1) {
		stream_t *m = &G.st[1];
		if (m->secure) {
			printf(", \"multistream\": {\"ok\": true, \"key_agreement\": \"%s\", ",
				m->zs->mode == ZRTP_STREAM_MODE_MULT ? "Mult" : "DH");
			stream_fields(m);
			printf("}");
		} else {
			printf(", \"multistream\": {\"ok\": false, \"error\": \"last sent %s, last received %s, error 0x%x\"}",
				m->last_sent, m->last_recv, m->error_code);
		}
	}
	printf("}\n");
	fflush(stdout);
}

/* ------------------------------------------------------------------ main */

static void parse_args(int argc, char **argv) {
	G.timeout_s = 10;
	G.license = ZRTP_LICENSE_MODE_UNLIMITED;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
#define NEXT() (i + 1 < argc ? argv[++i] : (fail("usage: %s needs a value", a), (char *)NULL))
		if (!strcmp(a, "--bind")) G.bind_str = NEXT();
		else if (!strcmp(a, "--peer")) G.peer_str = NEXT();
		else if (!strcmp(a, "--ms-bind")) G.ms_bind = NEXT();
		else if (!strcmp(a, "--ms-peer")) G.ms_peer = NEXT();
		else if (!strcmp(a, "--ms-port-file")) G.ms_port_file = NEXT();
		else if (!strcmp(a, "--port-file")) G.port_file = NEXT();
		else if (!strcmp(a, "--cache")) G.cache = NEXT();
		else if (!strcmp(a, "--key-agreement")) G.ka = NEXT();
		else if (!strcmp(a, "--hash")) G.hash = NEXT();
		else if (!strcmp(a, "--cipher")) G.cipher = NEXT();
		else if (!strcmp(a, "--auth-tag")) G.auth = NEXT();
		else if (!strcmp(a, "--sas")) G.sas = NEXT();
		else if (!strcmp(a, "--license")) {
			const char *v = NEXT();
			if (!strcmp(v, "passive")) G.license = ZRTP_LICENSE_MODE_PASSIVE;
			else if (!strcmp(v, "active")) G.license = ZRTP_LICENSE_MODE_ACTIVE;
			else if (!strcmp(v, "unlimited")) G.license = ZRTP_LICENSE_MODE_UNLIMITED;
			else fail("usage: --license passive|active|unlimited");
		} else if (!strcmp(a, "--mark-verified")) G.mark_verified = 1;
		else if (!strcmp(a, "--accept-enrollment")) G.accept_enrollment = 1;
		else if (!strcmp(a, "--sas-relay-wait")) G.sas_relay_wait_ms = atoi(NEXT());
		else if (!strcmp(a, "--srtp")) G.srtp_count = atoi(NEXT());
		else if (!strcmp(a, "--timeout")) G.timeout_s = atof(NEXT());
		else if (!strcmp(a, "--linger-ms")) G.linger_ms = atoi(NEXT());
		else if (!strcmp(a, "--verbose")) G.verbose = 1;
		else fail("usage: unknown argument '%s'", a);
#undef NEXT
	}
	if (!G.bind_str) fail("usage: --bind HOST:PORT is required");
	if (G.mark_verified && !G.cache) fail("usage: --mark-verified needs --cache");
	if (G.accept_enrollment && !G.cache) fail("usage: --accept-enrollment needs --cache");
}

static void load_zid(uint8_t zid[12]) {
	char path[4200];
	if (getrandom(zid, 12, 0) != 12) fail("getrandom failed");
	if (!G.cache) return;
	snprintf(path, sizeof path, "%s.zid", G.cache);
	FILE *f = fopen(path, "rb");
	if (f) {
		size_t n = fread(zid, 1, 12, f);
		fclose(f);
		if (n == 12) return;
	}
	f = fopen(path, "wb");
	if (!f || fwrite(zid, 1, 12, f) != 12) fail("cannot write %s", path);
	fclose(f);
}

static int stream_done(stream_t *st, double now) {
	if (!st->secure) return 0;
	if (G.srtp_count == 0) return 1;
	return st->srtp_sent >= G.srtp_count && (st->srtp_ok >= G.srtp_count || now - st->last_send >= SRTP_DRAIN_MS);
}

int main(int argc, char **argv) {
	signal(SIGPIPE, SIG_IGN);
	memset(&G, 0, sizeof G);
	G.t0 = now_ms();
	parse_args(argc, argv);
	zrtp_log_set_log_engine(log_engine); /* stdout carries only the JSON report */
	zrtp_log_set_level(G.verbose ? 3 : 1);
	G.nstreams = G.ms_bind ? 2 : 1;
	for (int i = 0; i < G.nstreams; i++) {
		stream_t *st = &G.st[i];
		st->got_commit_first = -1;
		strcpy(st->last_sent, "-");
		strcpy(st->last_recv, "-");
		st->sock = open_socket(i ? G.ms_bind : G.bind_str, i ? G.ms_port_file : G.port_file);
		const char *peer = i ? G.ms_peer : G.peer_str;
		if (peer) {
			if (parse_hostport(peer, &st->peer, &st->peer_len, 0) < 0) fail("bad peer address '%s'", peer);
			st->peer_known = 1;
		}
		if (getrandom(&st->ssrc, 4, 0) != 4) fail("getrandom failed");
	}

	zrtp_config_t cfg;
	zrtp_config_defaults(&cfg);
	memcpy(cfg.client_id, "libzrtp peer    ", 16);
	cfg.lic_mode = (zrtp_license_mode_t)G.license;
	cfg.is_mitm = 0;
	load_zid(cfg.zid);
	cfg.cache_type = ZRTP_CACHE_FILE;
	cfg.cache_file_cfg.cache_auto_store = 1;
	if (G.cache) snprintf(cfg.cache_file_cfg.cache_path, sizeof cfg.cache_file_cfg.cache_path, "%s", G.cache);
	else snprintf(cfg.cache_file_cfg.cache_path, sizeof cfg.cache_file_cfg.cache_path, "/tmp/libzrtp-peer-%d.cache", (int)getpid());
	cfg.cb.misc_cb.on_send_packet = on_send;
	cfg.cb.event_cb.on_zrtp_protocol_event = on_protocol_event;
	cfg.cb.event_cb.on_zrtp_security_event = on_security_event;
	cfg.cb.event_cb.on_zrtp_secure = on_secure;
	cfg.cb.event_cb.on_zrtp_not_secure = on_not_secure;
	cfg.cb.sched_cb.on_init = sched_init;
	cfg.cb.sched_cb.on_down = sched_down;
	cfg.cb.sched_cb.on_call_later = sched_call_later;
	cfg.cb.sched_cb.on_cancel_call_later = sched_cancel;
	cfg.cb.sched_cb.on_wait_call_later = sched_wait;
	if (zrtp_init(&cfg, &G.zrtp) != zrtp_status_ok) fail("zrtp_init failed");

	zrtp_profile_t profile;
	zrtp_profile_defaults(&profile, G.zrtp);
	G_profile = &profile;
	set_list(profile.pk_schemes, ZRTP_CC_PKT, G.ka, "--key-agreement");
	set_list(profile.hash_schemes, ZRTP_CC_HASH, G.hash, "--hash");
	set_list(profile.cipher_types, ZRTP_CC_CIPHER, G.cipher, "--cipher");
	set_list(profile.auth_tag_lens, ZRTP_CC_ATL, G.auth, "--auth-tag");
	set_list(profile.sas_schemes, ZRTP_CC_SAS, G.sas, "--sas");
	/* libzrtp insists on the mandatory types (and Mult) in every profile: append them. */
	ensure(profile.pk_schemes, ZRTP_CC_PKT, ZRTP_PKTYPE_DH3072);
	ensure(profile.pk_schemes, ZRTP_CC_PKT, ZRTP_PKTYPE_MULT);
	ensure(profile.hash_schemes, ZRTP_CC_HASH, ZRTP_HASH_SHA256);
	ensure(profile.cipher_types, ZRTP_CC_CIPHER, ZRTP_CIPHER_AES128);
	ensure(profile.auth_tag_lens, ZRTP_CC_ATL, ZRTP_ATL_HS32);
	ensure(profile.sas_schemes, ZRTP_CC_SAS, ZRTP_SAS_BASE32);
	if (zrtp_profile_check(&profile, G.zrtp) != zrtp_status_ok) fail("libzrtp refuses this profile");
	if (zrtp_session_init(G.zrtp, &profile, ZRTP_SIGNALING_ROLE_UNKNOWN, &G.session) != zrtp_status_ok)
		fail("zrtp_session_init failed");
	start_stream(&G.st[0]);

	const double deadline = G.t0 + G.timeout_s * 1000.0;
	double done_at = -1, relay_until = -1;
	int verified_marked = 0;
	while (now_ms() < deadline) {
		struct pollfd pfd[2];
		for (int i = 0; i < G.nstreams; i++) { pfd[i].fd = G.st[i].sock; pfd[i].events = POLLIN; }
		poll(pfd, (nfds_t)G.nstreams, 5);
		for (int i = 0; i < G.nstreams; i++) receive(&G.st[i]);
		run_due_tasks();
		double now = now_ms();
		stream_t *first = &G.st[0];
		if (first->failed && !first->secure)
			fail("libzrtp reported a protocol error 0x%x (last sent %s, last received %s)", first->error_code,
				first->last_sent, first->last_recv);
		if (!first->secure) continue;
		if (!G.sas_at_secure[0]) {
			zrtp_session_info_t info;
			current_sas(G.sas_at_secure, sizeof G.sas_at_secure);
			zrtp_session_get(G.session, &info);
			G.verified_at_secure = info.sas_is_verified != 0; /* before we mark it ourselves */
		}
		if (G.mark_verified && !verified_marked) {
			zrtp_verified_set(G.zrtp, &G.zrtp->zid, &G.session->peer_zid, 1);
			verified_marked = 1;
		}
		if (G.nstreams > 1 && !G.st[1].started) start_stream(&G.st[1]);
		for (int i = 0; i < G.nstreams; i++) {
			stream_t *st = &G.st[i];
			if (st->secure && G.srtp_count > 0 && st->srtp_sent < G.srtp_count &&
					(st->srtp_sent == 0 || now - st->last_send >= SRTP_SEND_INTERVAL_MS))
				send_srtp(st);
		}
		int all = 1;
		for (int i = 0; i < G.nstreams; i++) all = all && (stream_done(&G.st[i], now) || G.st[i].failed);
		if (!all) continue;
		if (relay_until < 0) relay_until = now + G.sas_relay_wait_ms;
		if (now < relay_until && !G.sas_updated) continue;
		if (done_at < 0) { print_success(); done_at = now + G.linger_ms; }
		if (now >= done_at) break;
	}
	if (done_at >= 0) return 0;
	if (G.st[0].secure) { print_success(); return 0; }
	fail("timeout after %.1f s: last sent %s, last received %s%s", G.timeout_s, G.st[0].last_sent,
		G.st[0].last_recv, G.passive_restriction ? " (passive license restriction)" : "");
}
