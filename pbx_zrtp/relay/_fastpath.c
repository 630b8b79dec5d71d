/*
 * _fastpath.c: native steady-state media path of the relay.
 *
 * One worker pthread per fp_t waits in epoll on the phone-side and PBX-side UDP
 * sockets of many calls and forwards secured RTP with recvmmsg/sendmmsg and
 * libsrtp2:
 *
 *   phone_fd: RTP from phone_addr -> srtp_unprotect -> sendmmsg(pbx_fd, pbx_addr)
 *             anything else (ZRTP, RTCP, STUN, other sources) -> punt queue
 *   pbx_fd:   RTP from pbx_addr   -> srtp_protect   -> sendmmsg(phone_fd, phone_addr)
 *             non-RTP (RTCP, ...) from pbx_addr -> punt queue; other sources -> wrong_source
 *
 * The per-datagram decision is decide(), which touches no socket (the fuzz harness,
 * bench/fuzz_fastpath.c, drives it directly).
 *
 * Addresses: IPv4 and IPv6 (fp_addr_t, a union of both sockaddrs). A call's two sockets
 * may be of either family, each on its own; a source is the latched address only if the
 * family, the address, the port and (IPv6) the scope match.
 *
 * SRTP state: a call's two libsrtp sessions are NOT ours. Python (pbx_zrtp/srtp.py)
 * creates them once per call with pylibsrtp and lends them to the worker while it
 * forwards (fp_attach); the worker never creates or deallocates a session. So the
 * rollover counter, the highest index and the replay window are the call's, across
 * every hand-over and every relatch. libsrtp sessions are not thread-safe: while a
 * call is attached, Python's own uses of them (punted RTCP, the relatch check of a
 * packet from a new address, ...) come through fp_srtp, under the same mutex; the
 * latch moves with fp_set_phone, without re-attaching.
 *
 * Locking: one mutex per fp_t. The worker holds it while it handles the events
 * of one epoll_wait round (never while it sleeps in epoll_wait). attach, detach,
 * srtp, set_phone, stats and the punt queue take the same mutex, so when fp_detach
 * returns the worker no longer touches that call's fds or sessions: events already
 * returned by epoll_wait carry a (slot, generation) tag that no longer matches.
 *
 * Build: gcc -O2 -shared -fPIC _fastpath.c $(pkg-config --cflags libsrtp2) -lpthread -ldl
 * (only libsrtp's headers: its functions are taken with dlsym from the libsrtp that
 * made the sessions, pylibsrtp's; fp_init).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <srtp2/srtp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 32
#define BUFSZ 2048
#define MAX_DGRAM 1500
#define ROUNDS_PER_EVENT 4
#define PUNT_CAP 4096
#define MAX_CALLS (1 << 20)
#define WAKE_TAG UINT64_MAX
/* Room for any address fp_punt_pop writes: IPv6 text, '%', an interface name, NUL. */
#define FP_IP_MAX (INET6_ADDRSTRLEN + IF_NAMESIZE + 1)

enum {
    C_PHONE_IN, C_PHONE_IN_BYTES, C_PHONE_OUT, C_PHONE_OUT_BYTES,
    C_PBX_IN, C_PBX_IN_BYTES, C_PBX_OUT, C_PBX_OUT_BYTES,
    C_SRTP_AUTH, C_SRTP_PROTECT, C_SRTP_REPEAT, C_WRONG_SOURCE, C_OVERSIZE, C_PUNTED,
    C_PUNT_OVERFLOW, C_SEND_ERRORS, C_RECV_ERRORS, C_COUNT
};
static const char COUNTER_NAMES[] =
    "phone_in,phone_in_bytes,phone_out,phone_out_bytes,"
    "pbx_in,pbx_in_bytes,pbx_out,pbx_out_bytes,"
    "srtp_auth,srtp_protect,srtp_repeat,wrong_source,oversize,punted,"
    "punt_overflow,send_errors,recv_errors";

/* fp_srtp operations: the same codes as pbx_zrtp.srtp.Op */
enum { OP_PROTECT, OP_UNPROTECT, OP_PROTECT_RTCP, OP_UNPROTECT_RTCP };

/* One peer address, IPv4 or IPv6 (sa.sa_family says which). */
typedef union {
    struct sockaddr sa;
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
} fp_addr_t;

