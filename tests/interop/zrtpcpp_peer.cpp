/*
 * zrtpcpp_peer: a ZRTP (RFC 6189) endpoint built on GNU ZRTP (ZRTPCPP, the core
 * library without ccRTP), talking ZRTP and then SRTP (libsrtp2, with the keys GNU
 * ZRTP hands out) over UDP. Used by the pbx_zrtp interoperability tests; built by
 * zrtpcpp_build.py, never shipped.
 *
 * Usage:
 *   zrtpcpp_peer --bind HOST:PORT [--peer HOST:PORT]
 *      [--key-agreement LIST] [--hash LIST] [--cipher LIST] [--auth-tag LIST] [--sas LIST]
 *      [--cache PATH] [--mark-verified] [--accept-enrollment] [--sas-relay-wait MS]
 *      [--ms-bind HOST:PORT [--ms-peer HOST:PORT] [--ms-port-file PATH]]
 *      [--srtp N] [--timeout SECONDS] [--port-file PATH] [--linger-ms MS] [--verbose]
 *
 * Without a list option GNU ZRTP's standard configuration is used (S384, S256;
 * 2FS3, AES3, 2FS1, AES1; EC25, DH3k, EC38, DH2k, Mult; B32; SK32, SK64, HS32,
 * HS80). Curve25519 is E255 in GNU ZRTP. --cache PATH is GNU ZRTP's SQLite cache,
 * which also holds this endpoint's ZID (a temporary one without --cache).
 * --ms-bind starts a second stream (Multistream) on its own socket once the first
 * is secure. Without --peer the first ZRTP datagram's source becomes the peer; the
 * engine starts then (like a phone whose call just connected).
 *
 * Output: exactly one JSON line (as bzrtp_peer); "sas_relay_support" tells
 * whether the library was built with ZRTP_SAS_RELAY_SUPPORT.
 */
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

#include <libzrtpcpp/ZRtp.h>
#include <libzrtpcpp/ZrtpCWrapper.h>
#include <srtp2/srtp.h>

#define BUF 4096
#define RTP_PAYLOAD_LEN 160
#define SRTP_SEND_INTERVAL_MS 20.0
#define SRTP_DRAIN_MS 1500.0

struct stream_t {
	int sock;
	struct sockaddr_storage peer;
	socklen_t peer_len;
	int peer_known;
	uint32_t ssrc;
	uint16_t zrtp_seq;
	ZrtpContext *ctx;
	int started, secure, failed, fail_severity, fail_code, not_supported;
	double secure_ms, timer_due;
	int role; /* 1 responder, 2 initiator (GNU ZRTP's enum Role) */
	uint8_t self_key[32], self_salt[14], peer_key[32], peer_salt[14];
	int self_key_len, peer_key_len, auth_bits, cipher_alg, auth_alg;
	srtp_t tx, rx;
	int srtp_sent, srtp_ok, srtp_bad;
	uint16_t rtp_seq;
	uint32_t rtp_ts;
	double last_send;
	char sas[64], cs[64];
	int verified;
	char last_sent[9], last_recv[9];
};

static struct {
	const char *bind_str, *peer_str, *ms_bind, *ms_peer, *ms_port_file, *port_file, *cache;
	const char *ka, *hash, *cipher, *auth, *sas;
	int mark_verified, accept_enrollment, sas_relay_wait_ms, srtp_count, linger_ms, verbose;
	double timeout_s, t0;
	char cache_path[4200];
	stream_t st[2];
	int nstreams;
	int enrollment_asked, enrollment_ok, sas_relay_seen, have_zid_self;
	uint8_t zid_self[12];
	char relayed_sas[64], relay_cs[64];
} G;

#define PEER_NAME "zrtpcpp_peer"
#define PEER_VERBOSE G.verbose
#define PEER_T0 G.t0
#define PEER_ON_FAIL() \
	do { \
		if (!G.cache && G.cache_path[0]) unlink(G.cache_path); \
	} while (0)
#include "peer_common.h"

/* ------------------------------------------------------------------ SRTP (libsrtp2) */

