/*
 * fuzz_fastpath.c: libFuzzer harness for the native worker (pbx_zrtp/relay/_fastpath.c).
 *
 * The worker's per-datagram decision, decide(), touches no socket: this harness
 * includes _fastpath.c whole and drives decide() and call_srtp() (what fp_srtp runs
 * for Python under the worker's lock) on one call with real libsrtp sessions, made
 * per input with fixed keys by the libsrtp production uses (pylibsrtp's bundled
 * build). What Python does with a punted datagram is modelled here as Mirror does
 * it: a phone packet from a new address moves the latch only if it authenticates
 * (and is fresh) in the call's own session; RTCP is protected/unprotected as SRTCP.
 *
 * An input is a little program: a flags byte (bit 0: HS32, bit 1: the call is IPv6,
 * bit 2: AES3, i.e. AES_CM_256 keys), then operations (raw phone datagram, authentic
 * phone SRTP, replay or tampered copy of a captured one, from the phone's address,
 * its rebinding, an attacker or a look-alike of the phone's address (IPv6: the same
 * address and port in another scope; IPv4: the phone as a v4-mapped IPv6 address);
 * PBX RTP with any header byte, from the PBX, a stranger or a look-alike (IPv6: the
 * PBX with a flow label, which is the PBX; IPv4: v4-mapped, which is not), raw PBX
 * datagram, authentic phone SRTCP, PBX RTCP on P+1).
 *
 * Invariants (a broken one aborts, like a crash):
 *   - nothing unauthenticated from the phone side reaches the PBX, and no captured
 *     packet reaches it twice (replays from any address are refused);
 *   - what reaches the PBX is exactly what the phone protected, and every authentic
 *     fresh packet does (a reference receiver, its own session with the same key and
 *     RFC 5761 demultiplexing written here, says which are: none may be lost);
 *   - the latch moves only on an authentic, fresh packet;
 *   - every datagram of 12-1500 bytes from the PBX reaches the phone exactly as a
 *     reference sender (its own session, RFC 5761) protects it, byte for byte (the
 *     same (SSRC, index), RTP or RTCP), or is refused by both (a repeated index);
 *     and it authenticates at the phone's own receiver, which tracks the rollover
 *     counter: a reused (SSRC, index) or a lost rollover fails there;
 *   - decide() forwards nothing from a stranger on the PBX side, returns only
 *     known verdicts, and its output length stays in the buffer.
 * "The phone", "the PBX", "a stranger" are judged with the harness's own address
 * comparison (ref_same), not the worker's.
 * AddressSanitizer and UndefinedBehaviorSanitizer catch memory and UB errors.
 *
 * Build (bench/fuzz_targets.py does it): clang -g -O1 -fsanitize=fuzzer,address,undefined
 *   -fno-sanitize-recover=all -I pbx_zrtp/relay $(pkg-config --cflags libsrtp2)
 *   -DSRTP_LIB='"<pylibsrtp/_binding.abi3.so>"' bench/fuzz_fastpath.c
 *   -Wl,--no-as-needed -lpython3.11 -lpthread -ldl
 * (libpython only provides the symbols pylibsrtp's module refers to; it is never
 * initialised.)
 */
#include "_fastpath.c"

#ifndef SRTP_LIB
#error "build with -DSRTP_LIB='\"path of pylibsrtp's _binding module\"'"
#endif

/* -DFUZZ_TRACE prints what each operation did (to check what a seed reaches). */
#ifdef FUZZ_TRACE
#define TRACE(...) fprintf(stderr, __VA_ARGS__)
#else
#define TRACE(...) ((void)0)
#endif

#define MAX_OPS 48
#define MAX_CAPTURED 24
#define PHONE_SSRC 0x0BADCAFEu
#define PBX_SSRC 0x5EED5EEDu

static srtp_err_status_t (*srtp_create_fn)(srtp_t *, const srtp_policy_t *);
static srtp_err_status_t (*srtp_dealloc_fn)(srtp_t);
static srtp_err_status_t (*policy_from_profile)(srtp_crypto_policy_t *, srtp_profile_t);
static void (*policy_aes256_80)(srtp_crypto_policy_t *);
static void (*policy_aes256_32)(srtp_crypto_policy_t *);

struct captured {
    uint8_t wire[BUFSZ];
    int wire_len;
    uint8_t plain[BUFSZ];
    int plain_len;
    int rtcp;
    int forwarded;
};

