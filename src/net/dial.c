/* Outgoing connections: --connect-to, asynchronous resolution, Happy
 * Eyeballs (RFC 8305: interleave families, next attempt every 250 ms or at
 * once on failure), one overall timeout, and an optional CONNECT through a
 * parent proxy. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "regproxy/dial.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/net.h"

#define MAX_ADDRS        16
#define ATTEMPT_DELAY_MS 250
#define PARENT_HEAD_MAX  8192

struct attempt {
  struct rp_dial *d;
  uv_tcp_t *tcp; /* NULL once closed or handed over */
  uv_connect_t req;
  char addr[INET6_ADDRSTRLEN + 8];
};

struct rp_dial {
  uv_loop_t *loop;
  rp_dial_cb cb;
  void *data;

  char host[256]; /* where the TCP connection goes (target or parent) */
  uint16_t port;
  char target[300]; /* "host:port" for the parent CONNECT */
  char *parent_auth;
  int parent_connect;
  uint64_t timeout_ms;
  uint32_t mark;

  uv_getaddrinfo_t gai;
  int gai_active;
  struct sockaddr_storage addrs[MAX_ADDRS];
  int naddrs;
  int next;
  int pending;                     /* attempts whose connect callback has not run */
  struct attempt *live[MAX_ADDRS]; /* attempts still connecting */

  uv_timer_t next_timer; /* Happy Eyeballs pacing; also "fail later" */
  uv_timer_t deadline;
  int timers_open;

  struct rp_stream *parent; /* during the parent CONNECT exchange */
  int write_pending;        /* the CONNECT request's write callback names us */
  char request[640];
  char head[PARENT_HEAD_MAX];
  size_t head_len;

  int finished;
  int status;
  char reason[320];
};

static void dial_finish(struct rp_dial *d, int status, struct rp_stream *s);

int rp_connect_to_apply(const struct rp_connect_to *rules, size_t n, char *host, size_t hostsz,
                        uint16_t *port) {
  for (size_t i = 0; i < n; i++) {
    const struct rp_connect_to *r = &rules[i];
    if (r->host[0] != '\0' && strcasecmp(r->host, host) != 0)
      continue;
    if (r->port != 0 && r->port != *port)
      continue;
    if (r->to_addr[0] != '\0')
      snprintf(host, hostsz, "%s", r->to_addr);
    if (r->to_port != 0)
      *port = r->to_port;
    return 1;
  }
  return 0;
}

static void maybe_free(struct rp_dial *d) {
  if (!d->finished || d->pending > 0 || d->gai_active || d->timers_open > 0 || d->parent != NULL ||
      d->write_pending)
    return;
  free(d->parent_auth);
  free(d);
}

static void on_timer_close(uv_handle_t *h) {
  struct rp_dial *d = h->data;
  d->timers_open--;
  maybe_free(d);
}

static void on_parent_close(struct rp_stream *s) {
  struct rp_dial *d = s->data;
  d->parent = NULL;
  maybe_free(d);
}

/* Deliver the result once, then release everything still running. */
static void dial_finish(struct rp_dial *d, int status, struct rp_stream *s) {
  rp_dial_cb cb = d->cb;

  if (d->finished)
    return;
  d->finished = 1;
  d->status = status;
  uv_close((uv_handle_t *)&d->next_timer, on_timer_close);
  uv_close((uv_handle_t *)&d->deadline, on_timer_close);
  if (d->gai_active)
    uv_cancel((uv_req_t *)&d->gai);
  /* Attempts still connecting are closed now (their callbacks then run with
   * UV_ECANCELED and free them), or a connect to a silent address would keep
   * the loop, and a graceful shutdown, waiting for the kernel's SYN retries. */
  for (int i = 0; i < MAX_ADDRS; i++) {
    if (d->live[i] != NULL && d->live[i]->tcp != NULL) {
      rp_tcp_handle_discard(d->live[i]->tcp);
      d->live[i]->tcp = NULL;
    }
  }
  if (d->parent != NULL && d->parent != s)
    rp_stream_close(d->parent, on_parent_close);
  else
    d->parent = NULL;
  d->cb = NULL;
  if (cb != NULL)
    cb(d->data, status, s, status == 0 ? "" : d->reason);
  maybe_free(d);
}

