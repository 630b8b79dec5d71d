/*
 * rtpload: the data-plane load generator of bench/relay.py.
 *
 * For each call it plays both ends around the relay:
 *
 *   phone socket (PHONE:port)  --SRTP-->  relay R:port  --RTP-->  PBX socket (PBX:port)
 *   phone socket               <--SRTP--  relay         <--RTP--  PBX socket
 *
 * Both directions send one G.711 packet (12-byte RTP header + 160-byte payload)
 * every 20 ms per call; the 2N sends of a period are spread evenly over it. The
 * payload carries a magic, the call, the direction, a sequence number and the
 * CLOCK_MONOTONIC send time, so the receiver computes the one-way latency
 * through the relay and the loss per direction. The phone side protects with
 * libsrtp2 and unprotects (authenticates) what the relay sends back; the PBX
 * side is plain RTP, sent to the relay's PBX-side address (given per call).
 *
 * Statistics cover the packets *sent* in the measured window
 * [warmup, warmup + duration); after the last send the program keeps
 * receiving for --drain seconds. At the window's edges it samples the relay
 * process's CPU time (/proc/PID/stat utime + stime), the per-core busy time
 * (/proc/stat) and its own CPU time; at the end the relay's VmRSS. One JSON
 * object goes to stdout.
 *
 * calls file: one line per call,
 *   PORT RELAY_PBX_PORT SELF_KEY SELF_SALT PEER_KEY PEER_SALT   (hex)
 * where SELF_* is the phone's transmit key (the endpoint's srtp_self_*): 16-byte
 * keys are AES_CM_128 (ZRTP AES1), 32-byte keys AES_CM_256 (AES3).
 *
 * Hosts (--relay, --pbx, --phone) are IPv4 or IPv6 addresses.
 *
 * --direct: no relay and no SRTP; the phone socket sends to the PBX socket and
 * back (a baseline for the generator's and the kernel's own latency).
 *
 * --busy: poll epoll without sleeping between sends (cheaper per packet and
 * lower latency, but the core stays at 100 %; "gen_work_s" is then the time
 * spent in loop rounds that did something).
 *
 * Build: gcc -O2 -o rtpload rtpload.c $(pkg-config --cflags --libs libsrtp2)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <srtp2/srtp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PERIOD_NS 20000000LL
#define PAYLOAD 160
#define RTP_HEADER 12
#define PACKET (RTP_HEADER + PAYLOAD)
#define MAGIC 0x524c4231u /* "RLB1" */
#define HIST_US 200000    /* 1 us buckets up to 200 ms, then one overflow bucket */
#define UP 0              /* phone -> relay -> PBX */
#define DOWN 1            /* PBX -> relay -> phone */

typedef union {
    struct sockaddr sa;
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
} addr_t;

struct call {
    int phone_fd, pbx_fd;
    addr_t phone_dst; /* where the phone sends: R:port (or PBX:port, direct) */
    addr_t pbx_dst;   /* where the PBX sends: R:relay_pbx_port (or PHONE:port) */
    srtp_t tx, rx;
    uint32_t ssrc[2];
    uint32_t seq[2];
    uint32_t last_rx[2];
    int have_rx[2];
};

struct direction {
    uint64_t sent_total, sent_window, recv_total, recv_window;
    uint64_t reordered, other, auth_fail, send_errors;
    uint64_t lat_sum_ns, lat_max_ns;
    uint32_t *hist;
};

static struct call *calls;
static int ncalls;
static struct direction dirs[2];
static int direct_mode, busy_mode, hs80 = 0;
static volatile sig_atomic_t stop_flag;
static int64_t window_start, window_end;
static uint64_t recv_any; /* valid packets received, by receive time (both ways) */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "rtpload: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static int hexbytes(const char *hex, uint8_t *out, size_t n) {
    if (strlen(hex) != 2 * n) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return -1;
        out[i] = (uint8_t)v;
    }
    return 0;
}

