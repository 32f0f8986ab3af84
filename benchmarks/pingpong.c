/* Ping-pong server and clients for slirptrio's benchmarks (compiled at run time by bench.py).
 *
 *   pingpong serve ADDR PORT        echo server (epoll, any number of connections);
 *                                   prints "listening" once bound
 *   pingpong rr ADDR PORT SECONDS   one connection, 1-byte request / 1-byte response in a loop;
 *                                   prints "rr COUNT ELAPSED"
 *   pingpong crr ADDR PORT SECONDS  connect, 1-byte request / response, close, in a loop;
 *                                   prints "crr COUNT ELAPSED"
 *   (rr and crr: ADDR "unix:PATH" connects to a unix stream socket instead; PORT is ignored;
 *   the trio floor relay of benchmarks/floor.py is measured this way)
 *   (ADDR: an IPv4 address, or an IPv6 one (it has a colon, no brackets): the same over IPv6)
 *   pingpong hold ADDR PORT N       tries N connections, one round trip on each (so each flow
 *                                   is established end to end), prints "held K refused R",
 *                                   then keeps them open until a signal ends the process
 *
 * The same binary serves every stack under test, so differences are the stack's.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void raise_nofile(void) {
    struct rlimit rl = {200000, 200000};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        /* Not root: take the hard limit. */
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* A TCP endpoint of either family. */
typedef struct {
    struct sockaddr_storage ss;
    socklen_t len;
} endpoint_t;

static endpoint_t addr_of(const char *host, const char *port) {
    endpoint_t ep;
    memset(&ep, 0, sizeof ep);
    unsigned short p = htons((unsigned short)atoi(port));
    int ok;
    if (strchr(host, ':') != NULL) {
        struct sockaddr_in6 *sa = (struct sockaddr_in6 *)&ep.ss;
        sa->sin6_family = AF_INET6;
        sa->sin6_port = p;
        ok = inet_pton(AF_INET6, host, &sa->sin6_addr);
        ep.len = sizeof *sa;
    } else {
        struct sockaddr_in *sa = (struct sockaddr_in *)&ep.ss;
        sa->sin_family = AF_INET;
        sa->sin_port = p;
        ok = inet_pton(AF_INET, host, &sa->sin_addr);
        ep.len = sizeof *sa;
    }
    if (ok != 1) {
        fprintf(stderr, "bad address %s\n", host);
        exit(2);
    }
    return ep;
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int dial(const endpoint_t *ep) {
    int fd = socket(ep->ss.ss_family, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    nodelay(fd);
    if (connect(fd, (const struct sockaddr *)&ep->ss, ep->len) != 0) die("connect");
    return fd;
}

/* A client's target: TCP (addr) or, for "unix:PATH", a unix stream socket (un). */
typedef struct {
    int is_unix;
    endpoint_t addr;
    struct sockaddr_un un;
} target_t;

static target_t target_of(const char *host, const char *port) {
    target_t t;
    memset(&t, 0, sizeof t);
    if (strncmp(host, "unix:", 5) == 0) {
        t.is_unix = 1;
        t.un.sun_family = AF_UNIX;
        if (strlen(host + 5) >= sizeof t.un.sun_path) {
            fprintf(stderr, "unix path too long\n");
            exit(2);
        }
        strcpy(t.un.sun_path, host + 5);
    } else {
        t.addr = addr_of(host, port);
    }
    return t;
}

static int dial_target(const target_t *t) {
    if (!t->is_unix) return dial(&t->addr);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (const struct sockaddr *)&t->un, sizeof t->un) != 0) die("connect");
    return fd;
}

static void round_trip(int fd) {
    char c = 'x';
    if (send(fd, &c, 1, 0) != 1) die("send");
    ssize_t n;
    do {
        n = recv(fd, &c, 1, 0);
    } while (n < 0 && errno == EINTR);
    if (n != 1) {
        fprintf(stderr, "recv: %s\n", n == 0 ? "EOF" : strerror(errno));
        exit(1);
    }
}

static _Noreturn void serve(const char *host, const char *port) {
    raise_nofile();
    endpoint_t sa = addr_of(host, port);
    int ls = socket(sa.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (ls < 0) die("socket");
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&sa.ss, sa.len) != 0) die("bind");
    if (listen(ls, 4096) != 0) die("listen");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("listening\n");
    fflush(stdout);
    struct epoll_event evs[256];
    char buf[65536];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                for (;;) {
                    int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0) break;
                    nodelay(c);
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            ssize_t r = recv(fd, buf, sizeof buf, 0);
            if (r > 0) {
                /* Requests are tiny; a short write would only happen under a flood. */
                ssize_t off = 0;
                while (off < r) {
                    ssize_t w = send(fd, buf + off, (size_t)(r - off), MSG_NOSIGNAL);
                    if (w < 0) {
                        if (errno == EAGAIN || errno == EINTR) continue;
                        break;
                    }
                    off += w;
                }
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                close(fd);
            }
        }
    }
}

static int rr(const char *host, const char *port, double seconds) {
    target_t to = target_of(host, port);
    int fd = dial_target(&to);
    round_trip(fd); /* warm-up: ARP, flow setup */
    long count = 0;
    double start = now(), end = start + seconds, t = start;
    while (t < end) {
        for (int i = 0; i < 64; i++) round_trip(fd);
        count += 64;
        t = now();
    }
    printf("rr %ld %.6f\n", count, t - start);
    close(fd);
    return 0;
}

static int crr(const char *host, const char *port, double seconds) {
    target_t to = target_of(host, port);
    long count = 0;
    double start = now(), end = start + seconds, t = start;
    while (t < end) {
        int fd = dial_target(&to);
        round_trip(fd);
        close(fd);
        count++;
        t = now();
    }
    printf("crr %ld %.6f\n", count, t - start);
    return 0;
}

static _Noreturn void hold(const char *host, const char *port, int n) {
    raise_nofile();
    endpoint_t sa = addr_of(host, port);
    int held = 0, refused = 0;
    for (int i = 0; i < n; i++) {
        int fd = socket(sa.ss.ss_family, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        nodelay(fd);
        if (connect(fd, (const struct sockaddr *)&sa.ss, sa.len) != 0) {
            /* A stack with a bounded flow table refuses the rest: count, keep what we hold. */
            if (errno != ECONNREFUSED && errno != ECONNRESET) die("connect");
            close(fd);
            refused++;
            continue;
        }
        round_trip(fd);
        held++;
    }
    printf("held %d refused %d\n", held, refused);
    fflush(stdout);
    for (;;) pause(); /* the flows close when a signal ends the process */
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "serve") == 0) serve(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "rr") == 0) return rr(argv[2], argv[3], atof(argv[4]));
    if (argc == 5 && strcmp(argv[1], "crr") == 0) return crr(argv[2], argv[3], atof(argv[4]));
    if (argc == 5 && strcmp(argv[1], "hold") == 0) hold(argv[2], argv[3], atoi(argv[4]));
    fprintf(stderr, "usage: pingpong serve|rr|crr|hold ADDR PORT [SECONDS|N]\n");
    return 2;
}