static srtp_t make_srtp(int outbound, const uint8_t *key, int key_len, const uint8_t *salt, int auth_bits) {
	srtp_policy_t pol;
	uint8_t master[46];
	srtp_t s = NULL;
	memset(&pol, 0, sizeof pol);
	if (key_len == 32) {
		if (auth_bits == 80) srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80(&pol.rtp);
		else srtp_crypto_policy_set_aes_cm_256_hmac_sha1_32(&pol.rtp);
	} else {
		if (auth_bits == 80) srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&pol.rtp);
		else srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32(&pol.rtp);
	}
	srtp_crypto_policy_set_rtcp_default(&pol.rtcp);
	memcpy(master, key, (size_t)key_len);
	memcpy(master + key_len, salt, 14);
	pol.key = master;
	pol.ssrc.type = outbound ? ssrc_any_outbound : ssrc_any_inbound;
	pol.window_size = 1024;
	if (srtp_create(&s, &pol) != srtp_err_status_ok) s = NULL;
	memset(master, 0, sizeof master);
	return s;
}

static void send_srtp(stream_t *st) {
	uint8_t pkt[12 + RTP_PAYLOAD_LEN + SRTP_MAX_TRAILER_LEN];
	int len = 12 + RTP_PAYLOAD_LEN;
	st->rtp_seq++;
	st->rtp_ts += 160;
	pkt[0] = 0x80; pkt[1] = 0;
	pkt[2] = (uint8_t)(st->rtp_seq >> 8); pkt[3] = (uint8_t)st->rtp_seq;
	uint32_t ts = htonl(st->rtp_ts), ssrc = htonl(st->ssrc);
	memcpy(pkt + 4, &ts, 4);
	memcpy(pkt + 8, &ssrc, 4);
	memset(pkt + 12, 0xff, RTP_PAYLOAD_LEN);
	if (srtp_protect(st->tx, pkt, &len) != srtp_err_status_ok) fail("srtp_protect failed");
	sendto(st->sock, pkt, (size_t)len, 0, (struct sockaddr *)&st->peer, st->peer_len);
	st->srtp_sent++;
	st->last_send = now_ms();
}

/* ------------------------------------------------------------------ GNU ZRTP callbacks */

static stream_t *of(ZrtpContext *ctx) { return (stream_t *)ctx->userData; }

static void msg_type(const uint8_t *p, size_t n, char out[9]) {
	if (n >= 24 && p[12] == 0x50 && p[13] == 0x5a) {
		memcpy(out, p + 16, 8);
		out[8] = 0;
		for (int i = 7; i >= 0 && out[i] == ' '; i--) out[i] = 0;
	} else strcpy(out, "?");
}

static int32_t cb_send(ZrtpContext *ctx, const uint8_t *data, int32_t length) {
	stream_t *st = of(ctx);
	uint8_t pkt[BUF];
	if (length < 4 || length + 12 > BUF) return 0;
	pkt[0] = 0x10; pkt[1] = 0;
	st->zrtp_seq++;
	pkt[2] = (uint8_t)(st->zrtp_seq >> 8); pkt[3] = (uint8_t)st->zrtp_seq;
	memcpy(pkt + 4, "ZRTP", 4);
	uint32_t ssrc = htonl(st->ssrc);
	memcpy(pkt + 8, &ssrc, 4);
	memcpy(pkt + 12, data, (size_t)length);
	uint16_t n = (uint16_t)(12 + length - 4);
	uint32_t crc = htonl(zrtp_EndCksum(zrtp_GenerateCksum(pkt, n)));
	memcpy(pkt + n, &crc, 4);
	msg_type(pkt, (size_t)n + 4, st->last_sent);
	if (!strcmp(st->last_sent, "Hello") && n >= 76 + 12) { /* 12 + 4 + 8 + 4 + 16 + 32: the Hello's ZID */
		memcpy(G.zid_self, pkt + 76, 12);
		G.have_zid_self = 1;
	}
	vlog("stream %d send %s", (int)(st - G.st), st->last_sent);
	if (st->peer_known) sendto(st->sock, pkt, (size_t)n + 4, 0, (struct sockaddr *)&st->peer, st->peer_len);
	return 1;
}