static socklen_t addr_len(const addr_t *a) {
    return a->sa.sa_family == AF_INET6 ? sizeof a->v6 : sizeof a->v4;
}

static void make_addr(addr_t *a, const char *host, int port) {
    memset(a, 0, sizeof *a);
    int ok;
    if (strchr(host, ':')) {
        a->v6.sin6_family = AF_INET6;
        a->v6.sin6_port = htons((uint16_t)port);
        ok = inet_pton(AF_INET6, host, &a->v6.sin6_addr) == 1;
    } else {
        a->v4.sin_family = AF_INET;
        a->v4.sin_port = htons((uint16_t)port);
        ok = inet_pton(AF_INET, host, &a->v4.sin_addr) == 1;
    }
    if (!ok) {
        fprintf(stderr, "rtpload: bad address %s\n", host);
        exit(2);
    }
}

static int udp_bind(const char *host, int port) {
    addr_t sa;
    make_addr(&sa, host, port);
    int fd = socket(sa.sa.sa_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, &sa.sa, addr_len(&sa)) < 0) {
        fprintf(stderr, "rtpload: bind %s:%d: %s\n", host, port, strerror(errno));
        exit(1);
    }
    return fd;
}

/* key: master key (16 bytes: AES_CM_128, 32: AES_CM_256) then the 14-byte salt */
static void srtp_session(srtp_t *session, const uint8_t *key, int aes256, int outbound) {
    srtp_policy_t policy;
    memset(&policy, 0, sizeof policy);
    if (aes256 && hs80)
        srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80(&policy.rtp);
    else if (aes256)
        srtp_crypto_policy_set_aes_cm_256_hmac_sha1_32(&policy.rtp);
    else if (hs80)
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&policy.rtp);
    else
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32(&policy.rtp);
    srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&policy.rtcp);
    policy.ssrc.type = outbound ? ssrc_any_outbound : ssrc_any_inbound;
    policy.key = (unsigned char *)key;
    policy.window_size = 1024;
    policy.allow_repeat_tx = 0;
    policy.next = NULL;
    srtp_err_status_t status = srtp_create(session, &policy);
    if (status != srtp_err_status_ok) {
        fprintf(stderr, "rtpload: srtp_create failed (%d)\n", (int)status);
        exit(1);
    }
}

/* --- /proc sampling ------------------------------------------------------ */

struct sample {
    int64_t mono, self_cpu;
    double relay_utime, relay_stime; /* seconds */
    uint64_t core_total[2], core_idle[2], core_steal[2], core_softirq[2];
    uint64_t recv_any;
    long relay_nivcsw, self_nivcsw;
};

static double clk_tck;

static void read_relay_cpu(int pid, double *utime, double *stime) {
    *utime = *stime = -1;
    if (pid <= 0) return;
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may contain spaces */
    if (!p) return;
    p += 2;
    /* fields from 3 (state) on; utime is field 14, stime 15 */
    unsigned long long ut = 0, st = 0;
    int field = 3;
    char *save = NULL;
    for (char *tok = strtok_r(p, " ", &save); tok; tok = strtok_r(NULL, " ", &save), field++) {
        if (field == 14) ut = strtoull(tok, NULL, 10);
        if (field == 15) {
            st = strtoull(tok, NULL, 10);
            break;
        }
    }
    *utime = ut / clk_tck;
    *stime = st / clk_tck;
}

static void read_cores(struct sample *s) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        int cpu;
        unsigned long long v[10] = {0};
        if (sscanf(line, "cpu%d %llu %llu %llu %llu %llu %llu %llu %llu", &cpu, &v[0], &v[1],
                   &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) == 9 &&
            cpu >= 0 && cpu < 2) {
            uint64_t total = 0;
            for (int i = 0; i < 8; i++) total += v[i];
            s->core_total[cpu] = total;
            s->core_idle[cpu] = v[3] + v[4];
            s->core_softirq[cpu] = v[6];
            s->core_steal[cpu] = v[7];
        }
    }
    fclose(f);
}