struct call {
    uint32_t gen;
    int phone_fd, pbx_fd;
    int phone_family, pbx_family; /* of the sockets: a latch is always of that family */
    fp_addr_t phone_addr, pbx_addr;
    srtp_t tx, rx; /* borrowed from Python (pbx_zrtp.srtp.SrtpContext): never deallocated here */
    uint64_t c[C_COUNT];
};

struct punt {
    int64_t handle;
    int dir; /* 0 phone, 1 pbx */
    int len;
    fp_addr_t from;
};

typedef struct fp {
    pthread_mutex_t mu;
    pthread_t thread;
    int thread_started;
    int epfd, wake_fd, punt_fd;
    volatile int stop;
    struct call **calls;
    uint32_t ncap;
    uint32_t next_gen;
    struct punt *punts;
    uint8_t *punt_data;
    unsigned punt_head, punt_count;
    /* worker scratch */
    uint8_t bufs[BATCH][BUFSZ];
    struct mmsghdr in[BATCH], out[BATCH];
    struct iovec iov_in[BATCH], iov_out[BATCH];
    fp_addr_t from[BATCH];
} fp_t;

/* libsrtp entry points, taken with dlsym from the libsrtp that created the sessions
 * (pylibsrtp's bundled build, OpenSSL's AES and HMAC: fp_init). Sessions must only ever
 * meet the functions of the library that made them. */
typedef srtp_err_status_t (*srtp_fn)(srtp_t, void *, int *);
static struct {
    srtp_fn protect, unprotect, protect_rtcp, unprotect_rtcp;
} S;
static char srtp_backend[512] = "";
static pthread_mutex_t init_mu = PTHREAD_MUTEX_INITIALIZER;

/* Take libsrtp's functions from srtp_lib (a path; the library is initialised already,
 * by whoever creates the sessions). Only the first successful call counts.
 * Returns 0, -1 (no path, dlopen or dlsym failed) or -2 (a different library than the
 * first call's). */
int fp_init(const char *srtp_lib) {
    int st = 0;
    pthread_mutex_lock(&init_mu);
    if (!srtp_lib || !*srtp_lib) {
        st = -1;
    } else if (S.protect) {
        st = strcmp(srtp_backend, srtp_lib) == 0 ? 0 : -2;
    } else {
        void *h = dlopen(srtp_lib, RTLD_NOW | RTLD_LOCAL);
        const char *names[4] = {"srtp_protect", "srtp_unprotect", "srtp_protect_rtcp",
                                "srtp_unprotect_rtcp"};
        void *f[4] = {0};
        for (int i = 0; h && i < 4; i++) f[i] = dlsym(h, names[i]);
        if (!h || !f[0] || !f[1] || !f[2] || !f[3]) {
            st = -1;
        } else {
            memcpy(&S.unprotect, &f[1], sizeof f[1]);
            memcpy(&S.protect_rtcp, &f[2], sizeof f[2]);
            memcpy(&S.unprotect_rtcp, &f[3], sizeof f[3]);
            memcpy(&S.protect, &f[0], sizeof f[0]); /* last: S.protect set means ready */
            snprintf(srtp_backend, sizeof srtp_backend, "%s", srtp_lib);
        }
    }
    pthread_mutex_unlock(&init_mu);
    return st;
}

const char *fp_backend(void) { return srtp_backend; }

const char *fp_counter_names(void) { return COUNTER_NAMES; }
int fp_counter_count(void) { return C_COUNT; }

/* "asan" when built with AddressSanitizer (the opt-in sanitizer build), else "". */
const char *fp_build(void) {
#if defined(__SANITIZE_ADDRESS__)
    return "asan";
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    return "asan";
#else
    return "";
#endif
#else
    return "";
#endif
}

static int64_t make_handle(uint32_t slot, uint32_t gen) {
    return ((int64_t)gen << 20) | (int64_t)slot;
}

static struct call *lookup(fp_t *fp, int64_t handle) {
    if (handle < 0) return NULL;
    uint32_t slot = (uint32_t)(handle & (MAX_CALLS - 1));
    uint32_t gen = (uint32_t)(handle >> 20);
    if (slot >= fp->ncap) return NULL;
    struct call *c = fp->calls[slot];
    if (!c || c->gen != gen) return NULL;
    return c;
}