static int32_t cb_activate_timer(ZrtpContext *ctx, int32_t time) { of(ctx)->timer_due = now_ms() + time; return 1; }
static int32_t cb_cancel_timer(ZrtpContext *ctx) { of(ctx)->timer_due = -1; return 1; }
static void cb_info(ZrtpContext *ctx, int32_t severity, int32_t code) {
	vlog("stream %d info severity=%d code=%d", (int)(of(ctx) - G.st), severity, code);
}

static int32_t cb_secrets_ready(ZrtpContext *ctx, C_SrtpSecret_t *s, int32_t part) {
	stream_t *st = of(ctx);
	int initiator = s->role == 2;
	st->role = s->role;
	st->auth_bits = s->srtpAuthTagLen;
	st->cipher_alg = s->symEncAlgorithm;
	st->auth_alg = s->authAlgorithm;
	const uint8_t *own_key = initiator ? s->keyInitiator : s->keyResponder;
	const uint8_t *own_salt = initiator ? s->saltInitiator : s->saltResponder;
	const uint8_t *peer_key = initiator ? s->keyResponder : s->keyInitiator;
	const uint8_t *peer_salt = initiator ? s->saltResponder : s->saltInitiator;
	int own_len = (initiator ? s->initKeyLen : s->respKeyLen) / 8;
	int peer_len = (initiator ? s->respKeyLen : s->initKeyLen) / 8;
	if (own_len > 32 || peer_len > 32) return 0;
	if (part & ForSender) {
		memcpy(st->self_key, own_key, (size_t)own_len); st->self_key_len = own_len;
		memcpy(st->self_salt, own_salt, 14);
		if (!st->tx && s->symEncAlgorithm == zrtp_Aes && s->authAlgorithm == zrtp_Sha1)
			st->tx = make_srtp(1, own_key, own_len, own_salt, st->auth_bits);
	}
	if (part & ForReceiver) {
		memcpy(st->peer_key, peer_key, (size_t)peer_len); st->peer_key_len = peer_len;
		memcpy(st->peer_salt, peer_salt, 14);
		if (!st->rx && s->symEncAlgorithm == zrtp_Aes && s->authAlgorithm == zrtp_Sha1)
			st->rx = make_srtp(0, peer_key, peer_len, peer_salt, st->auth_bits);
	}
	return 1;
}

static void cb_secrets_off(ZrtpContext *ctx, int32_t part) { (void)ctx; (void)part; }

static void cb_secrets_on(ZrtpContext *ctx, char *c, char *s, int32_t verified) {
	stream_t *st = of(ctx);
	vlog("stream %d secure: cs=%s sas=%s verified=%d", (int)(st - G.st), c, s, verified);
	if (!st->secure) {
		st->secure = 1;
		st->secure_ms = now_ms() - G.t0;
		snprintf(st->sas, sizeof st->sas, "%s", s ? s : "");
		snprintf(st->cs, sizeof st->cs, "%s", c ? c : "");
		st->verified = verified;
	} else {
		/* A second call once secure comes from a SASrelay (§7.3). */
		G.sas_relay_seen = 1;
		snprintf(G.relayed_sas, sizeof G.relayed_sas, "%s", s ? s : "");
		snprintf(G.relay_cs, sizeof G.relay_cs, "%s", c ? c : "");
	}
}