/* A "Name: value" line of /proc/PID/status (VmRSS in KiB, context switches...). */
static long read_status(int pid, const char *name) {
    if (pid <= 0) return -1;
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long value = -1;
    size_t len = strlen(name);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, name, len) && line[len] == ':') {
            value = strtol(line + len + 1, NULL, 10);
            break;
        }
    fclose(f);
    return value;
}

static void take_sample(struct sample *s, int relay_pid) {
    memset(s, 0, sizeof *s);
    s->mono = now_ns();
    s->self_cpu = cpu_ns();
    read_relay_cpu(relay_pid, &s->relay_utime, &s->relay_stime);
    read_cores(s);
    s->recv_any = recv_any;
    s->relay_nivcsw = read_status(relay_pid, "nonvoluntary_ctxt_switches");
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    s->self_nivcsw = ru.ru_nivcsw;
}

/* --- data path ------------------------------------------------------------ */

static void send_one(int idx, int dir) {
    struct call *c = &calls[idx];
    uint8_t buf[PACKET + SRTP_MAX_TRAILER_LEN + 16];
    uint32_t seq = c->seq[dir]++;
    buf[0] = 0x80;
    buf[1] = 0; /* PCMU */
    uint16_t s16 = htons((uint16_t)seq);
    uint32_t ts = htonl(seq * 160u), ssrc = htonl(c->ssrc[dir]);
    memcpy(buf + 2, &s16, 2);
    memcpy(buf + 4, &ts, 4);
    memcpy(buf + 8, &ssrc, 4);
    memset(buf + RTP_HEADER, 0xff, PAYLOAD);
    int64_t t = now_ns();
    uint32_t head[4] = {MAGIC, (uint32_t)idx, (uint32_t)dir, seq};
    memcpy(buf + RTP_HEADER, head, sizeof head);
    memcpy(buf + RTP_HEADER + sizeof head, &t, sizeof t);
    int len = PACKET;
    struct direction *d = &dirs[dir];
    if (dir == UP && !direct_mode) {
        if (srtp_protect(c->tx, buf, &len) != srtp_err_status_ok) {
            d->send_errors++;
            return;
        }
    }
    int fd = dir == UP ? c->phone_fd : c->pbx_fd;
    if (send(fd, buf, (size_t)len, 0) != len) {
        d->send_errors++;
        return;
    }
    d->sent_total++;
    if (t >= window_start && t < window_end) d->sent_window++;
}

static void receive_one(int idx, int side) {
    struct call *c = &calls[idx];
    uint8_t buf[2048];
    ssize_t n = recv(side == UP ? c->pbx_fd : c->phone_fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0) return;
    int64_t t = now_ns();
    /* side UP: the PBX socket got phone->PBX traffic; DOWN: the phone socket */
    int dir = side;
    struct direction *d = &dirs[dir];
    int len = (int)n;
    if (dir == DOWN && !direct_mode) {
        if (srtp_unprotect(c->rx, buf, &len) != srtp_err_status_ok) {
            d->auth_fail++;
            return;
        }
    }
    uint32_t head[4];
    int64_t sent;
    if (len != PACKET) {
        d->other++; /* e.g. the relay's priming silence */
        return;
    }
    memcpy(head, buf + RTP_HEADER, sizeof head);
    memcpy(&sent, buf + RTP_HEADER + sizeof head, sizeof sent);
    if (head[0] != MAGIC || head[1] != (uint32_t)idx || head[2] != (uint32_t)dir) {
        d->other++;
        return;
    }
    recv_any++;
    d->recv_total++;
    if (c->have_rx[dir] && head[3] <= c->last_rx[dir])
        d->reordered++;
    else
        c->last_rx[dir] = head[3];
    c->have_rx[dir] = 1;
    if (sent < window_start || sent >= window_end) return;
    d->recv_window++;
    int64_t lat = t - sent;
    if (lat < 0) lat = 0;
    d->lat_sum_ns += (uint64_t)lat;
    if ((uint64_t)lat > d->lat_max_ns) d->lat_max_ns = (uint64_t)lat;
    int64_t us = lat / 1000;
    d->hist[us < HIST_US ? us : HIST_US]++;
}