/* Same family, address, port and (IPv6) scope; the IPv6 flow label is not compared. */
static int same_addr(const fp_addr_t *a, const fp_addr_t *b) {
    if (a->sa.sa_family != b->sa.sa_family) return 0;
    if (a->sa.sa_family == AF_INET)
        return a->v4.sin_port == b->v4.sin_port && a->v4.sin_addr.s_addr == b->v4.sin_addr.s_addr;
    if (a->sa.sa_family == AF_INET6)
        return a->v6.sin6_port == b->v6.sin6_port &&
               memcmp(&a->v6.sin6_addr, &b->v6.sin6_addr, sizeof a->v6.sin6_addr) == 0 &&
               a->v6.sin6_scope_id == b->v6.sin6_scope_id;
    return 0;
}

static socklen_t addr_len(const fp_addr_t *a) {
    return a->sa.sa_family == AF_INET6 ? sizeof a->v6 : sizeof a->v4;
}

/* A source address recvmmsg filled in: IPv4 or IPv6, with the length of its family. */
static int valid_source(const fp_addr_t *a, socklen_t len) {
    return (a->sa.sa_family == AF_INET && len == sizeof a->v4) ||
           (a->sa.sa_family == AF_INET6 && len == sizeof a->v6);
}

/* RFC 5761 demultiplexing, the same rule as pbx_zrtp.srtp.is_rtcp: RTCP packet types
 * 192-223 sit where RTP has M+PT (RTCP feedback, 205-207, included). */
static int is_rtcp(const uint8_t *p, unsigned len) { return len >= 2 && p[1] >= 192 && p[1] <= 223; }

int fp_is_rtcp(const uint8_t *p, int len) { return len >= 0 && is_rtcp(p, (unsigned)len); }

/* RTP version 2 with at least a fixed header, and not RTCP. */
static int is_rtp(const uint8_t *p, unsigned len) {
    return len >= 12 && (p[0] >> 6) == 2 && !is_rtcp(p, len);
}

/* Verdicts of decide() besides a drop (a counter index, >= 0). */
#define V_FORWARD (-1)
#define V_PUNT (-2)

/* What one datagram read on one side of a call becomes, without any socket: V_FORWARD
 * (buf now holds what to send, *len its length), V_PUNT (to Python, unchanged), or the
 * counter it is dropped under. buf must have room for the SRTP trailer (BUFSZ). */
static int decide(struct call *c, int side, uint8_t *buf, int *len, const fp_addr_t *from) {
    if (*len < 0 || *len > MAX_DGRAM) return C_OVERSIZE;
    if (side == 0) {
        /* Only the latched phone's RTP is ours; a stranger's (maybe a relatch) is Python's
         * to judge, against the same sessions (fp_srtp). */
        if (!same_addr(from, &c->phone_addr) || !is_rtp(buf, (unsigned)*len)) return V_PUNT;
        return S.unprotect(c->rx, buf, len) == srtp_err_status_ok ? V_FORWARD : C_SRTP_AUTH;
    }
    if (!same_addr(from, &c->pbx_addr)) return C_WRONG_SOURCE;
    if (!is_rtp(buf, (unsigned)*len)) return V_PUNT;
    srtp_err_status_t st = S.protect(c->tx, buf, len);
    if (st == srtp_err_status_ok) return V_FORWARD;
    /* a repeated (SSRC, index) is never encrypted again (RFC 3711 §9.1) */
    if (st == srtp_err_status_replay_fail || st == srtp_err_status_replay_old) return C_SRTP_REPEAT;
    return C_SRTP_PROTECT;
}

/* One use of a call's sessions; returns the libsrtp status, -2 (length) or -3 (op). */
static int call_srtp(struct call *c, int op, uint8_t *buf, int *len) {
    if (*len < 0 || *len > MAX_DGRAM) return -2;
    switch (op) {
    case OP_PROTECT: return (int)S.protect(c->tx, buf, len);
    case OP_UNPROTECT: return (int)S.unprotect(c->rx, buf, len);
    case OP_PROTECT_RTCP: return (int)S.protect_rtcp(c->tx, buf, len);
    case OP_UNPROTECT_RTCP: return (int)S.unprotect_rtcp(c->rx, buf, len);
    default: return -3;
    }
}