static void cb_go_clear(ZrtpContext *ctx) { (void)ctx; }
static void cb_failed(ZrtpContext *ctx, int32_t severity, int32_t code) {
	stream_t *st = of(ctx);
	vlog("stream %d negotiation failed severity=%d code=0x%x", (int)(st - G.st), severity, code);
	st->failed = 1;
	st->fail_severity = severity;
	st->fail_code = code;
}
static void cb_not_supp(ZrtpContext *ctx) { of(ctx)->not_supported = 1; }
static void cb_enter(ZrtpContext *ctx) { (void)ctx; }
static void cb_leave(ZrtpContext *ctx) { (void)ctx; }
static void cb_ask_enrollment(ZrtpContext *ctx, int32_t info) {
	vlog("ask enrollment %d", info);
	G.enrollment_asked = 1;
	zrtp_acceptEnrollment(ctx, G.accept_enrollment ? 1 : 0);
}
static void cb_inform_enrollment(ZrtpContext *ctx, int32_t info) {
	(void)ctx;
	vlog("inform enrollment %d", info);
	if (info == 4 /* EnrollmentOk */) G.enrollment_ok = 1;
}
static void cb_sign(ZrtpContext *ctx, uint8_t *sas) { (void)ctx; (void)sas; }
static int32_t cb_check_sign(ZrtpContext *ctx, uint8_t *sas) { (void)ctx; (void)sas; return 1; }

/* ------------------------------------------------------------------ algorithms */

static void configure(ZrtpContext *ctx, Zrtp_AlgoTypes type, const char *list, const char *opt) {
	char buf[256];
	if (!list) return;
	while (zrtp_getNumConfiguredAlgos(ctx, type) > 0) zrtp_removeAlgo(ctx, type, zrtp_getAlgoAt(ctx, type, 0));
	snprintf(buf, sizeof buf, "%s", list);
	for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char name[5] = "    ";
		memcpy(name, tok, strlen(tok) < 4 ? strlen(tok) : 4);
		if (zrtp_addAlgo(ctx, type, name) < 0 || !zrtp_containsAlgo(ctx, type, name))
			fail("%s: GNU ZRTP does not know '%s'", opt, tok);
	}
}

static void start_engine(stream_t *st, ZrtpContext *master) {
	static zrtp_Callbacks cbs;
	cbs.zrtp_sendDataZRTP = cb_send;
	cbs.zrtp_activateTimer = cb_activate_timer;
	cbs.zrtp_cancelTimer = cb_cancel_timer;
	cbs.zrtp_sendInfo = cb_info;
	cbs.zrtp_srtpSecretsReady = cb_secrets_ready;
	cbs.zrtp_srtpSecretsOff = cb_secrets_off;
	cbs.zrtp_rtpSecretsOn = cb_secrets_on;
	cbs.zrtp_handleGoClear = cb_go_clear;
	cbs.zrtp_zrtpNegotiationFailed = cb_failed;
	cbs.zrtp_zrtpNotSuppOther = cb_not_supp;
	cbs.zrtp_synchEnter = cb_enter;
	cbs.zrtp_synchLeave = cb_leave;
	cbs.zrtp_zrtpAskEnrollment = cb_ask_enrollment;
	cbs.zrtp_zrtpInformEnrollment = cb_inform_enrollment;
	cbs.zrtp_signSAS = cb_sign;
	cbs.zrtp_checkSASSignature = cb_check_sign;
	st->ctx = zrtp_CreateWrapper();
	zrtp_InitializeConfig(st->ctx);
	zrtp_setStandardConfig(st->ctx); /* an empty configuration would mean mandatory types only */
	configure(st->ctx, zrtp_PubKeyAlgorithm, G.ka, "--key-agreement");
	if (G.ka && !zrtp_containsAlgo(st->ctx, zrtp_PubKeyAlgorithm, "Mult"))
		zrtp_addAlgo(st->ctx, zrtp_PubKeyAlgorithm, "Mult");
	configure(st->ctx, zrtp_HashAlgorithm, G.hash, "--hash");
	configure(st->ctx, zrtp_CipherAlgorithm, G.cipher, "--cipher");
	configure(st->ctx, zrtp_AuthLength, G.auth, "--auth-tag");
	configure(st->ctx, zrtp_SasType, G.sas, "--sas");
	/* "trusted MitM" here enables the phone side of enrollment (it does not set the
	 * M flag); GNU ZRTP honours it only when built with ZRTP_SAS_RELAY_SUPPORT. */
	if (G.accept_enrollment) zrtp_setTrustedMitM(st->ctx, 1);
	zrtp_initializeZrtpEngine(st->ctx, &cbs, "GNU ZRTP peer", G.cache_path, st, 0);
	if (master) {
		int32_t len = 0;
		char *params = zrtp_getMultiStrParams(master, &len);
		if (!params || len <= 0) fail("GNU ZRTP gave no Multistream parameters");
		zrtp_setMultiStrParams(st->ctx, params, len, master);
		free(params);
	}
	zrtp_startZrtpEngine(st->ctx);
	st->started = 1;
}