static double percentile(const struct direction *d, double q) {
    if (d->recv_window == 0) return -1;
    uint64_t rank = (uint64_t)(q * (double)(d->recv_window - 1)) + 1, seen = 0;
    for (int i = 0; i <= HIST_US; i++) {
        seen += d->hist[i];
        if (seen >= rank) return i + 0.5;
    }
    return HIST_US;
}

static void print_direction(const char *name, const struct direction *d, int last) {
    double loss = d->sent_window ? 100.0 * ((double)d->sent_window - (double)d->recv_window) /
                                       (double)d->sent_window
                                 : 0.0;
    printf("\"%s\":{\"sent\":%" PRIu64 ",\"received\":%" PRIu64 ",\"loss_pct\":%.4f,"
           "\"sent_total\":%" PRIu64 ",\"received_total\":%" PRIu64 ",\"p50_us\":%.1f,"
           "\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f,\"mean_us\":%.1f,"
           "\"reordered\":%" PRIu64 ",\"other\":%" PRIu64 ",\"auth_fail\":%" PRIu64
           ",\"send_errors\":%" PRIu64 "}%s",
           name, d->sent_window, d->recv_window, loss, d->sent_total, d->recv_total,
           percentile(d, 0.50), percentile(d, 0.90), percentile(d, 0.99), percentile(d, 0.999),
           d->lat_max_ns / 1000.0, d->recv_window ? d->lat_sum_ns / 1000.0 / d->recv_window : -1,
           d->reordered, d->other, d->auth_fail, d->send_errors, last ? "" : ",");
}