static void punt(fp_t *fp, struct call *c, int64_t handle, int dir, const uint8_t *data,
                 unsigned len, const fp_addr_t *from) {
    if (fp->punt_count >= PUNT_CAP || len > MAX_DGRAM) {
        c->c[C_PUNT_OVERFLOW]++;
        return;
    }
    unsigned idx = (fp->punt_head + fp->punt_count) % PUNT_CAP;
    struct punt *p = &fp->punts[idx];
    p->handle = handle;
    p->dir = dir;
    p->len = (int)len;
    p->from = *from;
    memcpy(fp->punt_data + (size_t)idx * MAX_DGRAM, data, len);
    fp->punt_count++;
    c->c[C_PUNTED]++;
    if (fp->punt_count == 1) {
        uint64_t one = 1;
        if (write(fp->punt_fd, &one, sizeof one) < 0) { /* counter saturated: still readable */
        }
    }
}

static void send_batch(int fd, struct mmsghdr *msgs, int n, struct call *c, int cnt, int bytes) {
    int done = 0;
    while (done < n) {
        int r = sendmmsg(fd, msgs + done, (unsigned)(n - done), MSG_DONTWAIT);
        if (r <= 0) {
            if (r < 0 && errno == EINTR) continue;
            /* drop this one (full buffer, unreachable, ...) and go on with the rest */
            c->c[C_SEND_ERRORS]++;
            done++;
            continue;
        }
        for (int i = done; i < done + r; i++) {
            c->c[cnt]++;
            c->c[bytes] += msgs[i].msg_hdr.msg_iov->iov_len;
        }
        done += r;
    }
}

/* Read up to BATCH datagrams from one side of a call and forward them. Returns how many read. */
static int handle_side(fp_t *fp, struct call *c, int64_t handle, int side) {
    int fd = side ? c->pbx_fd : c->phone_fd;
    for (int i = 0; i < BATCH; i++) {
        fp->iov_in[i].iov_base = fp->bufs[i];
        fp->iov_in[i].iov_len = BUFSZ - 64; /* room for the SRTP trailer */
        memset(&fp->in[i].msg_hdr, 0, sizeof fp->in[i].msg_hdr);
        fp->in[i].msg_hdr.msg_iov = &fp->iov_in[i];
        fp->in[i].msg_hdr.msg_iovlen = 1;
        fp->in[i].msg_hdr.msg_name = &fp->from[i];
        fp->in[i].msg_hdr.msg_namelen = sizeof fp->from[i];
    }
    int n = recvmmsg(fd, fp->in, BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0) {
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            c->c[C_RECV_ERRORS]++;
        return 0;
    }
    int nout = 0;
    const fp_addr_t *dst = side ? &c->phone_addr : &c->pbx_addr;
    for (int i = 0; i < n; i++) {
        unsigned len = fp->in[i].msg_len;
        uint8_t *buf = fp->bufs[i];
        const fp_addr_t *from = &fp->from[i];
        c->c[side ? C_PBX_IN : C_PHONE_IN]++;
        c->c[side ? C_PBX_IN_BYTES : C_PHONE_IN_BYTES] += len;
        if ((fp->in[i].msg_hdr.msg_flags & MSG_TRUNC) || len > MAX_DGRAM) {
            c->c[C_OVERSIZE]++;
            continue;
        }
        if (!valid_source(from, fp->in[i].msg_hdr.msg_namelen)) {
            c->c[C_WRONG_SOURCE]++;
            continue;
        }
        int ilen = (int)len;
        int verdict = decide(c, side, buf, &ilen, from);
        if (verdict == V_PUNT) {
            punt(fp, c, handle, side, buf, len, from);
            continue;
        }
        if (verdict != V_FORWARD) {
            c->c[verdict]++;
            continue;
        }
        fp->iov_out[nout].iov_base = buf;
        fp->iov_out[nout].iov_len = (size_t)ilen;
        memset(&fp->out[nout].msg_hdr, 0, sizeof fp->out[nout].msg_hdr);
        fp->out[nout].msg_hdr.msg_iov = &fp->iov_out[nout];
        fp->out[nout].msg_hdr.msg_iovlen = 1;
        fp->out[nout].msg_hdr.msg_name = (void *)dst;
        fp->out[nout].msg_hdr.msg_namelen = addr_len(dst);
        nout++;
    }
    if (nout) {
        if (side == 0)
            send_batch(c->pbx_fd, fp->out, nout, c, C_PBX_OUT, C_PBX_OUT_BYTES);
        else
            send_batch(c->phone_fd, fp->out, nout, c, C_PHONE_OUT, C_PHONE_OUT_BYTES);
    }
    return n;
}