static void on_deadline(uv_timer_t *t) {
  struct rp_dial *d = t->data;
  snprintf(d->reason, sizeof(d->reason), "connect to %s:%u timed out after %llu ms", d->host,
           d->port, (unsigned long long)d->timeout_ms);
  dial_finish(d, RP_ETIMEDOUT, NULL);
}

/* ---- parent proxy CONNECT ---- */

static void parent_fail(struct rp_dial *d, int status, const char *detail) {
  int n =
      snprintf(d->reason, sizeof(d->reason), "parent proxy %s:%u: %s", d->host, d->port, detail);
  if (n >= (int)sizeof(d->reason))
    d->reason[sizeof(d->reason) - 2] = '.'; /* mark the cut; the reason is one log line */
  dial_finish(d, status, NULL);
}

static void on_parent_read(struct rp_stream *s, ssize_t nread, char *block) {
  struct rp_dial *d = s->data;
  char *end;
  int code = 0;

  if (nread < 0) {
    parent_fail(d, RP_EPROXY, nread == UV_EOF ? "closed the connection" : uv_strerror((int)nread));
    return;
  }
  if ((size_t)nread > sizeof(d->head) - 1 - d->head_len) {
    rp_buf_free(block);
    parent_fail(d, RP_EPROXY, "response head too large");
    return;
  }
  memcpy(d->head + d->head_len, block, (size_t)nread);
  d->head_len += (size_t)nread;
  d->head[d->head_len] = '\0';
  rp_buf_free(block);
  end = strstr(d->head, "\r\n\r\n");
  if (end == NULL)
    return;
  if (sscanf(d->head, "HTTP/1.%*1[01] %3d", &code) != 1) {
    parent_fail(d, RP_EPROXY, "malformed response");
    return;
  }
  if (code != 200) {
    char msg[160];
    char *eol = strstr(d->head, "\r\n");
    *eol = '\0';
    snprintf(msg, sizeof(msg), "answered \"%.120s\"", d->head);
    parent_fail(d, RP_EPROXY, msg);
    return;
  }
  if ((size_t)(end + 4 - d->head) != d->head_len) {
    parent_fail(d, RP_EPROXY, "data after its 200 response");
    return;
  }
  rp_stream_read_stop(s);
  s->on_read = NULL;
  s->data = NULL;
  d->parent = NULL;
  dial_finish(d, 0, s);
}

static void on_parent_write(struct rp_stream *s, int status, void *arg) {
  struct rp_dial *d = arg;
  d->write_pending = 0;
  if (status != 0 && !d->finished)
    parent_fail(d, RP_EPROXY, uv_strerror(status));
  else
    maybe_free(d);
}

static void parent_connect_start(struct rp_dial *d, struct rp_stream *s) {
  uv_buf_t buf;
  int n, rc;

  d->parent = s;
  s->data = d;
  s->on_read = on_parent_read;
  n = snprintf(d->request, sizeof(d->request), "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s%s%s\r\n",
               d->target, d->target, d->parent_auth ? "Proxy-Authorization: " : "",
               d->parent_auth ? d->parent_auth : "", d->parent_auth ? "\r\n" : "");
  if (n < 0 || (size_t)n >= sizeof(d->request)) {
    parent_fail(d, RP_EPROXY, "credentials too long");
    return;
  }
  buf = uv_buf_init(d->request, (unsigned)n);
  rc = rp_stream_write(s, &buf, 1, on_parent_write, d);
  if (rc == 0) {
    d->write_pending = 1;
    rc = rp_stream_read_start(s);
  }
  if (rc != 0)
    parent_fail(d, RP_EPROXY, uv_strerror(rc));
}

/* ---- connection attempts ---- */

static void start_attempts(struct rp_dial *d);

static void forget_attempt(struct rp_dial *d, struct attempt *a) {
  for (int i = 0; i < MAX_ADDRS; i++)
    if (d->live[i] == a)
      d->live[i] = NULL;
}