static void usage(void) {
    fprintf(stderr,
            "usage: rtpload --calls FILE [--duration S] [--warmup S] [--drain S] [--relay-pid PID]\n"
            "               [--auth-tag HS32|HS80] [--relay HOST] [--pbx HOST] [--phone HOST]\n"
            "               [--direct] [--busy]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *calls_path = NULL, *relay_host = "127.0.0.2", *pbx_host = "127.0.0.3",
               *phone_host = "127.0.0.4";
    double duration = 10, warmup = 2, drain = 0.5;
    int relay_pid = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--direct")) {
            direct_mode = 1;
            continue;
        }
        if (!strcmp(a, "--busy")) {
            busy_mode = 1;
            continue;
        }
        if (!v) usage();
        i++;
        if (!strcmp(a, "--calls")) calls_path = v;
        else if (!strcmp(a, "--duration")) duration = atof(v);
        else if (!strcmp(a, "--warmup")) warmup = atof(v);
        else if (!strcmp(a, "--drain")) drain = atof(v);
        else if (!strcmp(a, "--relay-pid")) relay_pid = atoi(v);
        else if (!strcmp(a, "--auth-tag")) hs80 = !strcmp(v, "HS80");
        else if (!strcmp(a, "--relay")) relay_host = v;
        else if (!strcmp(a, "--pbx")) pbx_host = v;
        else if (!strcmp(a, "--phone")) phone_host = v;
        else usage();
    }
    if (!calls_path || duration <= 0 || warmup < 0 || drain < 0) usage();
    clk_tck = (double)sysconf(_SC_CLK_TCK);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (srtp_init() != srtp_err_status_ok) {
        fprintf(stderr, "rtpload: srtp_init failed\n");
        return 1;
    }

    FILE *f = fopen(calls_path, "r");
    if (!f) die(calls_path);
    int cap = 64;
    calls = calloc((size_t)cap, sizeof *calls);
    char line[512];
    while (fgets(line, sizeof line, f)) {
        int port, relay_pbx_port;
        char sk[80], ss[80], pk[80], ps[80];
        if (sscanf(line, "%d %d %79s %79s %79s %79s", &port, &relay_pbx_port, sk, ss, pk, ps) != 6)
            continue;
        if (ncalls == cap) {
            cap *= 2;
            calls = realloc(calls, (size_t)cap * sizeof *calls);
            memset(calls + ncalls, 0, (size_t)(cap - ncalls) * sizeof *calls);
        }
        struct call *c = &calls[ncalls];
        c->phone_fd = udp_bind(phone_host, port);
        c->pbx_fd = udp_bind(pbx_host, port);
        if (direct_mode) {
            make_addr(&c->phone_dst, pbx_host, port);
            make_addr(&c->pbx_dst, phone_host, port);
        } else {
            uint8_t tx[46], rx[46];
            size_t klen = strlen(sk) / 2; /* 16 (AES1) or 32 (AES3) */
            if ((klen != 16 && klen != 32) || hexbytes(sk, tx, klen) ||
                hexbytes(ss, tx + klen, 14) || hexbytes(pk, rx, klen) ||
                hexbytes(ps, rx + klen, 14)) {
                fprintf(stderr, "rtpload: bad key material on line %d\n", ncalls + 1);
                return 2;
            }
            srtp_session(&c->tx, tx, klen == 32, 1);
            srtp_session(&c->rx, rx, klen == 32, 0);
            make_addr(&c->phone_dst, relay_host, port);
            make_addr(&c->pbx_dst, relay_host, relay_pbx_port);
        }
        /* Connected sockets: the kernel caches the route, and each side only
           accepts datagrams from its peer (the relay's R:port, or R:relay_pbx_port). */
        if (connect(c->phone_fd, &c->phone_dst.sa, addr_len(&c->phone_dst)) < 0 ||
            connect(c->pbx_fd, &c->pbx_dst.sa, addr_len(&c->pbx_dst)) < 0)
            die("connect");
        c->ssrc[UP] = 0x10000000u + (uint32_t)ncalls;
        c->ssrc[DOWN] = 0x20000000u + (uint32_t)ncalls;
        c->seq[UP] = c->seq[DOWN] = 1000;
        ncalls++;
    }
    fclose(f);
    if (ncalls == 0) {
        fprintf(stderr, "rtpload: no calls in %s\n", calls_path);
        return 2;
    }
    for (int d = 0; d < 2; d++) {
        dirs[d].hist = calloc(HIST_US + 1, sizeof(uint32_t));
        if (!dirs[d].hist) die("calloc");
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    for (int i = 0; i < ncalls; i++) {
        struct epoll_event ev = {.events = EPOLLIN};
        ev.data.u64 = ((uint64_t)i << 1) | UP;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, calls[i].pbx_fd, &ev) < 0) die("epoll_ctl");
        ev.data.u64 = ((uint64_t)i << 1) | DOWN;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, calls[i].phone_fd, &ev) < 0) die("epoll_ctl");
    }

    /* The schedule: send k (k = 0, 1, ...) is slot k % 2N of period k / 2N; even slots
       are the phone's (UP), odd ones the PBX's (DOWN), of call (k % 2N) / 2. */
    int64_t slots = 2LL * ncalls;
    int64_t start = now_ns() + 1000000; /* 1 ms to settle */
    window_start = start + (int64_t)(warmup * 1e9);
    window_end = window_start + (int64_t)(duration * 1e9);
    int64_t send_end = window_end;
    int64_t recv_end = send_end + (int64_t)(drain * 1e9);
    int64_t k = 0;
    int64_t late_max = 0;
    uint64_t late_over_1ms = 0;
    struct sample s0, s1;
    int have_s0 = 0, have_s1 = 0;
    struct epoll_event events[512];
    int64_t work_ns = 0, work_s0 = 0, work_s1 = 0; /* time in loop rounds that did work */
    int64_t round_start = now_ns();
    int round_worked = 0;
    for (;;) {
        int64_t t = now_ns();
        if (round_worked) work_ns += t - round_start;
        round_start = t;
        round_worked = 0;
        if (!have_s0 && t >= window_start) {
            take_sample(&s0, relay_pid);
            work_s0 = work_ns;
            have_s0 = 1;
        }
        if (!have_s1 && t >= window_end) {
            take_sample(&s1, relay_pid);
            work_s1 = work_ns;
            have_s1 = 1;
        }
        if (stop_flag || t >= recv_end) break;
        int64_t due = start + k * PERIOD_NS / slots;
        while (due <= t && due < send_end) {
            round_worked = 1;
            int64_t late = t - due;
            if (late > late_max) late_max = late;
            if (late > 1000000) late_over_1ms++;
            int64_t slot = k % slots;
            send_one((int)(slot >> 1), (int)(slot & 1));
            k++;
            due = start + k * PERIOD_NS / slots;
            t = now_ns();
        }
        int64_t next = due < send_end ? due : recv_end;
        if (!have_s0 && window_start < next) next = window_start;
        if (!have_s1 && window_end < next) next = window_end;
        int64_t wait = busy_mode ? 0 : next - now_ns();
        if (wait < 0) wait = 0;
        struct timespec ts = {.tv_sec = wait / 1000000000LL, .tv_nsec = wait % 1000000000LL};
        int n = epoll_pwait2(ep, events, 512, &ts, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_pwait2");
        }
        if (n > 0) round_worked = 1;
        for (int i = 0; i < n; i++)
            receive_one((int)(events[i].data.u64 >> 1), (int)(events[i].data.u64 & 1));
    }
    if (!have_s0) take_sample(&s0, relay_pid);
    if (!have_s1) {
        take_sample(&s1, relay_pid);
        work_s1 = work_ns;
    }
    long rss = read_status(relay_pid, "VmRSS");

    double window_s = (s1.mono - s0.mono) / 1e9;
    uint64_t forwarded = s1.recv_any - s0.recv_any;
    printf("{\"mode\":\"%s\",\"calls\":%d,\"auth_tag\":\"%s\",\"window_s\":%.4f,"
           "\"interrupted\":%s,",
           direct_mode ? "direct" : "relay", ncalls, hs80 ? "HS80" : "HS32", window_s,
           stop_flag ? "true" : "false");
    printf("\"received_in_window\":%" PRIu64 ",\"pps\":%.1f,", forwarded,
           window_s > 0 ? forwarded / window_s : 0.0);
    printf("\"relay_utime_s\":%.3f,\"relay_stime_s\":%.3f,\"relay_rss_kib\":%ld,",
           s1.relay_utime - s0.relay_utime, s1.relay_stime - s0.relay_stime, rss);
    printf("\"gen_busy_poll\":%s,\"gen_work_s\":%.3f,", busy_mode ? "true" : "false",
           (work_s1 - work_s0) / 1e9);
    printf("\"relay_nivcsw\":%ld,\"gen_nivcsw\":%ld,", s1.relay_nivcsw - s0.relay_nivcsw,
           s1.self_nivcsw - s0.self_nivcsw);
    printf("\"gen_cpu_s\":%.3f,\"send_late_max_us\":%.1f,\"send_late_over_1ms\":%" PRIu64 ",",
           (s1.self_cpu - s0.self_cpu) / 1e9, late_max / 1000.0, late_over_1ms);
    printf("\"cores\":[");
    for (int c = 0; c < 2; c++) {
        double total = (double)(s1.core_total[c] - s0.core_total[c]);
        double idle = (double)(s1.core_idle[c] - s0.core_idle[c]);
        double steal = (double)(s1.core_steal[c] - s0.core_steal[c]);
        double soft = (double)(s1.core_softirq[c] - s0.core_softirq[c]);
        printf("{\"busy\":%.4f,\"softirq\":%.4f,\"steal\":%.4f}%s",
               total > 0 ? (total - idle) / total : -1, total > 0 ? soft / total : -1,
               total > 0 ? steal / total : -1, c ? "" : ",");
    }
    printf("],\"directions\":{");
    print_direction("phone_to_pbx", &dirs[UP], 0);
    print_direction("pbx_to_phone", &dirs[DOWN], 1);
    printf("}}\n");
    fflush(stdout);
    return 0;
}