static void *worker(void *arg) {
    fp_t *fp = arg;
    struct epoll_event evs[64];
    while (!fp->stop) {
        int n = epoll_wait(fp->epfd, evs, 64, 1000);
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        pthread_mutex_lock(&fp->mu);
        for (int i = 0; i < n && !fp->stop; i++) {
            uint64_t tag = evs[i].data.u64;
            if (tag == WAKE_TAG) {
                uint64_t v;
                if (read(fp->wake_fd, &v, sizeof v) < 0) { /* nothing pending */
                }
                continue;
            }
            int side = (int)(tag & 1);
            int64_t handle = (int64_t)(tag >> 1);
            struct call *c = lookup(fp, handle);
            if (!c) continue; /* detached after epoll_wait returned */
            for (int r = 0; r < ROUNDS_PER_EVENT; r++)
                if (handle_side(fp, c, handle, side) < BATCH) break;
        }
        pthread_mutex_unlock(&fp->mu);
    }
    return NULL;
}

static void wake(fp_t *fp) {
    uint64_t one = 1;
    if (write(fp->wake_fd, &one, sizeof one) < 0) { /* already readable */
    }
}

fp_t *fp_create(void) {
    if (!S.protect) return NULL; /* fp_init first */
    fp_t *fp = calloc(1, sizeof *fp);
    if (!fp) return NULL;
    pthread_mutex_init(&fp->mu, NULL);
    fp->epfd = epoll_create1(EPOLL_CLOEXEC);
    fp->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    fp->punt_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    fp->punts = calloc(PUNT_CAP, sizeof *fp->punts);
    fp->punt_data = malloc((size_t)PUNT_CAP * MAX_DGRAM);
    fp->next_gen = 1;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKE_TAG};
    if (fp->epfd < 0 || fp->wake_fd < 0 || fp->punt_fd < 0 || !fp->punts || !fp->punt_data ||
        epoll_ctl(fp->epfd, EPOLL_CTL_ADD, fp->wake_fd, &ev) < 0 ||
        pthread_create(&fp->thread, NULL, worker, fp) != 0) {
        if (fp->epfd >= 0) close(fp->epfd);
        if (fp->wake_fd >= 0) close(fp->wake_fd);
        if (fp->punt_fd >= 0) close(fp->punt_fd);
        free(fp->punts);
        free(fp->punt_data);
        pthread_mutex_destroy(&fp->mu);
        free(fp);
        return NULL;
    }
    fp->thread_started = 1;
    return fp;
}

int fp_punt_fd(fp_t *fp) { return fp->punt_fd; }

/* A numeric IPv4 or IPv6 address (an IPv6 scope as "%name" or "%index", as Python
 * writes it) and a port, of the given family. 0, or -1. */
static int parse_addr(fp_addr_t *a, const char *ip, int port, int family) {
    memset(a, 0, sizeof *a);
    if (!ip || port <= 0 || port > 65535) return -1;
    if (family == AF_INET) {
        a->v4.sin_family = AF_INET;
        a->v4.sin_port = htons((uint16_t)port);
        return inet_pton(AF_INET, ip, &a->v4.sin_addr) == 1 ? 0 : -1;
    }
    if (family != AF_INET6) return -1;
    char host[FP_IP_MAX];
    if (strlen(ip) >= sizeof host) return -1;
    strcpy(host, ip);
    char *scope = strchr(host, '%');
    if (scope) *scope++ = 0;
    a->v6.sin6_family = AF_INET6;
    a->v6.sin6_port = htons((uint16_t)port);
    if (inet_pton(AF_INET6, host, &a->v6.sin6_addr) != 1) return -1;
    if (scope) {
        char *end;
        unsigned long index = strtoul(scope, &end, 10);
        if (!*scope || *end) index = if_nametoindex(scope);
        if (!index || index > UINT32_MAX) return -1;
        a->v6.sin6_scope_id = (uint32_t)index;
    }
    return 0;
}