static void receive(stream_t *st) {
	uint8_t buf[BUF];
	for (int k = 0; k < 256; k++) {
		struct sockaddr_storage from;
		socklen_t fl = sizeof from;
		ssize_t n = recvfrom(st->sock, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
		if (n <= 0) return;
		int is_zrtp = n >= 28 && (buf[0] & 0xF0) == 0x10 && !memcmp(buf + 4, "ZRTP", 4);
		if (!st->peer_known) {
			if (!is_zrtp) continue;
			memcpy(&st->peer, &from, fl);
			st->peer_len = fl;
			st->peer_known = 1;
			if (st == &G.st[0]) start_engine(st, NULL);
		} else if (!same_addr(&from, &st->peer)) continue;
		if (!st->started) continue;
		if (is_zrtp) {
			uint16_t body = (uint16_t)(n - 4);
			uint32_t crc;
			memcpy(&crc, buf + body, 4);
			if (!zrtp_CheckCksum(buf, body, ntohl(crc))) { vlog("bad CRC"); continue; }
			msg_type(buf, (size_t)n, st->last_recv);
			vlog("stream %d recv %s", (int)(st - G.st), st->last_recv);
			uint32_t peer_ssrc;
			memcpy(&peer_ssrc, buf + 8, 4);
			zrtp_processZrtpMessage(st->ctx, buf + 12, ntohl(peer_ssrc), (size_t)n);
		} else if (st->rx) {
			int len = (int)n;
			if (srtp_unprotect(st->rx, buf, &len) == srtp_err_status_ok) st->srtp_ok++;
			else st->srtp_bad++;
		}
	}
}

/* ------------------------------------------------------------------ report */

/* getDetailInfo() gives GNU ZRTP's readable names; the wire names are what we compare. */
static const char *const NAMES[][2] = {
	{"SHA-256", "S256"}, {"SHA-384", "S384"}, {"Skein-256", "SKN2"}, {"Skein-384", "SKN3"},
	{"AES-256", "AES3"}, {"AES-128", "AES1"}, {"Twofish-256", "2FS3"}, {"TwoFish-128", "2FS1"},
	{"DH-2048", "DH2k"}, {"NIST ECDH-256", "EC25"}, {"DH-3072", "DH3k"}, {"NIST ECDH-384", "EC38"},
	{"Multi-stream", "Mult"}, {"ECDH-255", "E255"}, {"ECDH-414", "E414"},
	{"HMAC-SHA1 32 bit", "HS32"}, {"HMAC-SHA1 80 bit", "HS80"}, {"Skein-MAC 32 bit", "SK32"},
	{"Skein-MAC 64 bit", "SK64"},
};

static void name4(char out[5], const char *s) {
	for (size_t i = 0; s && i < sizeof NAMES / sizeof NAMES[0]; i++)
		if (!strcmp(NAMES[i][0], s)) { snprintf(out, 5, "%s", NAMES[i][1]); return; }
	snprintf(out, 5, "%s", s ? s : "?");
	for (int i = 3; i >= 0 && out[i] == ' '; i--) out[i] = 0;
}

static void stream_fields(const stream_t *st) {
	char sk[65], ss[29], pk[65], ps[29];
	hex(sk, st->self_key, st->self_key_len);
	hex(ss, st->self_salt, 14);
	hex(pk, st->peer_key, st->peer_key_len);
	hex(ps, st->peer_salt, 14);
	printf("\"role\": \"%s\", \"srtp_self_key\": \"%s\", \"srtp_self_salt\": \"%s\", \"srtp_peer_key\": \"%s\", "
		"\"srtp_peer_salt\": \"%s\", \"srtp\": {\"sent\": %d, \"received_ok\": %d, \"received_bad\": %d}, "
		"\"elapsed_ms\": %.1f", st->role == 2 ? "initiator" : "responder", sk, ss, pk, ps, st->srtp_sent,
		st->srtp_ok, st->srtp_bad, st->secure_ms);
}

static void print_success(void) {
	stream_t *st = &G.st[0];
	const ZRtp::zrtpInfo *info = st->ctx->zrtpEngine->getDetailInfo();
	uint8_t zid_peer[12];
	char zs[25] = "", zp[25] = "", hash[5], cipher[5], ka[5], sas_type[5], auth[5];
	zrtp_getPeerZid(st->ctx, zid_peer);
	hex(zp, zid_peer, 12);
	name4(hash, info->hash);
	name4(cipher, info->cipher);
	name4(ka, info->pubKey);
	const char *sas_name = zrtp_getSasType(st->ctx); /* malloc()ed; the detail info has no SAS type */
	name4(sas_type, sas_name);
	free((void *)sas_name);
	name4(auth, info->authLength);
	if (G.have_zid_self) hex(zs, G.zid_self, 12);
	int rs = ZRtp::Rs1 | ZRtp::Rs2;
	int mismatch = (info->secretsCached & rs) && !(info->secretsMatched & rs);
	char sas[64];
	snprintf(sas, sizeof sas, "%s", st->sas);
	for (char *c = sas; *c; c++) if (*c == ':') *c = ' ';
	char displayed[64];
	snprintf(displayed, sizeof displayed, "%s", G.sas_relay_seen ? G.relayed_sas : st->sas);
	for (char *c = displayed; *c; c++) if (*c == ':') *c = ' ';
	printf("{\"ok\": true, \"sas\": ");
	json_str(sas);
	printf(", \"sas_type\": \"%s\", \"key_agreement\": \"%s\", \"hash\": \"%s\", \"cipher\": \"%s\", \"auth_tag\": \"%s\", ",
		sas_type, ka, hash, cipher, auth);
	printf("\"zid_self\": \"%s\", \"zid_peer\": \"%s\", ", zs, zp);
	stream_fields(st);
	printf(", \"cache_mismatch\": %s, \"previously_verified\": %s, \"secrets_cached\": %d, \"secrets_matched\": %d",
		mismatch ? "true" : "false", st->verified ? "true" : "false", info->secretsCached, info->secretsMatched);
	printf(", \"enrollment_offered\": %s, \"enrolled\": %s, \"pbx_trusted\": %s, \"sas_relay_seen\": %s",
		G.enrollment_asked ? "true" : "false", G.enrollment_ok ? "true" : "false",
		st->ctx->zrtpEngine->isPeerEnrolled() ? "true" : "false", G.sas_relay_seen ? "true" : "false");
	printf(", \"sas_relay_cs\": ");
	json_str(G.relay_cs);
	printf(", \"cs\": ");
	json_str(st->cs);
	printf(", \"displayed_sas\": ");
	json_str(displayed);
#ifdef ZRTP_SAS_RELAY_SUPPORT
	printf(", \"sas_relay_support\": true");
#else
	printf(", \"sas_relay_support\": false");
#endif
	if (G.nstreams > 1) {
		stream_t *m = &G.st[1];
		if (m->secure) {
			printf(", \"multistream\": {\"ok\": true, \"key_agreement\": \"%s\", ",
				zrtp_isMultiStream(m->ctx) ? "Mult" : "DH");
			stream_fields(m);
			printf("}");
		} else {
			printf(", \"multistream\": {\"ok\": false, \"error\": \"last sent %s, last received %s, code 0x%x\"}",
				m->last_sent, m->last_recv, m->fail_code);
		}
	}
	printf("}\n");
	fflush(stdout);
}

/* ------------------------------------------------------------------ main */

static void parse_args(int argc, char **argv) {
	G.timeout_s = 10;
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
		else if (!strcmp(a, "--mark-verified")) G.mark_verified = 1;
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
}

static int stream_done(stream_t *st, double now) {
	if (!st->secure) return 0;
	if (G.srtp_count == 0) return 1;
	return st->srtp_sent >= G.srtp_count && (st->srtp_ok >= G.srtp_count || now - st->last_send >= SRTP_DRAIN_MS);
}

int main(int argc, char **argv) {
	signal(SIGPIPE, SIG_IGN);
	G.t0 = now_ms();
	parse_args(argc, argv);
	if (srtp_init() != srtp_err_status_ok) fail("srtp_init failed");
	if (G.cache) snprintf(G.cache_path, sizeof G.cache_path, "%s", G.cache);
	else snprintf(G.cache_path, sizeof G.cache_path, "/tmp/zrtpcpp-peer-%d.db", (int)getpid());
	G.nstreams = G.ms_bind ? 2 : 1;
	for (int i = 0; i < G.nstreams; i++) {
		stream_t *st = &G.st[i];
		st->timer_due = -1;
		strcpy(st->last_sent, "-");
		strcpy(st->last_recv, "-");
		st->sock = open_socket(i ? G.ms_bind : G.bind_str, i ? G.ms_port_file : G.port_file);
		const char *peer = i ? G.ms_peer : G.peer_str;
		if (peer) {
			if (parse_hostport(peer, &st->peer, &st->peer_len, 0) < 0) fail("bad peer address '%s'", peer);
			st->peer_known = 1;
		}
		if (getrandom(&st->ssrc, 4, 0) != 4) fail("getrandom failed");
		if (getrandom(&st->zrtp_seq, 2, 0) != 2) fail("getrandom failed");
		st->zrtp_seq &= 0x0fff;
	}
	if (G.st[0].peer_known) start_engine(&G.st[0], NULL);

	const double deadline = G.t0 + G.timeout_s * 1000.0;
	double done_at = -1, relay_until = -1;
	int verified_marked = 0;
	while (now_ms() < deadline) {
		struct pollfd pfd[2];
		for (int i = 0; i < G.nstreams; i++) { pfd[i].fd = G.st[i].sock; pfd[i].events = POLLIN; }
		poll(pfd, (nfds_t)G.nstreams, 5);
		for (int i = 0; i < G.nstreams; i++) receive(&G.st[i]);
		double now = now_ms();
		for (int i = 0; i < G.nstreams; i++) {
			stream_t *st = &G.st[i];
			if (st->started && st->timer_due >= 0 && now >= st->timer_due) {
				st->timer_due = -1;
				zrtp_processTimeout(st->ctx);
			}
		}
		stream_t *first = &G.st[0];
		if (first->failed && !first->secure)
			fail("GNU ZRTP negotiation failed: severity %d code 0x%x (last sent %s, last received %s)",
				first->fail_severity, first->fail_code, first->last_sent, first->last_recv);
		if (!first->secure) continue;
		if (G.mark_verified && !verified_marked) { zrtp_SASVerified(first->ctx); verified_marked = 1; }
		if (G.nstreams > 1 && !G.st[1].started && G.st[1].peer_known) start_engine(&G.st[1], first->ctx);
		for (int i = 0; i < G.nstreams; i++) {
			stream_t *st = &G.st[i];
			if (st->secure && G.srtp_count > 0 && st->tx && st->srtp_sent < G.srtp_count &&
					(st->srtp_sent == 0 || now - st->last_send >= SRTP_SEND_INTERVAL_MS))
				send_srtp(st);
		}
		int all = 1;
		for (int i = 0; i < G.nstreams; i++) all = all && (stream_done(&G.st[i], now) || G.st[i].failed);
		if (!all) continue;
		if (relay_until < 0) relay_until = now + G.sas_relay_wait_ms;
		if (now < relay_until && !G.sas_relay_seen) continue;
		if (done_at < 0) { print_success(); done_at = now + G.linger_ms; }
		if (now >= done_at) break;
	}
	if (done_at < 0 && G.st[0].secure) print_success();
	if (!G.cache) unlink(G.cache_path);
	if (done_at >= 0 || G.st[0].secure) return 0;
	fail("timeout after %.1f s: %s, last sent %s, last received %s", G.timeout_s,
		G.st[0].started ? "engine started" : "no ZRTP packet received", G.st[0].last_sent, G.st[0].last_recv);
}
