/*
 * _fastpath.c: native steady-state media path of the relay (experimental).
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
 * Locking: one mutex per fp_t. The worker holds it while it handles the events
 * of one epoll_wait round (never while it sleeps in epoll_wait). attach, detach,
 * stats and the punt queue take the same mutex, so when fp_detach returns the
 * worker no longer touches that call's fds or sessions: events already returned
 * by epoll_wait carry a (slot, generation) tag that no longer matches.
 *
 * Build: gcc -O2 -shared -fPIC _fastpath.c $(pkg-config --cflags --libs libsrtp2) -lpthread -ldl
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <srtp2/crypto_types.h>
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

enum {
    C_PHONE_IN, C_PHONE_IN_BYTES, C_PHONE_OUT, C_PHONE_OUT_BYTES,
    C_PBX_IN, C_PBX_IN_BYTES, C_PBX_OUT, C_PBX_OUT_BYTES,
    C_SRTP_AUTH, C_SRTP_PROTECT, C_WRONG_SOURCE, C_OVERSIZE, C_PUNTED,
    C_PUNT_OVERFLOW, C_SEND_ERRORS, C_RECV_ERRORS, C_COUNT
};
static const char COUNTER_NAMES[] =
    "phone_in,phone_in_bytes,phone_out,phone_out_bytes,"
    "pbx_in,pbx_in_bytes,pbx_out,pbx_out_bytes,"
    "srtp_auth,srtp_protect,wrong_source,oversize,punted,"
    "punt_overflow,send_errors,recv_errors";

struct call {
    uint32_t gen;
    int phone_fd, pbx_fd;
    struct sockaddr_in phone_addr, pbx_addr;
    srtp_t tx, rx;
    uint64_t c[C_COUNT];
};

struct punt {
    int64_t handle;
    int dir; /* 0 phone, 1 pbx */
    int len;
    struct sockaddr_in from;
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
    struct sockaddr_in from[BATCH];
} fp_t;

/* libsrtp entry points: the system libsrtp2 we link against, or the same functions
 * taken with dlsym from another build of libsrtp 2.x (fp_init): Debian's libsrtp2 uses
 * NSS for AES/HMAC, which costs ~15 us per packet; pylibsrtp's wheel bundles libsrtp
 * with OpenSSL (~2.5 us). The srtp_policy_t layout is the same in libsrtp 2.4-2.7. */
static struct {
    srtp_err_status_t (*init)(void);
    srtp_err_status_t (*create)(srtp_t *, const srtp_policy_t *);
    srtp_err_status_t (*dealloc)(srtp_t);
    srtp_err_status_t (*protect)(srtp_t, void *, int *);
    srtp_err_status_t (*unprotect)(srtp_t, void *, int *);
} S = {srtp_init, srtp_create, srtp_dealloc, srtp_protect, srtp_unprotect};
static int srtp_init_status = -1;
static srtp_t make_session(const uint8_t *key, int hs32, int inbound);
static char srtp_backend[512] = "system libsrtp2";
static pthread_mutex_t init_mu = PTHREAD_MUTEX_INITIALIZER;

/* Choose the libsrtp to use (NULL or "": the system one) and initialise it. Only the
 * first call counts. Returns 0, or -1 (dlopen/dlsym failed) / -2 (srtp_init failed). */
int fp_init(const char *srtp_lib) {
    pthread_mutex_lock(&init_mu);
    if (srtp_init_status >= 0) {
        int st = srtp_init_status;
        pthread_mutex_unlock(&init_mu);
        return st == 0 ? 0 : -2;
    }
    if (srtp_lib && *srtp_lib) {
        void *h = dlopen(srtp_lib, RTLD_NOW | RTLD_LOCAL);
        void *f[5] = {0};
        const char *names[5] = {"srtp_init", "srtp_create", "srtp_dealloc", "srtp_protect",
                                "srtp_unprotect"};
        for (int i = 0; h && i < 5; i++) f[i] = dlsym(h, names[i]);
        if (!h || !f[0] || !f[1] || !f[2] || !f[3] || !f[4]) {
            pthread_mutex_unlock(&init_mu);
            return -1;
        }
        memcpy(&S.init, &f[0], sizeof f[0]);
        memcpy(&S.create, &f[1], sizeof f[1]);
        memcpy(&S.dealloc, &f[2], sizeof f[2]);
        memcpy(&S.protect, &f[3], sizeof f[3]);
        memcpy(&S.unprotect, &f[4], sizeof f[4]);
        snprintf(srtp_backend, sizeof srtp_backend, "%s", srtp_lib);
    }
    srtp_init_status = (int)S.init();
    if (srtp_init_status != 0 && srtp_lib && *srtp_lib) {
        /* pylibsrtp calls srtp_init at import; a second call fails: fine if usable */
        uint8_t key[30] = {0};
        srtp_t probe = make_session(key, 0, 0);
        if (probe) {
            S.dealloc(probe);
            srtp_init_status = 0;
        }
    }
    int st = srtp_init_status;
    pthread_mutex_unlock(&init_mu);
    return st == 0 ? 0 : -2;
}