struct input {
    const uint8_t *data;
    size_t size, pos;
};

static unsigned byte(struct input *in) { return in->pos < in->size ? in->data[in->pos++] : 0; }
static unsigned u16(struct input *in) {
    unsigned high = byte(in); /* two statements: the order of evaluation is fixed */
    return high << 8 | byte(in);
}
static size_t take(struct input *in, uint8_t *out, size_t want) {
    size_t n = in->size - in->pos < want ? in->size - in->pos : want;
    memcpy(out, in->data + in->pos, n);
    in->pos += n;
    return n;
}

/* RFC 5761, written out independently of the worker's is_rtcp(). */
#define RFC5761_RTCP(p, len) ((len) >= 2 && (p)[1] >= 192 && (p)[1] <= 223)

/* The lab's addresses, one set per family: phone, its rebinding, an attacker, a
 * look-alike of the phone; the PBX, a stranger, a look-alike of the PBX. */
struct lab_addrs {
    fp_addr_t addrs[4], pbx, pbx_stranger, pbx_lookalike;
};

static struct {
    struct call c;
    srtp_t phone_tx, phone_rx; /* the phone: independent sessions, same keys */
    srtp_t ref_tx, ref_rx;     /* reference relay sessions: what an honest relay does */
    struct lab_addrs net[2];   /* [0] IPv4, [1] IPv6 */
    const struct lab_addrs *n; /* this input's */
    struct captured cap[MAX_CAPTURED];
    int ncap;
} L;

#define FINDING(...)                                                                        \
    do {                                                                                    \
        fputs("fuzz_fastpath finding: ", stderr);                                           \
        fprintf(stderr, __VA_ARGS__);                                                       \
        fputc('\n', stderr);                                                                \
        abort();                                                                            \
    } while (0)

/* The lab's own address equality (what Python compares: family, address, port, IPv6
 * scope), written out apart from the worker's same_addr(): the invariants below judge
 * the worker's decisions with it, so a wrong same_addr() shows as a finding. */
static int ref_same(const fp_addr_t *a, const fp_addr_t *b) {
    if (a->sa.sa_family != b->sa.sa_family) return 0;
    if (a->sa.sa_family == AF_INET)
        return ntohs(a->v4.sin_port) == ntohs(b->v4.sin_port) &&
               ntohl(a->v4.sin_addr.s_addr) == ntohl(b->v4.sin_addr.s_addr);
    for (int i = 0; i < 16; i++)
        if (a->v6.sin6_addr.s6_addr[i] != b->v6.sin6_addr.s6_addr[i]) return 0;
    return ntohs(a->v6.sin6_port) == ntohs(b->v6.sin6_port) &&
           a->v6.sin6_scope_id == b->v6.sin6_scope_id;
}

static void make_addr(fp_addr_t *a, const char *ip, int port) {
    if (parse_addr(a, ip, port, strchr(ip, ':') ? AF_INET6 : AF_INET) != 0)
        FINDING("bad lab address %s", ip);
}