static void on_connect(uv_connect_t *req, int status) {
  struct attempt *a = req->data;
  struct rp_dial *d = a->d;

  d->pending--;
  forget_attempt(d, a);
  if (a->tcp == NULL || d->finished) {
    rp_tcp_handle_discard(a->tcp);
    free(a);
    maybe_free(d);
    return;
  }
  if (status == 0) {
    struct rp_stream *s = rp_tcp_stream_wrap(a->tcp);
    rp_tcp_tune(a->tcp, 0);
    a->tcp = NULL;
    free(a);
    if (d->parent_connect)
      parent_connect_start(d, s);
    else
      dial_finish(d, 0, s);
    return;
  }
  snprintf(d->reason, sizeof(d->reason), "connect to %s failed: %s", a->addr, uv_strerror(status));
  d->status = status;
  rp_tcp_handle_discard(a->tcp);
  free(a);
  if (d->next < d->naddrs) {
    start_attempts(d);
  } else if (d->pending == 0) {
    dial_finish(d, status, NULL);
  }
}

static int attempt_start(struct rp_dial *d, const struct sockaddr *sa) {
  struct attempt *a = calloc(1, sizeof(*a));
  char ip[INET6_ADDRSTRLEN] = "";
  int rc;

  if (a == NULL)
    return UV_ENOMEM;
  a->d = d;
  a->tcp = rp_tcp_handle_new(d->loop, sa->sa_family);
  if (a->tcp == NULL) {
    free(a);
    return UV_ENOMEM;
  }
  rp_tcp_tune(a->tcp, d->mark);
  if (sa->sa_family == AF_INET6) {
    uv_ip6_name((const struct sockaddr_in6 *)sa, ip, sizeof(ip));
    snprintf(a->addr, sizeof(a->addr), "[%s]:%u", ip, d->port);
  } else {
    uv_ip4_name((const struct sockaddr_in *)sa, ip, sizeof(ip));
    snprintf(a->addr, sizeof(a->addr), "%s:%u", ip, d->port);
  }
  a->req.data = a;
  rc = uv_tcp_connect(&a->req, a->tcp, sa, on_connect);
  if (rc != 0) {
    snprintf(d->reason, sizeof(d->reason), "connect to %s failed: %s", a->addr, uv_strerror(rc));
    rp_tcp_handle_discard(a->tcp);
    free(a);
    return rc;
  }
  d->pending++;
  for (int i = 0; i < MAX_ADDRS; i++) {
    if (d->live[i] == NULL) {
      d->live[i] = a;
      break;
    }
  }
  return 0;
}

static void on_next_timer(uv_timer_t *t) {
  struct rp_dial *d = t->data;
  if (d->next < d->naddrs)
    start_attempts(d);
  else if (d->pending == 0)
    dial_finish(d, d->status != 0 ? d->status : UV_ECONNREFUSED, NULL);
}

/* Start the next address; keep going at once past addresses that fail
 * synchronously; pace the rest with the Happy Eyeballs timer. */
static void start_attempts(struct rp_dial *d) {
  while (d->next < d->naddrs) {
    int rc = attempt_start(d, (struct sockaddr *)&d->addrs[d->next++]);
    if (rc == 0) {
      uv_timer_start(&d->next_timer, on_next_timer, ATTEMPT_DELAY_MS, 0);
      return;
    }
    d->status = rc;
  }
  if (d->pending == 0)
    uv_timer_start(&d->next_timer, on_next_timer, 0, 0);
}

static void set_port(struct sockaddr_storage *ss, uint16_t port) {
  if (ss->ss_family == AF_INET6)
    ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
  else
    ((struct sockaddr_in *)ss)->sin_port = htons(port);
}

/* RFC 8305 §4: interleave the families, starting with the first one the
 * resolver returned. */