/* The family of a socket (AF_INET or AF_INET6), or -1. */
static int socket_family(int fd) {
    fp_addr_t a;
    socklen_t len = sizeof a;
    if (fd < 0 || getsockname(fd, &a.sa, &len) < 0) return -1;
    return a.sa.sa_family == AF_INET || a.sa.sa_family == AF_INET6 ? a.sa.sa_family : -1;
}

/* Text of an address for Python, exactly as CPython's socket module writes a source
 * address (getnameinfo, NI_NUMERICHOST: an IPv6 scope as "%" and the interface name or
 * index). ip must hold FP_IP_MAX bytes. */
static void format_addr(const fp_addr_t *a, char *ip, int *port) {
    ip[0] = 0;
    *port = 0;
    if (a->sa.sa_family != AF_INET && a->sa.sa_family != AF_INET6) return;
    *port = ntohs(a->sa.sa_family == AF_INET ? a->v4.sin_port : a->v6.sin6_port);
    if (getnameinfo(&a->sa, addr_len(a), ip, FP_IP_MAX, NULL, 0, NI_NUMERICHOST) != 0) ip[0] = 0;
}

int fp_ip_max(void) { return FP_IP_MAX; }

/* Hand a call's two sockets to the worker with the call's sessions (borrowed: the caller
 * keeps them alive until fp_detach or fp_close returns, and never uses them meanwhile but
 * through fp_srtp). Each address is of its socket's family (IPv4 or IPv6). Returns a
 * handle >= 0, or a negative error: -1 bad args (fds, or an address not of its socket's
 * family), -2 no sessions (or fp_init not done), -3 epoll, -4 memory. */
int64_t fp_attach(fp_t *fp, int phone_fd, int pbx_fd, const char *phone_ip, int phone_port,
                  const char *pbx_ip, int pbx_port, void *tx, void *rx) {
    if (!tx || !rx || tx == rx || !S.protect) return -2;
    struct call *c = calloc(1, sizeof *c);
    if (!c) return -4;
    c->phone_family = socket_family(phone_fd);
    c->pbx_family = socket_family(pbx_fd);
    if (phone_fd == pbx_fd || c->phone_family < 0 || c->pbx_family < 0 ||
        parse_addr(&c->phone_addr, phone_ip, phone_port, c->phone_family) < 0 ||
        parse_addr(&c->pbx_addr, pbx_ip, pbx_port, c->pbx_family) < 0) {
        free(c);
        return -1;
    }
    c->phone_fd = phone_fd;
    c->pbx_fd = pbx_fd;
    c->tx = (srtp_t)tx;
    c->rx = (srtp_t)rx;
    pthread_mutex_lock(&fp->mu);
    uint32_t slot = 0;
    while (slot < fp->ncap && fp->calls[slot]) slot++;
    if (slot == fp->ncap) {
        uint32_t ncap = fp->ncap ? fp->ncap * 2 : 64;
        struct call **grown = ncap <= MAX_CALLS ? realloc(fp->calls, ncap * sizeof *grown) : NULL;
        if (!grown) {
            pthread_mutex_unlock(&fp->mu);
            free(c);
            return -4;
        }
        memset(grown + fp->ncap, 0, (ncap - fp->ncap) * sizeof *grown);
        fp->calls = grown;
        fp->ncap = ncap;
    }
    c->gen = fp->next_gen++ & 0x3fffffff;
    if (!c->gen) c->gen = fp->next_gen++ & 0x3fffffff;
    int64_t handle = make_handle(slot, c->gen);
    struct epoll_event ev0 = {.events = EPOLLIN, .data.u64 = ((uint64_t)handle << 1) | 0};
    struct epoll_event ev1 = {.events = EPOLLIN, .data.u64 = ((uint64_t)handle << 1) | 1};
    if (epoll_ctl(fp->epfd, EPOLL_CTL_ADD, phone_fd, &ev0) < 0) {
        pthread_mutex_unlock(&fp->mu);
        free(c);
        return -3;
    }
    if (epoll_ctl(fp->epfd, EPOLL_CTL_ADD, pbx_fd, &ev1) < 0) {
        epoll_ctl(fp->epfd, EPOLL_CTL_DEL, phone_fd, NULL);
        pthread_mutex_unlock(&fp->mu);
        free(c);
        return -3;
    }
    fp->calls[slot] = c;
    pthread_mutex_unlock(&fp->mu);
    return handle;
}