static srtp_t session(int inbound, const uint8_t *key, int hs32, int aes3) {
    srtp_policy_t policy;
    memset(&policy, 0, sizeof policy);
    /* what pbx_zrtp.srtp.SrtpContext sets up: the suite on RTP and SRTCP alike (HS32 on
     * SRTCP too), no repeats */
    if (aes3) {
        (hs32 ? policy_aes256_32 : policy_aes256_80)(&policy.rtp);
        (hs32 ? policy_aes256_32 : policy_aes256_80)(&policy.rtcp);
    } else {
        srtp_profile_t profile =
            hs32 ? srtp_profile_aes128_cm_sha1_32 : srtp_profile_aes128_cm_sha1_80;
        if (policy_from_profile(&policy.rtp, profile) || policy_from_profile(&policy.rtcp, profile))
            FINDING("libsrtp refused the profile");
    }
    policy.ssrc.type = inbound ? ssrc_any_inbound : ssrc_any_outbound;
    policy.key = (unsigned char *)key;
    policy.window_size = 1024;
    policy.allow_repeat_tx = 0;
    srtp_t s = NULL;
    if (srtp_create_fn(&s, &policy) != srtp_err_status_ok) FINDING("srtp_create failed");
    return s;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    if (fp_init(SRTP_LIB) != 0) FINDING("fp_init(%s) failed: %s", SRTP_LIB, dlerror());
    void *h = dlopen(SRTP_LIB, RTLD_NOW | RTLD_LOCAL);
    srtp_err_status_t (*init)(void) = h ? (srtp_err_status_t(*)(void))dlsym(h, "srtp_init") : NULL;
    srtp_create_fn = h ? (srtp_err_status_t(*)(srtp_t *, const srtp_policy_t *))dlsym(h, "srtp_create") : NULL;
    srtp_dealloc_fn = h ? (srtp_err_status_t(*)(srtp_t))dlsym(h, "srtp_dealloc") : NULL;
    policy_from_profile =
        h ? (srtp_err_status_t(*)(srtp_crypto_policy_t *, srtp_profile_t))dlsym(
                h, "srtp_crypto_policy_set_from_profile_for_rtp")
          : NULL;
    policy_aes256_80 = h ? (void (*)(srtp_crypto_policy_t *))dlsym(
                               h, "srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80")
                         : NULL;
    policy_aes256_32 = h ? (void (*)(srtp_crypto_policy_t *))dlsym(
                               h, "srtp_crypto_policy_set_aes_cm_256_hmac_sha1_32")
                         : NULL;
    if (!init || !srtp_create_fn || !srtp_dealloc_fn || !policy_from_profile ||
        !policy_aes256_80 || !policy_aes256_32)
        FINDING("libsrtp symbols missing in %s", SRTP_LIB);
    if (init() != srtp_err_status_ok) FINDING("srtp_init failed");
    struct lab_addrs *v4 = &L.net[0], *v6 = &L.net[1];
    make_addr(&v4->addrs[0], "127.0.0.4", 4000); /* the phone */
    make_addr(&v4->addrs[1], "127.0.0.4", 4002); /* the phone after a NAT rebinding */
    make_addr(&v4->addrs[2], "127.0.0.5", 4000); /* an attacker */
    make_addr(&v4->addrs[3], "::ffff:127.0.0.4", 4000); /* the phone, v4-mapped */
    make_addr(&v4->pbx, "127.0.0.3", 5000);
    make_addr(&v4->pbx_stranger, "127.0.0.3", 5002);
    make_addr(&v4->pbx_lookalike, "::ffff:127.0.0.3", 5000);
    make_addr(&v6->addrs[0], "2001:db8::4", 4000);
    make_addr(&v6->addrs[1], "2001:db8::4", 4002);
    make_addr(&v6->addrs[2], "2001:db8::5", 4000);
    make_addr(&v6->addrs[3], "2001:db8::4", 4000);
    v6->addrs[3].v6.sin6_scope_id = 1; /* the phone's address and port, another scope */
    make_addr(&v6->pbx, "2001:db8::3", 5000);
    make_addr(&v6->pbx_stranger, "2001:db8::3", 5002);
    make_addr(&v6->pbx_lookalike, "2001:db8::3", 5000);
    v6->pbx_lookalike.v6.sin6_flowinfo = htonl(7); /* the PBX: the flow label is not compared */
    if (same_addr(&v4->addrs[0], &v4->addrs[3]) || same_addr(&v6->addrs[0], &v6->addrs[3]) ||
        same_addr(&v4->pbx, &v4->pbx_lookalike) || !same_addr(&v6->pbx, &v6->pbx_lookalike))
        FINDING("same_addr: family, scope or flow label misjudged");
    /* the address text both ways, as Python writes and reads it */
    char text[FP_IP_MAX];
    int port = 0;
    fp_addr_t back;
    format_addr(&v6->addrs[0], text, &port);
    if (strcmp(text, "2001:db8::4") || port != 4000 || parse_addr(&back, text, port, AF_INET6) ||
        !same_addr(&back, &v6->addrs[0]))
        FINDING("IPv6 address text: %s", text);
    return 0;
}

static void to_pbx(const uint8_t *buf, int len, int id, const char *how) {
    if (id < 0) FINDING("%s: an unauthenticated datagram reached the PBX", how);
    struct captured *k = &L.cap[id];
    if (k->forwarded) FINDING("%s: captured packet %d reached the PBX twice (replay)", how, id);
    if (len != k->plain_len || memcmp(buf, k->plain, (size_t)len) != 0)
        FINDING("%s: what reached the PBX is not what the phone sent", how);
    k->forwarded = 1;
}