static void order_addresses(struct rp_dial *d, const struct addrinfo *res) {
  struct sockaddr_storage first[MAX_ADDRS], second[MAX_ADDRS];
  int n1 = 0, n2 = 0, fam = res != NULL ? res->ai_family : AF_INET6;

  for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
      continue;
    if (ai->ai_family == fam && n1 < MAX_ADDRS)
      memcpy(&first[n1++], ai->ai_addr, ai->ai_addrlen);
    else if (ai->ai_family != fam && n2 < MAX_ADDRS)
      memcpy(&second[n2++], ai->ai_addr, ai->ai_addrlen);
  }
  d->naddrs = 0;
  for (int i = 0; (i < n1 || i < n2) && d->naddrs < MAX_ADDRS; i++) {
    if (i < n1)
      d->addrs[d->naddrs++] = first[i];
    if (i < n2 && d->naddrs < MAX_ADDRS)
      d->addrs[d->naddrs++] = second[i];
  }
  for (int i = 0; i < d->naddrs; i++)
    set_port(&d->addrs[i], d->port);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  struct rp_dial *d = req->data;

  d->gai_active = 0;
  if (d->finished) {
    uv_freeaddrinfo(res);
    maybe_free(d);
    return;
  }
  if (status != 0) {
    snprintf(d->reason, sizeof(d->reason), "cannot resolve %s: %s", d->host, uv_strerror(status));
    uv_freeaddrinfo(res);
    dial_finish(d, status, NULL);
    return;
  }
  order_addresses(d, res);
  uv_freeaddrinfo(res);
  if (d->naddrs == 0) {
    snprintf(d->reason, sizeof(d->reason), "cannot resolve %s: no address", d->host);
    dial_finish(d, UV_EAI_NONAME, NULL);
    return;
  }
  start_attempts(d);
}

static int parse_literal(const char *host, uint16_t port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof(*ss));
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0)
    return 0;
  if (strchr(host, ':') != NULL && uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0)
    return 0;
  return UV_EINVAL;
}

struct rp_dial *rp_dial_start(uv_loop_t *loop, const struct rp_dial_req *req, rp_dial_cb cb,
                              void *data) {
  struct rp_dial *d = calloc(1, sizeof(*d));
  char thost[256];
  uint16_t tport = req->port;
  int rc;

  if (d == NULL)
    return NULL;
  d->loop = loop;
  d->cb = cb;
  d->data = data;
  d->timeout_ms = req->timeout_ms;
  d->mark = req->mark;

  /* --connect-to reroutes the destination itself; the parent proxy (if
   * any) is an outgoing connection too and may be rerouted as well. */
  snprintf(thost, sizeof(thost), "%s", req->host);
  rp_connect_to_apply(req->connect_to, req->n_connect_to, thost, sizeof(thost), &tport);
  if (req->parent_host != NULL) {
    snprintf(d->host, sizeof(d->host), "%s", req->parent_host);
    d->port = req->parent_port;
    rp_connect_to_apply(req->connect_to, req->n_connect_to, d->host, sizeof(d->host), &d->port);
    d->parent_connect = req->parent_connect;
    if (req->parent_auth != NULL && (d->parent_auth = strdup(req->parent_auth)) == NULL) {
      free(d);
      return NULL;
    }
  } else {
    memcpy(d->host, thost, sizeof(d->host));
    d->port = tport;
  }
  snprintf(d->target, sizeof(d->target), strchr(thost, ':') ? "[%s]:%u" : "%s:%u", thost, tport);

  uv_timer_init(loop, &d->next_timer);
  uv_timer_init(loop, &d->deadline);
  d->next_timer.data = d;
  d->deadline.data = d;
  d->timers_open = 2;
  if (d->timeout_ms > 0)
    uv_timer_start(&d->deadline, on_deadline, d->timeout_ms, 0);

  if (parse_literal(d->host, d->port, &d->addrs[0]) == 0) {
    d->naddrs = 1;
    start_attempts(d);
    return d;
  }
  {
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    d->gai.data = d;
    rc = uv_getaddrinfo(loop, &d->gai, on_resolved, d->host, NULL, &hints);
  }
  if (rc != 0) {
    snprintf(d->reason, sizeof(d->reason), "cannot resolve %s: %s", d->host, uv_strerror(rc));
    d->status = rc;
    uv_timer_start(&d->next_timer, on_next_timer, 0, 0);
    return d;
  }
  d->gai_active = 1;
  return d;
}

void rp_dial_cancel(struct rp_dial *d) {
  if (d == NULL || d->finished)
    return;
  d->cb = NULL;
  dial_finish(d, UV_ECANCELED, NULL);
}