/* Python's use of an attached call's sessions (buf: room for the SRTP trailer, BUFSZ),
 * serialised with the worker. Returns the libsrtp status (0: ok, *len updated), -1 (no
 * such call), -2 (length) or -3 (op). */
int fp_srtp(fp_t *fp, int64_t handle, int op, uint8_t *buf, int *len) {
    pthread_mutex_lock(&fp->mu);
    struct call *c = lookup(fp, handle);
    int st = c ? call_srtp(c, op, buf, len) : -1;
    pthread_mutex_unlock(&fp->mu);
    return st;
}

/* Move the phone's latch (Python judged the packet from there: authentic and fresh under
 * the call's live replay window). Returns 0, -1 (bad address, or not of the phone socket's
 * family) or -2 (no such call). */
int fp_set_phone(fp_t *fp, int64_t handle, const char *ip, int port) {
    fp_addr_t addr;
    int st = -2;
    pthread_mutex_lock(&fp->mu);
    struct call *c = lookup(fp, handle);
    if (c) {
        st = parse_addr(&addr, ip, port, c->phone_family) < 0 ? -1 : 0;
        if (st == 0) c->phone_addr = addr;
    }
    pthread_mutex_unlock(&fp->mu);
    return st;
}

int fp_stats(fp_t *fp, int64_t handle, uint64_t *out) {
    pthread_mutex_lock(&fp->mu);
    struct call *c = lookup(fp, handle);
    if (c) memcpy(out, c->c, sizeof c->c);
    pthread_mutex_unlock(&fp->mu);
    return c ? 0 : -1;
}

int fp_detach(fp_t *fp, int64_t handle, uint64_t *out) {
    pthread_mutex_lock(&fp->mu);
    struct call *c = lookup(fp, handle);
    if (!c) {
        pthread_mutex_unlock(&fp->mu);
        return -1;
    }
    epoll_ctl(fp->epfd, EPOLL_CTL_DEL, c->phone_fd, NULL);
    epoll_ctl(fp->epfd, EPOLL_CTL_DEL, c->pbx_fd, NULL);
    fp->calls[handle & (MAX_CALLS - 1)] = NULL;
    pthread_mutex_unlock(&fp->mu);
    /* The worker only sees calls through fp->calls under the mutex: c is ours now, and
     * the sessions are Python's again. */
    if (out) memcpy(out, c->c, sizeof c->c);
    free(c);
    return 0;
}

/* Pops one punted datagram into buf (cap bytes) and its source into ip (ipcap bytes, at
 * least fp_ip_max()) and port; returns its length, -1 if the queue is empty, -2 if ipcap
 * is too small. */
int fp_punt_pop(fp_t *fp, int64_t *handle, int *dir, uint8_t *buf, int cap, char *ip, int ipcap,
                int *port) {
    if (ipcap < FP_IP_MAX) return -2;
    pthread_mutex_lock(&fp->mu);
    if (!fp->punt_count) {
        pthread_mutex_unlock(&fp->mu);
        return -1;
    }
    struct punt *p = &fp->punts[fp->punt_head];
    int len = p->len < cap ? p->len : cap;
    memcpy(buf, fp->punt_data + (size_t)fp->punt_head * MAX_DGRAM, (size_t)len);
    *handle = p->handle;
    *dir = p->dir;
    fp_addr_t from = p->from;
    fp->punt_head = (fp->punt_head + 1) % PUNT_CAP;
    fp->punt_count--;
    pthread_mutex_unlock(&fp->mu);
    format_addr(&from, ip, port); /* may look up an interface name: not under the lock */
    return len;
}

void fp_close(fp_t *fp) {
    if (!fp) return;
    fp->stop = 1;
    wake(fp);
    if (fp->thread_started) pthread_join(fp->thread, NULL);
    for (uint32_t i = 0; i < fp->ncap; i++) {
        free(fp->calls[i]); /* the sessions are Python's */
    }
    free(fp->calls);
    close(fp->epfd);
    close(fp->wake_fd);
    close(fp->punt_fd);
    free(fp->punts);
    free(fp->punt_data);
    pthread_mutex_destroy(&fp->mu);
    free(fp);
}