const char *fp_backend(void) { return srtp_backend; }

const char *fp_counter_names(void) { return COUNTER_NAMES; }
int fp_counter_count(void) { return C_COUNT; }

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

static int same_addr(const struct sockaddr_in *a, const struct sockaddr_in *b) {
    return a->sin_family == AF_INET && a->sin_port == b->sin_port &&
           a->sin_addr.s_addr == b->sin_addr.s_addr;
}

/* RTP version 2 and not RTCP (PT 200-204 as masked M+PT 72-76). */
static int is_rtp(const uint8_t *p, unsigned len) {
    if (len < 12 || (p[0] >> 6) != 2) return 0;
    unsigned pt = p[1] & 0x7f;
    return !(pt >= 72 && pt <= 76);
}

static void punt(fp_t *fp, struct call *c, int64_t handle, int dir, const uint8_t *data,
                 unsigned len, const struct sockaddr_in *from) {
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
    const struct sockaddr_in *dst = side ? &c->phone_addr : &c->pbx_addr;
    for (int i = 0; i < n; i++) {
        unsigned len = fp->in[i].msg_len;
        uint8_t *buf = fp->bufs[i];
        const struct sockaddr_in *from = &fp->from[i];
        c->c[side ? C_PBX_IN : C_PHONE_IN]++;
        c->c[side ? C_PBX_IN_BYTES : C_PHONE_IN_BYTES] += len;
        if ((fp->in[i].msg_hdr.msg_flags & MSG_TRUNC) || len > MAX_DGRAM) {
            c->c[C_OVERSIZE]++;
            continue;
        }
        if (fp->in[i].msg_hdr.msg_namelen != sizeof(struct sockaddr_in) ||
            from->sin_family != AF_INET) {
            c->c[C_WRONG_SOURCE]++;
            continue;
        }
        int ilen = (int)len;
        if (side == 0) {
            if (!same_addr(from, &c->phone_addr) || !is_rtp(buf, len)) {
                punt(fp, c, handle, 0, buf, len, from);
                continue;
            }
            if (S.unprotect(c->rx, buf, &ilen) != srtp_err_status_ok) {
                c->c[C_SRTP_AUTH]++;
                continue;
            }
        } else {
            if (!same_addr(from, &c->pbx_addr)) {
                c->c[C_WRONG_SOURCE]++;
                continue;
            }
            if (!is_rtp(buf, len)) {
                punt(fp, c, handle, 1, buf, len, from);
                continue;
            }
            if (S.protect(c->tx, buf, &ilen) != srtp_err_status_ok) {
                c->c[C_SRTP_PROTECT]++;
                continue;
            }
        }
        fp->iov_out[nout].iov_base = buf;
        fp->iov_out[nout].iov_len = (size_t)ilen;
        memset(&fp->out[nout].msg_hdr, 0, sizeof fp->out[nout].msg_hdr);
        fp->out[nout].msg_hdr.msg_iov = &fp->iov_out[nout];
        fp->out[nout].msg_hdr.msg_iovlen = 1;
        fp->out[nout].msg_hdr.msg_name = (void *)dst;
        fp->out[nout].msg_hdr.msg_namelen = sizeof *dst;
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
    if (fp_init(NULL) != 0) return NULL;
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

static srtp_t make_session(const uint8_t *key, int hs32, int inbound) {
    srtp_policy_t policy;
    memset(&policy, 0, sizeof policy);
    /* what srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80/_32 set (not all exported) */
    srtp_crypto_policy_t cp = {.cipher_type = SRTP_AES_ICM_128,
                               .cipher_key_len = SRTP_AES_ICM_128_KEY_LEN_WSALT,
                               .auth_type = SRTP_HMAC_SHA1,
                               .auth_key_len = 20,
                               .auth_tag_len = hs32 ? 4 : 10,
                               .sec_serv = sec_serv_conf_and_auth};
    policy.rtp = cp;
    policy.rtcp = cp; /* ZRTP applies HS32 to SRTCP too */
    policy.ssrc.type = inbound ? ssrc_any_inbound : ssrc_any_outbound;
    uint8_t keycopy[30];
    memcpy(keycopy, key, 30);
    policy.key = keycopy;
    policy.window_size = 1024;
    policy.allow_repeat_tx = 1;
    policy.next = NULL;
    srtp_t s = NULL;
    if (S.create(&s, &policy) != srtp_err_status_ok) return NULL;
    memset(keycopy, 0, sizeof keycopy);
    return s;
}

static int parse_addr(struct sockaddr_in *a, const char *ip, int port) {
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    if (port <= 0 || port > 65535) return -1;
    a->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, ip, &a->sin_addr) == 1 ? 0 : -1;
}

/* Returns a handle >= 0, or a negative error: -1 bad args, -2 srtp, -3 epoll, -4 memory. */
int64_t fp_attach(fp_t *fp, int phone_fd, int pbx_fd, const char *phone_ip, int phone_port,
                  const char *pbx_ip, int pbx_port, int hs32, const uint8_t *tx_key,
                  const uint8_t *rx_key) {
    struct call *c = calloc(1, sizeof *c);
    if (!c) return -4;
    if (phone_fd < 0 || pbx_fd < 0 || phone_fd == pbx_fd ||
        parse_addr(&c->phone_addr, phone_ip, phone_port) < 0 ||
        parse_addr(&c->pbx_addr, pbx_ip, pbx_port) < 0) {
        free(c);
        return -1;
    }
    c->phone_fd = phone_fd;
    c->pbx_fd = pbx_fd;
    c->tx = make_session(tx_key, hs32, 0);
    c->rx = make_session(rx_key, hs32, 1);
    if (!c->tx || !c->rx) {
        if (c->tx) S.dealloc(c->tx);
        if (c->rx) S.dealloc(c->rx);
        free(c);
        return -2;
    }
    pthread_mutex_lock(&fp->mu);
    uint32_t slot = 0;
    while (slot < fp->ncap && fp->calls[slot]) slot++;
    if (slot == fp->ncap) {
        uint32_t ncap = fp->ncap ? fp->ncap * 2 : 64;
        struct call **grown = ncap <= MAX_CALLS ? realloc(fp->calls, ncap * sizeof *grown) : NULL;
        if (!grown) {
            pthread_mutex_unlock(&fp->mu);
            S.dealloc(c->tx);
            S.dealloc(c->rx);
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
        S.dealloc(c->tx);
        S.dealloc(c->rx);
        free(c);
        return -3;
    }
    if (epoll_ctl(fp->epfd, EPOLL_CTL_ADD, pbx_fd, &ev1) < 0) {
        epoll_ctl(fp->epfd, EPOLL_CTL_DEL, phone_fd, NULL);
        pthread_mutex_unlock(&fp->mu);
        S.dealloc(c->tx);
        S.dealloc(c->rx);
        free(c);
        return -3;
    }
    fp->calls[slot] = c;
    pthread_mutex_unlock(&fp->mu);
    return handle;
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
    /* The worker only sees calls through fp->calls under the mutex: c is ours now. */
    if (out) memcpy(out, c->c, sizeof c->c);
    S.dealloc(c->tx);
    S.dealloc(c->rx);
    free(c);
    return 0;
}

/* Pops one punted datagram into buf (cap bytes); returns its length, -1 if the queue is empty. */
int fp_punt_pop(fp_t *fp, int64_t *handle, int *dir, uint8_t *buf, int cap, char *ip, int *port) {
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
    *port = ntohs(p->from.sin_port);
    if (!inet_ntop(AF_INET, &p->from.sin_addr, ip, 16)) ip[0] = 0;
    fp->punt_head = (fp->punt_head + 1) % PUNT_CAP;
    fp->punt_count--;
    pthread_mutex_unlock(&fp->mu);
    return len;
}

void fp_close(fp_t *fp) {
    if (!fp) return;
    fp->stop = 1;
    wake(fp);
    if (fp->thread_started) pthread_join(fp->thread, NULL);
    for (uint32_t i = 0; i < fp->ncap; i++) {
        struct call *c = fp->calls[i];
        if (!c) continue;
        S.dealloc(c->tx);
        S.dealloc(c->rx);
        free(c);
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