/* The phone's receiver must accept what the relay protected, and find the PBX's packet. */
static void to_phone(const uint8_t *wire, int len, const uint8_t *plain, int plain_len,
                     const char *how) {
    if (len < 2 || len > BUFSZ) FINDING("%s: output length %d", how, len);
    int rtcp = RFC5761_RTCP(wire, len); /* the phone demultiplexes by RFC 5761 */
    uint8_t copy[BUFSZ];
    memcpy(copy, wire, (size_t)len);
    int n = len;
    srtp_err_status_t st = rtcp ? S.unprotect_rtcp(L.phone_rx, copy, &n)
                                : S.unprotect(L.phone_rx, copy, &n);
    if (st != srtp_err_status_ok)
        FINDING("%s: the phone cannot authenticate the relay's packet (status %d): "
                "index reused or rollover lost", how, (int)st);
    if (n != plain_len || memcmp(copy, plain, (size_t)n) != 0)
        FINDING("%s: the phone decrypted something else than the PBX sent", how);
}

/* A datagram on the phone-side socket: the worker's decision, then Python's for a punt. */
static void phone_side(uint8_t *buf, int len, const fp_addr_t *from, int id) {
    fp_addr_t latch = L.c.phone_addr;
    int n = len;
    int verdict = decide(&L.c, 0, buf, &n, from);
    TRACE("phone side: id %d from source %d: verdict %d\n", id, (int)(from - L.n->addrs),
          verdict);
    if (verdict == V_FORWARD) {
        if (!ref_same(from, &latch)) FINDING("the worker forwarded a stranger's packet");
        to_pbx(buf, n, id, "worker");
    } else if (verdict == V_PUNT) {
        /* Mirror._from_phone for a secured call: (S)RTP/SRTCP from anywhere is
         * unprotected through the call's live sessions (fp_srtp); only then may a new
         * address take the latch (fp_set_phone). */
        if (len >= 12 && len <= MAX_DGRAM && (buf[0] >> 6) == 2) {
            int op = is_rtcp(buf, (unsigned)len) ? OP_UNPROTECT_RTCP : OP_UNPROTECT;
            n = len;
            if (call_srtp(&L.c, op, buf, &n) == srtp_err_status_ok) {
                to_pbx(buf, n, id, "punted");
                TRACE("  punted %s: forwarded\n", op == OP_UNPROTECT ? "SRTP" : "SRTCP");
                if (!ref_same(from, &L.c.phone_addr)) {
                    L.c.phone_addr = *from; /* relatch */
                    TRACE("  relatched\n");
                }
            }
        }
    } else if (verdict < 0 || verdict >= C_COUNT) {
        FINDING("unknown verdict %d", verdict);
    }
    if (!ref_same(&latch, &L.c.phone_addr) && (id < 0 || !L.cap[id].forwarded))
        FINDING("the latch moved without an authentic fresh packet");
}

/* A datagram on the PBX-side socket (buf is worked on). */
static void pbx_side(uint8_t *buf, int len, const fp_addr_t *from) {
    uint8_t plain[BUFSZ], ref[BUFSZ];
    memcpy(plain, buf, (size_t)len);
    /* The reference: every 12-1500-byte datagram from the PBX is protected, RTCP as
     * SRTCP, unless its (SSRC, index) was used already. */
    int expect = 0, ref_len = len;
    if (ref_same(from, &L.n->pbx) && len >= 12 && len <= MAX_DGRAM) {
        memcpy(ref, plain, (size_t)len);
        expect = (RFC5761_RTCP(plain, len) ? S.protect_rtcp : S.protect)(L.ref_tx, ref, &ref_len) ==
                 srtp_err_status_ok;
    }
    int n = len, got = 0;
    int verdict = decide(&L.c, 1, buf, &n, from);
    TRACE("pbx side: %d bytes, second byte %d: verdict %d, reference %d\n", len,
          len > 1 ? buf[1] : -1, verdict, expect);
    if (verdict == V_FORWARD) {
        if (!ref_same(from, &L.c.pbx_addr)) FINDING("forwarded a stranger's packet to the phone");
        got = 1;
    } else if (verdict == V_PUNT) {
        /* Mirror._from_pbx: RTCP (and anything else not RTP) is protected in Python,
         * through the call's sessions (fp_srtp). */
        if (len >= 12 && len <= MAX_DGRAM) {
            n = len;
            int op = is_rtcp(buf, (unsigned)len) ? OP_PROTECT_RTCP : OP_PROTECT;
            got = call_srtp(&L.c, op, buf, &n) == srtp_err_status_ok;
        }
    } else if (verdict < 0 || verdict >= C_COUNT) {
        FINDING("unknown verdict %d", verdict);
    }
    if (got != expect)
        FINDING("%s (verdict %d)",
                got ? "the relay protected what the reference refuses (a repeated index?)"
                    : "a PBX packet the reference protects was dropped",
                verdict);
    if (!got) return;
    if (n != ref_len || memcmp(buf, ref, (size_t)n) != 0)
        FINDING("the relay's SRTP differs from the reference (another index, or RTP/RTCP mixed up)");
    to_phone(buf, n, plain, len, "pbx");
}

static const fp_addr_t *source(struct input *in) {
    static const int pick[8] = {0, 1, 2, 0, 0, 1, 2, 3}; /* mostly the phone */
    return &L.n->addrs[pick[byte(in) % 8]];
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* An RTP header (any P/X/CC bits, any second byte) or an RTCP one (PT 192-223). */
static void header(struct input *in, uint8_t *p, int rtcp, uint32_t ssrc) {
    p[0] = (uint8_t)(0x80 | (byte(in) & (rtcp ? 0x1f : 0x3f)));
    p[1] = (uint8_t)(rtcp ? 192 + byte(in) % 32 : byte(in));
    unsigned word = u16(in); /* RTP sequence number, RTCP length */
    p[2] = (uint8_t)(word >> 8);
    p[3] = (uint8_t)word;
    if (rtcp) {
        put32(p + 4, ssrc); /* sender SSRC: libsrtp's stream */
        put32(p + 8, (uint32_t)u16(in) << 4);
    } else {
        put32(p + 4, (uint32_t)u16(in) << 8); /* timestamp */
        put32(p + 8, ssrc);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct input in = {data, size, 0};
    unsigned flags = byte(&in);
    int hs32 = flags & 1, aes3 = (flags >> 2) & 1;
    L.n = &L.net[(flags >> 1) & 1];
    /* 46 bytes: AES-256 key + salt; AES-128 uses the first 30 */
    static const uint8_t relay_key[46] = "relay->phone: AES-256 key and salt, 46 bytes";
    static const uint8_t phone_key[46] = "phone->relay: AES-256 key and salt, 46 bytes";
    memset(&L.c, 0, sizeof L.c);
    L.c.tx = session(0, relay_key, hs32, aes3);
    L.c.rx = session(1, phone_key, hs32, aes3);
    L.phone_tx = session(0, phone_key, hs32, aes3);
    L.phone_rx = session(1, relay_key, hs32, aes3);
    L.ref_tx = session(0, relay_key, hs32, aes3);
    L.ref_rx = session(1, phone_key, hs32, aes3);
    L.c.phone_family = L.c.pbx_family = L.n->pbx.sa.sa_family;
    L.c.phone_addr = L.n->addrs[0];
    L.c.pbx_addr = L.n->pbx;
    L.ncap = 0;
    static uint8_t buf[BUFSZ];
    for (int ops = 0; ops < MAX_OPS && in.pos < in.size; ops++) {
        unsigned op = byte(&in) % 9;
        memset(buf, 0, sizeof buf);
        switch (op) {
        case 0: { /* raw datagram on the phone side (oversize included) */
            const fp_addr_t *from = source(&in);
            int len = (int)take(&in, buf, u16(&in) % (MAX_DGRAM + 64));
            if (len > MAX_DGRAM) len = MAX_DGRAM + 1; /* decide() must refuse it */
            phone_side(buf, len, from, -1);
            break;
        }
        case 1:
        case 6: { /* authentic SRTP (1) or SRTCP (6) from the phone, captured */
            const fp_addr_t *from = source(&in);
            int rtcp = op == 6;
            header(&in, buf, rtcp, byte(&in) & 1 ? PHONE_SSRC : PHONE_SSRC + 1);
            int len = 12 + (int)take(&in, buf + 12, byte(&in) * 4u);
            uint8_t plain[BUFSZ];
            int plain_len = len;
            memcpy(plain, buf, (size_t)len);
            srtp_err_status_t st = rtcp ? S.protect_rtcp(L.phone_tx, buf, &len)
                                        : S.protect(L.phone_tx, buf, &len);
            if (st != srtp_err_status_ok) break; /* an index the phone used already */
            int id = -1;
            if (L.ncap < MAX_CAPTURED) {
                id = L.ncap++;
                struct captured *k = &L.cap[id];
                memcpy(k->wire, buf, (size_t)len);
                k->wire_len = len;
                memcpy(k->plain, plain, (size_t)plain_len);
                k->plain_len = plain_len;
                k->rtcp = rtcp;
                k->forwarded = 0;
            }
            if (id < 0) break;
            /* the reference receiver: is this first delivery authentic and fresh? */
            uint8_t ref[BUFSZ];
            int ref_len = len;
            memcpy(ref, buf, (size_t)len);
            int fresh = (RFC5761_RTCP(ref, len) ? S.unprotect_rtcp : S.unprotect)(L.ref_rx, ref,
                                                                                 &ref_len) ==
                        srtp_err_status_ok;
            phone_side(buf, len, from, id);
            if (fresh != L.cap[id].forwarded)
                FINDING("%s", fresh ? "an authentic, fresh phone packet never reached the PBX"
                                    : "a packet the reference refuses reached the PBX");
            break;
        }
        case 2:
        case 3: { /* a captured packet again (2), or a tampered copy (3), from anywhere */
            const fp_addr_t *from = source(&in);
            unsigned which = byte(&in);
            unsigned where = u16(&in);
            if (!L.ncap) break;
            struct captured *k = &L.cap[which % (unsigned)L.ncap];
            memcpy(buf, k->wire, (size_t)k->wire_len);
            if (op == 3) buf[where % (unsigned)k->wire_len] ^= (uint8_t)(1u << (where >> 13));
            phone_side(buf, k->wire_len, from, op == 2 ? (int)(k - L.cap) : -1);
            break;
        }
        case 4: { /* RTP-looking datagram from the PBX (any second byte: RTCP too) */
            unsigned who = byte(&in);
            header(&in, buf, 0, byte(&in) & 1 ? PBX_SSRC : PBX_SSRC + 1);
            int len = 12 + (int)take(&in, buf + 12, byte(&in) * 4u);
            pbx_side(buf, len,
                     who % 8 == 7   ? &L.n->pbx_stranger
                     : who % 8 == 6 ? &L.n->pbx_lookalike
                                    : &L.n->pbx);
            break;
        }
        case 5: { /* raw datagram from the PBX */
            int len = (int)take(&in, buf, u16(&in) % (MAX_DGRAM + 64));
            if (len > MAX_DGRAM) len = MAX_DGRAM + 1;
            pbx_side(buf, len, &L.n->pbx);
            break;
        }
        case 7: { /* RTCP from the PBX on P+1: Mirror._from_pbx_rtcp, through fp_srtp */
            header(&in, buf, 1, PBX_SSRC);
            int len = 12 + (int)take(&in, buf + 12, byte(&in) * 4u);
            uint8_t plain[BUFSZ], ref[BUFSZ];
            memcpy(plain, buf, (size_t)len);
            memcpy(ref, buf, (size_t)len);
            int n = len, ref_len = len;
            int expect = S.protect_rtcp(L.ref_tx, ref, &ref_len) == srtp_err_status_ok;
            int got = call_srtp(&L.c, OP_PROTECT_RTCP, buf, &n) == srtp_err_status_ok;
            if (got != expect || (got && (n != ref_len || memcmp(buf, ref, (size_t)n) != 0)))
                FINDING("SRTCP on P+1 differs from the reference");
            if (got) to_phone(buf, n, plain, len, "rtcp");
            break;
        }
        default: { /* a hostile RTP header with an SRTP-sized tail from the phone's address */
            header(&in, buf, 0, PHONE_SSRC);
            int len = 12 + (int)take(&in, buf + 12, u16(&in) % (MAX_DGRAM - 11));
            phone_side(buf, len, &L.n->addrs[0], -1);
            break;
        }
        }
    }
    srtp_dealloc_fn(L.c.tx);
    srtp_dealloc_fn(L.c.rx);
    srtp_dealloc_fn(L.phone_tx);
    srtp_dealloc_fn(L.phone_rx);
    srtp_dealloc_fn(L.ref_tx);
    srtp_dealloc_fn(L.ref_rx);
    return 0;
}
