/* The upstream engine: one libcurl multi handle driven by the libuv loop
 * through the multi-socket API (curl's docs/examples/multi-uv.c pattern),
 * and the fetch object on top of it.
 *
 * Re-entrancy is the delicate part. libcurl forbids most API calls from
 * inside its own callbacks, and our users call rp_fetch_cancel/start/pause
 * from inside theirs. So every entry into libcurl that may run transfer
 * callbacks (curl_multi_socket_action, curl_easy_pause) is bracketed by
 * up->depth; while depth > 0, cancels and starts are only recorded and the
 * outermost caller applies them (process_pending) once libcurl returned.
 * Resumes always go through an idle handle, so no fetch callback ever runs
 * inside an rp_fetch_* call. */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <curl/curl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "regproxy/config.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/upstream.h"
#include "upstream/internal.h"

/* libcurl's receive buffer per transfer: the only body bytes libcurl holds
 * for a paused transfer, so it bounds memory per fetch. */
#define RECV_BUFFER_SIZE (128 * 1024)
#define SEND_BUFFER_SIZE (64 * 1024)
#define MAX_REDIRECTS    10

struct poll_ctx {
  uv_poll_t poll;
  struct rp_upstream *up;
  curl_socket_t fd;
  int events; /* what libcurl asked for (UV_READABLE | UV_WRITABLE) */
  int closing;
  struct poll_ctx *prev, *next;
};

struct rp_upstream {
  uv_loop_t *loop;
  CURLM *multi;
  uv_timer_t timer;
  uv_idle_t idle; /* deferred resumes */
  struct rp_upstream_trust *trust;
  struct curl_slist *connect_to;
  uint64_t next_serial;
  uint64_t connect_timeout_ms;
  uint64_t stall_timeout_ms;
  uint32_t mark;
  int depth; /* > 0 while libcurl may be running our transfer callbacks */
  struct rp_fetch *fetches;
  struct poll_ctx *polls;
  int destroying;
  int nclosing; /* handles whose close callback is still due; up is freed
                   after the last one once destroying */
};

struct head_field {
  uint32_t name_off, name_len, value_off, value_len;
};

struct rp_fetch {
  struct rp_upstream *up;
  struct rp_fetch *prev, *next;
  CURL *easy;
  struct curl_slist *headers;
  struct curl_slist *connect_to; /* rp_fetch_req.connect_ip, then the configured rules */
  struct rp_fetch_callbacks cb;
  void *data;
  uint64_t serial;
  struct rp_upstream_trust *trust;    /* the generation this fetch started with */
  const struct rp__certsd_host *host; /* its certs.d entry, or NULL */
  char hostport[280];                 /* the URL's host[:port], for messages */
  int cert_requested;                 /* the server asked for a client certificate */
  char *proxy_user, *proxy_pass;
  int follow;
  int proxied;          /* through a parent proxy */
  int forbid_internal;  /* rp_fetch_req.forbid_internal */
  unsigned internal_ok; /* rp_fetch_req.internal_ok */
  char refused[128];    /* why the last address was refused (socket never opened) */

  int added;       /* in the multi handle */
  int add_pending; /* started while libcurl was busy */
  int cancelled;   /* no callbacks any more; freed at the next safe point */
  int finishing;   /* inside on_done */
  int aborted;     /* one of our callbacks told libcurl to stop */

  int recv_paused, send_paused;           /* what the user wants */
  int curl_recv_paused, curl_send_paused; /* what libcurl has been told */
  int unpause_pending;

  /* The response head being assembled from the header callback. */
  int head_open;      /* a status line began a head */
  int head_ready;     /* the blank line ended it; not delivered (1xx/redirect) */
  int head_delivered; /* on_head ran: later header lines are trailers */
  int status;
  char *hbuf;
  size_t hlen, hcap;
  uint32_t reason_off, reason_len;
  struct head_field *fields;
  size_t nfields, fields_cap;

  char errbuf[CURL_ERROR_SIZE];
  int own_status;   /* why we stopped the transfer ourselves (with aborted) */
  char reason[256]; /* our own failure reason, takes precedence */
};

static void process_pending(struct rp_upstream *up);
static void check_multi_info(struct rp_upstream *up);

/* ---- trust: the store and the client certificate per connection ----------- */

/* SSL_CTX ex_data slots: the engine and the serial of the fetch that made
 * the connection. */
static int up_idx = -1, serial_idx = -1;
static pthread_once_t idx_once = PTHREAD_ONCE_INIT;

static void idx_init(void) {
  up_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
  serial_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

/* The server asked for a client certificate and this fetch has none: note
 * it, so that a failed handshake can say what is missing. The SSL_CTX may
 * outlive the fetch (a pooled connection renegotiating), so it carries the
 * fetch's serial number, looked up among the live fetches, not a pointer. */
static int on_client_cert(SSL *ssl, X509 **x509, EVP_PKEY **pkey) {
  SSL_CTX *ctx = SSL_get_SSL_CTX(ssl);
  struct rp_upstream *up = ctx != NULL ? SSL_CTX_get_ex_data(ctx, up_idx) : NULL;
  uint64_t serial = ctx != NULL ? (uint64_t)(uintptr_t)SSL_CTX_get_ex_data(ctx, serial_idx) : 0;
  (void)x509;
  (void)pkey;
  if (up != NULL && !up->destroying)
    for (struct rp_fetch *f = up->fetches; f != NULL; f = f->next)
      if (f->serial == serial)
        f->cert_requested = 1;
  return 0; /* no certificate: the server decides whether that is fatal */
}

/* Every new TLS connection: the store of this fetch's registry (built once
 * per trust generation, instead of re-reading the bundle on each
 * handshake). A client pair, when configured, was set by libcurl from the
 * blobs, which also keep connections with other TLS material apart. */
static CURLcode on_ssl_ctx(CURL *easy, void *ssl_ctx, void *arg) {
  struct rp_fetch *f = arg;
  const struct rp__certsd_host *h = f->host;
  (void)easy;
  rp__trust_load_system(f->trust);
  SSL_CTX_set1_cert_store(ssl_ctx, h != NULL && h->store != NULL ? h->store : f->trust->base);
  if (h == NULL || h->cert_file == NULL) {
    pthread_once(&idx_once, idx_init);
    if (up_idx >= 0 && serial_idx >= 0 && SSL_CTX_set_ex_data(ssl_ctx, up_idx, f->up) == 1 &&
        SSL_CTX_set_ex_data(ssl_ctx, serial_idx, (void *)(uintptr_t)f->serial) == 1)
      SSL_CTX_set_client_cert_cb(ssl_ctx, on_client_cert);
  }
  return CURLE_OK;
}

static int on_sockopt(void *arg, curl_socket_t fd, curlsocktype purpose) {
  struct rp_upstream *up = arg;
  if (purpose == CURLSOCKTYPE_IPCXN && up->mark != 0) {
    unsigned int mark = up->mark;
    if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0) {
      rp_log_warn("upstream: SO_MARK %u: %s", mark, strerror(errno));
      return CURL_SOCKOPT_ERROR;
    }
  }
  return CURL_SOCKOPT_OK;
}

/* "HOST:PORT:ADDR:PORT" in libcurl's syntax; empty fields mean "any" /
 * "keep", IPv6 literals go in brackets. */
static int format_connect_to(const struct rp_connect_to *c, char *buf, size_t bufsz) {
  char port[8] = "", to_port[8] = "";
  if (c->port != 0)
    snprintf(port, sizeof(port), "%u", (unsigned)c->port);
  if (c->to_port != 0)
    snprintf(to_port, sizeof(to_port), "%u", (unsigned)c->to_port);
  int v6 = strchr(c->host, ':') != NULL;
  int to_v6 = strchr(c->to_addr, ':') != NULL;
  int n = snprintf(buf, bufsz, "%s%s%s:%s:%s%s%s:%s", v6 ? "[" : "", c->host, v6 ? "]" : "", port,
                   to_v6 ? "[" : "", c->to_addr, to_v6 ? "]" : "", to_port);
  return n < 0 || (size_t)n >= bufsz ? RP_ETOOBIG : 0;
}

/* ---- the loop side: sockets and the timer ------------------------------- */

static void on_poll_close(uv_handle_t *h) {
  struct poll_ctx *ctx = h->data;
  struct rp_upstream *up = ctx->up;
  free(ctx);
  if (--up->nclosing == 0 && up->destroying)
    free(up);
}

static void poll_ctx_close(struct poll_ctx *ctx) {
  struct rp_upstream *up = ctx->up;
  if (ctx->closing)
    return;
  ctx->closing = 1;
  if (ctx->prev != NULL)
    ctx->prev->next = ctx->next;
  else
    up->polls = ctx->next;
  if (ctx->next != NULL)
    ctx->next->prev = ctx->prev;
  ctx->prev = ctx->next = NULL;
  up->nclosing++;
  uv_poll_stop(&ctx->poll);
  uv_close((uv_handle_t *)&ctx->poll, on_poll_close);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  struct poll_ctx *ctx = h->data;
  struct rp_upstream *up = ctx->up;
  int flags = 0, running = 0;
  if (status < 0) {
    /* libuv stopped this poll (POLLERR): let libcurl find the real error
     * (or the last data) with its own recv/send instead of failing blindly
     * on CURL_CSELECT_ERR. */
    flags = (ctx->events & UV_READABLE ? CURL_CSELECT_IN : 0) |
            (ctx->events & UV_WRITABLE ? CURL_CSELECT_OUT : 0);
  } else {
    if (events & UV_READABLE)
      flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
      flags |= CURL_CSELECT_OUT;
  }
  up->depth++;
  curl_multi_socket_action(up->multi, ctx->fd, flags, &running);
  up->depth--;
  /* ctx stays allocated until its close callback, which cannot have run. */
  if (status < 0 && !ctx->closing && ctx->events != 0 && !uv_is_active((uv_handle_t *)&ctx->poll))
    uv_poll_start(&ctx->poll, ctx->events, on_poll);
  check_multi_info(up);
  process_pending(up);
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *arg, void *sockp) {
  struct rp_upstream *up = arg;
  struct poll_ctx *ctx = sockp;
  int events = 0, rc;
  if (what == CURL_POLL_REMOVE) {
    if (ctx != NULL) {
      poll_ctx_close(ctx);
      curl_multi_assign(up->multi, fd, NULL);
    }
    return 0;
  }
  if (ctx == NULL) {
    ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
      return -1;
    rc = uv_poll_init_socket(up->loop, &ctx->poll, fd);
    if (rc != 0) {
      rp_log_warn("upstream: uv_poll_init_socket(%d): %s", (int)fd, uv_strerror(rc));
      free(ctx);
      return -1;
    }
    ctx->poll.data = ctx;
    ctx->up = up;
    ctx->fd = fd;
    ctx->next = up->polls;
    if (up->polls != NULL)
      up->polls->prev = ctx;
    up->polls = ctx;
    if (curl_multi_assign(up->multi, fd, ctx) != CURLM_OK) {
      poll_ctx_close(ctx);
      return -1;
    }
  }
  if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
    events |= UV_READABLE;
  if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
    events |= UV_WRITABLE;
  ctx->events = events;
  rc = uv_poll_start(&ctx->poll, events, on_poll);
  return rc == 0 ? 0 : -1;
}

static void on_timeout(uv_timer_t *t) {
  struct rp_upstream *up = t->data;
  int running = 0;
  up->depth++;
  curl_multi_socket_action(up->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  up->depth--;
  check_multi_info(up);
  process_pending(up);
}

static int on_timer(CURLM *multi, long timeout_ms, void *arg) {
  struct rp_upstream *up = arg;
  if (timeout_ms < 0)
    return uv_timer_stop(&up->timer) == 0 ? 0 : -1;
  /* Even 0 goes through the loop: libcurl must not be re-entered here. */
  return uv_timer_start(&up->timer, on_timeout, (uint64_t)timeout_ms, 0) == 0 ? 0 : -1;
}

/* ---- the fetch ------------------------------------------------------------ */

static void fetch_free(struct rp_fetch *f) {
  struct rp_upstream *up = f->up;
  if (f->added) {
    curl_multi_remove_handle(up->multi, f->easy);
    f->added = 0;
  }
  if (f->prev != NULL)
    f->prev->next = f->next;
  else
    up->fetches = f->next;
  if (f->next != NULL)
    f->next->prev = f->prev;
  if (f->easy != NULL)
    curl_easy_cleanup(f->easy);
  curl_slist_free_all(f->headers);
  curl_slist_free_all(f->connect_to);
  rp_upstream_trust_release(f->trust);
  free(f->proxy_user);
  free(f->proxy_pass);
  free(f->hbuf);
  free(f->fields);
  free(f);
}

/* Stop the transfer for our own reason (the first one wins). */
static void fail(struct rp_fetch *f, int status, const char *msg) {
  if (f->aborted)
    return;
  f->aborted = 1;
  f->own_status = status;
  snprintf(f->reason, sizeof(f->reason), "%s", msg);
}

static int hbuf_add(struct rp_fetch *f, const char *p, size_t n, uint32_t *off) {
  if (f->hlen + n + 1 > RP_HTTP_HEAD_MAX)
    return RP_ETOOBIG;
  if (f->hlen + n + 1 > f->hcap) {
    size_t cap = f->hcap ? f->hcap : 1024;
    while (cap < f->hlen + n + 1)
      cap *= 2;
    char *nb = realloc(f->hbuf, cap);
    if (nb == NULL)
      return RP_ENOMEM;
    f->hbuf = nb;
    f->hcap = cap;
  }
  *off = (uint32_t)f->hlen;
  memcpy(f->hbuf + f->hlen, p, n);
  f->hlen += n;
  f->hbuf[f->hlen++] = '\0';
  return 0;
}

static void head_reset(struct rp_fetch *f) {
  f->head_open = 0;
  f->head_ready = 0;
  f->status = 0;
  f->hlen = 0;
  f->nfields = 0;
  f->reason_off = f->reason_len = 0;
}

static int parse_status_line(struct rp_fetch *f, const char *p, size_t n) {
  /* "HTTP/1.1 200 OK" (the reason may be empty or missing). */
  size_t i = 5;
  while (i < n && p[i] != ' ')
    i++;
  while (i < n && p[i] == ' ')
    i++;
  if (i + 3 > n || p[i] < '1' || p[i] > '9' || p[i + 1] < '0' || p[i + 1] > '9' || p[i + 2] < '0' ||
      p[i + 2] > '9' || (i + 3 < n && p[i + 3] != ' '))
    return RP_EPARSE;
  f->status = (p[i] - '0') * 100 + (p[i + 1] - '0') * 10 + (p[i + 2] - '0');
  i += 3;
  while (i < n && p[i] == ' ')
    i++;
  f->reason_len = (uint32_t)(n - i);
  return hbuf_add(f, p + i, n - i, &f->reason_off);
}

static int add_field(struct rp_fetch *f, const char *p, size_t n) {
  int rc;
  if ((p[0] == ' ' || p[0] == '\t')) {
    /* Obsolete line folding: continue the previous value with one space. */
    if (f->nfields == 0)
      return RP_EPARSE;
    struct head_field *last = &f->fields[f->nfields - 1];
    while (n > 0 && (*p == ' ' || *p == '\t'))
      p++, n--;
    if (last->value_off + last->value_len + 1 != f->hlen || f->hlen + n + 1 > RP_HTTP_HEAD_MAX)
      return RP_EPARSE;
    uint32_t off;
    f->hlen--; /* drop the value's NUL, the new piece brings one */
    rc = hbuf_add(f, " ", 1, &off);
    if (rc != 0)
      return rc;
    f->hlen--;
    rc = hbuf_add(f, p, n, &off);
    if (rc != 0)
      return rc;
    last->value_len += (uint32_t)(1 + n);
    return 0;
  }
  const char *colon = memchr(p, ':', n);
  if (colon == NULL || colon == p)
    return RP_EPARSE;
  if (f->nfields == RP_HTTP_MAX_HEADERS)
    return RP_ETOOBIG;
  if (f->nfields == f->fields_cap) {
    size_t cap = f->fields_cap ? f->fields_cap * 2 : 16;
    struct head_field *nf = realloc(f->fields, cap * sizeof(*nf));
    if (nf == NULL)
      return RP_ENOMEM;
    f->fields = nf;
    f->fields_cap = cap;
  }
  struct head_field *hf = &f->fields[f->nfields];
  size_t name_len = (size_t)(colon - p);
  const char *v = colon + 1;
  size_t vlen = n - name_len - 1;
  while (vlen > 0 && (*v == ' ' || *v == '\t'))
    v++, vlen--;
  while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
    vlen--;
  rc = hbuf_add(f, p, name_len, &hf->name_off);
  if (rc == 0)
    rc = hbuf_add(f, v, vlen, &hf->value_off);
  if (rc != 0)
    return rc;
  hf->name_len = (uint32_t)name_len;
  hf->value_len = (uint32_t)vlen;
  f->nfields++;
  return 0;
}

static const struct head_field *find_field(const struct rp_fetch *f, const char *name) {
  size_t len = strlen(name);
  for (size_t i = 0; i < f->nfields; i++)
    if (f->fields[i].name_len == len &&
        strncasecmp(f->hbuf + f->fields[i].name_off, name, len) == 0)
      return &f->fields[i];
  return NULL;
}

/* Is this complete head one that libcurl will follow instead of returning?
 * libcurl follows every 3xx with a non-empty Location when asked to. */
static int head_is_intermediate(const struct rp_fetch *f) {
  if (f->status >= 100 && f->status < 200)
    return 1;
  if (f->follow && f->status >= 300 && f->status < 400) {
    const struct head_field *loc = find_field(f, "Location");
    return loc != NULL && loc->value_len > 0;
  }
  return 0;
}

/* Hand the held head to on_head. Returns 0 to go on, -1 to stop. */
static int deliver_head(struct rp_fetch *f) {
  int rc = 0;
  struct rp_http_header *hs = NULL;
  f->head_delivered = 1;
  if (f->nfields > 0) {
    hs = calloc(f->nfields, sizeof(*hs));
    if (hs == NULL) {
      fail(f, RP_ENOMEM, "out of memory");
      return -1;
    }
  }
  for (size_t i = 0; i < f->nfields; i++) {
    hs[i].name = f->hbuf + f->fields[i].name_off;
    hs[i].name_len = f->fields[i].name_len;
    hs[i].value = f->hbuf + f->fields[i].value_off;
    hs[i].value_len = f->fields[i].value_len;
  }
  if (f->cb.on_head != NULL)
    rc = f->cb.on_head(f, f->data, f->status, f->reason_len ? f->hbuf + f->reason_off : "", hs,
                       f->nfields);
  free(hs);
  /* The head is no longer needed: the buffers go back now, not at the end. */
  free(f->hbuf);
  free(f->fields);
  f->hbuf = NULL;
  f->fields = NULL;
  f->hlen = f->hcap = f->nfields = f->fields_cap = 0;
  if (f->cancelled)
    return -1;
  if (rc < 0) {
    fail(f, RP_EABORTED, "aborted by the receiver of the response head");
    return -1;
  }
  return 0;
}

static size_t on_header(char *p, size_t size, size_t nitems, void *arg) {
  struct rp_fetch *f = arg;
  size_t n = size * nitems, len = n;
  int rc = 0;
  if (f->cancelled || f->aborted)
    return 0;
  if (f->head_delivered)
    return n; /* trailers */
  while (len > 0 && (p[len - 1] == '\n' || p[len - 1] == '\r'))
    len--;
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0 && (!f->head_open || f->head_ready)) {
    head_reset(f);
    f->head_open = 1;
    rc = parse_status_line(f, p, len);
  } else if (!f->head_open || f->head_ready) {
    rc = RP_EPARSE;
  } else if (len == 0) {
    f->head_ready = 1;
    if (!head_is_intermediate(f))
      return deliver_head(f) == 0 ? n : 0;
    if (f->status < 200)
      head_reset(f);
  } else {
    rc = add_field(f, p, len);
  }
  if (rc != 0) {
    fail(f, rc == RP_ENOMEM ? RP_ENOMEM : RP_EUPSTREAM,
         rc == RP_ETOOBIG  ? "upstream response head too large"
         : rc == RP_ENOMEM ? "out of memory"
                           : "malformed upstream response head");
    return 0;
  }
  return n;
}

static size_t on_write(char *p, size_t size, size_t nitems, void *arg) {
  struct rp_fetch *f = arg;
  size_t n = size * nitems;
  if (f->cancelled || f->aborted)
    return 0;
  if (!f->head_delivered) {
    if (!f->head_ready) {
      fail(f, RP_EUPSTREAM, "upstream body before a response head");
      return 0;
    }
    if (deliver_head(f) != 0)
      return 0;
  }
  if (f->recv_paused) {
    f->curl_recv_paused = 1;
    return CURL_WRITEFUNC_PAUSE;
  }
  if (n == 0)
    return 0;
  int rc = f->cb.on_body != NULL ? f->cb.on_body(f, f->data, p, n) : 0;
  if (f->cancelled)
    return 0;
  if (rc == RP_FETCH_PAUSE) {
    f->recv_paused = 1;
    f->curl_recv_paused = 1;
    return CURL_WRITEFUNC_PAUSE;
  }
  if (rc < 0) {
    fail(f, RP_EABORTED, "aborted by the receiver of the response body");
    return 0;
  }
  return n;
}

static size_t on_read(char *buf, size_t size, size_t nitems, void *arg) {
  struct rp_fetch *f = arg;
  size_t n = size * nitems;
  if (f->cancelled || f->aborted)
    return CURL_READFUNC_ABORT;
  if (f->cb.read_body == NULL)
    return 0;
  if (f->send_paused) {
    f->curl_send_paused = 1;
    return CURL_READFUNC_PAUSE;
  }
  ssize_t r = f->cb.read_body(f, f->data, buf, n);
  if (f->cancelled)
    return CURL_READFUNC_ABORT;
  if (r == RP_FETCH_PAUSE) {
    f->send_paused = 1;
    f->curl_send_paused = 1;
    return CURL_READFUNC_PAUSE;
  }
  if (r < 0 || (size_t)r > n) {
    fail(f, RP_EABORTED, "aborted by the request body source");
    return CURL_READFUNC_ABORT;
  }
  return (size_t)r;
}

static int map_result(struct rp_fetch *f, CURLcode code) {
  long connect_code = 0, os_errno = 0;
  if (f->aborted)
    return f->own_status;
  curl_easy_getinfo(f->easy, CURLINFO_HTTP_CONNECTCODE, &connect_code);
  switch (code) {
  case CURLE_OK: return 0;
  case CURLE_OUT_OF_MEMORY: return RP_ENOMEM;
  case CURLE_UNSUPPORTED_PROTOCOL:
  case CURLE_URL_MALFORMAT:
  case CURLE_BAD_FUNCTION_ARGUMENT: return RP_EINVAL;
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY: return UV_EAI_NONAME;
  case CURLE_COULDNT_CONNECT:
    if (f->refused[0] != '\0')
      return RP_EDENIED; /* every address was refused, or the others failed */
    curl_easy_getinfo(f->easy, CURLINFO_OS_ERRNO, &os_errno);
    return os_errno > 0 ? -(int)os_errno : UV_ECONNREFUSED;
  case CURLE_OPERATION_TIMEDOUT: return RP_ETIMEDOUT;
  case CURLE_SSL_CONNECT_ERROR: return RP_EUPSTREAM_HANDSHAKE;
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_USE_SSL_FAILED: return RP_EUPSTREAM_TLS;
  case CURLE_PROXY: return RP_EPROXY;
  default: return connect_code >= 300 ? RP_EPROXY : RP_EUPSTREAM;
  }
}

/* One line: libcurl's error buffer (OpenSSL's verification reason for
 * certificate problems), else the code's message. */
static void build_reason(struct rp_fetch *f, CURLcode code, char *out, size_t outsz) {
  const char *src = f->reason[0] != '\0'                                     ? f->reason
                    : code == CURLE_COULDNT_CONNECT && f->refused[0] != '\0' ? f->refused
                    : f->errbuf[0] != '\0'                                   ? f->errbuf
                                           : curl_easy_strerror(code);
  size_t j = 0;
  for (size_t i = 0; src[i] != '\0' && j + 1 < outsz; i++)
    out[j++] = (src[i] == '\r' || src[i] == '\n' || src[i] == '\t') ? ' ' : src[i];
  while (j > 0 && out[j - 1] == ' ')
    j--;
  out[j] = '\0';
}

/* The handshake (or the first read, in TLS 1.3) failed after the server
 * asked for a client certificate we do not have: say which and where. */
static int missing_client_cert(struct rp_fetch *f, char *reason, size_t n) {
  char tls[CURL_ERROR_SIZE + 64];
  const char *dirs = f->trust->dirs != NULL && f->trust->dirs[0] ? f->trust->dirs : NULL;
  snprintf(tls, sizeof(tls), "%s", reason);
  int k = snprintf(
      reason, n,
      "%s requires a client certificate and none is configured for it: put client.cert "
      "and client.key in <certs.d>/%s/ (%s%s) (%s)",
      f->hostport, f->hostport, dirs != NULL ? "--upstream-certs-dir " : "no --upstream-certs-dir",
      dirs != NULL ? dirs : "", tls);
  if (k < 0)
    snprintf(reason, n, "%s requires a client certificate", f->hostport);
  rp_log_warn("upstream: %s", reason);
  return RP_EUPSTREAM_TLS;
}

static void fetch_finish(struct rp_fetch *f, CURLcode code) {
  char reason[1024];
  int status;
  if (f->added) {
    curl_multi_remove_handle(f->up->multi, f->easy);
    f->added = 0;
  }
  if (f->cancelled) {
    fetch_free(f);
    return;
  }
  if (code == CURLE_OK && !f->head_delivered) {
    if (f->head_ready) {
      deliver_head(f);
    } else {
      fail(f, RP_EUPSTREAM, "upstream sent no response head");
    }
  }
  if (f->cancelled) {
    fetch_free(f);
    return;
  }
  /* libcurl refuses a response header line over its own limit
   * (CURL_MAX_HTTP_HEADER) with CURLE_OUT_OF_MEMORY and no message. */
  if (code == CURLE_OUT_OF_MEMORY && f->head_open && !f->head_delivered)
    fail(f, RP_EUPSTREAM, "upstream response head too large");
  status = map_result(f, code);
  reason[0] = '\0';
  if (status != 0)
    build_reason(f, code, reason, sizeof(reason));
  if (status != 0 && f->cert_requested && !f->aborted)
    status = missing_client_cert(f, reason, sizeof(reason));
  f->finishing = 1;
  if (f->cb.on_done != NULL)
    f->cb.on_done(f, f->data, status, status == 0 ? "" : reason);
  fetch_free(f);
}

static void check_multi_info(struct rp_upstream *up) {
  CURLMsg *msg;
  int pending;
  if (up->depth > 0)
    return;
  for (msg = curl_multi_info_read(up->multi, &pending); msg != NULL;
       msg = curl_multi_info_read(up->multi, &pending)) {
    struct rp_fetch *f = NULL;
    if (msg->msg != CURLMSG_DONE)
      continue;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&f);
    if (f != NULL)
      fetch_finish(f, msg->data.result);
  }
}

/* Apply what was asked while libcurl was busy: frees of cancelled fetches,
 * adds of fetches started from inside a callback. */
static void process_pending(struct rp_upstream *up) {
  struct rp_fetch *f, *next;
  int again = 1;
  if (up->depth > 0)
    return;
  while (again) {
    again = 0;
    for (f = up->fetches; f != NULL; f = next) {
      next = f->next;
      if (f->cancelled && !f->finishing) {
        fetch_free(f);
        again = 1;
        break; /* the list may have changed under next */
      }
      if (f->add_pending) {
        f->add_pending = 0;
        if (curl_multi_add_handle(up->multi, f->easy) == CURLM_OK) {
          f->added = 1;
        } else {
          /* Report it like any other failure, from the loop. */
          fail(f, RP_ENOMEM, "cannot start the transfer");
          fetch_finish(f, CURLE_FAILED_INIT);
          again = 1;
          break;
        }
      }
    }
  }
}

static void on_idle(uv_idle_t *h) {
  struct rp_upstream *up = h->data;
  struct rp_fetch *f;
  uv_idle_stop(&up->idle);
  up->depth++;
  for (f = up->fetches; f != NULL; f = f->next) {
    if (!f->unpause_pending || f->cancelled || !f->added)
      continue;
    f->unpause_pending = 0;
    int recv_go = f->curl_recv_paused && !f->recv_paused;
    int send_go = f->curl_send_paused && !f->send_paused;
    if (!recv_go && !send_go)
      continue;
    if (recv_go)
      f->curl_recv_paused = 0;
    if (send_go)
      f->curl_send_paused = 0;
    /* libcurl may call on_write right here with the bytes it kept; a
     * fetch freed by that is only marked (depth > 0), so f stays valid. */
    curl_easy_pause(f->easy, (f->curl_recv_paused ? CURLPAUSE_RECV : 0) |
                                 (f->curl_send_paused ? CURLPAUSE_SEND : 0));
  }
  up->depth--;
  check_multi_info(up);
  process_pending(up);
}

static void schedule_unpause(struct rp_fetch *f) {
  f->unpause_pending = 1;
  uv_idle_start(&f->up->idle, on_idle);
}

static int add_header(struct rp_fetch *f, const char *line) {
  struct curl_slist *l = curl_slist_append(f->headers, line);
  if (l == NULL)
    return RP_ENOMEM;
  f->headers = l;
  return 0;
}

static int has_ctl(const char *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0')
      return 1;
  return 0;
}

/* The request headers as given, minus the framing the engine owns
 * (Content-Length, Transfer-Encoding, Expect), plus "Expect:" (no
 * 100-continue), "Accept:" when the caller sent none (libcurl would add
 * its own catch-all Accept otherwise), and "Content-Length: 0" for a body
 * of length 0 where one is expected (POST, PUT, PATCH, or the caller said
 * so), as Go and docker send it. */
static int build_headers(struct rp_fetch *f, const struct rp_fetch_req *req, const char *method) {
  int rc = 0, have_accept = 0, had_length = 0;
  char *line = NULL;
  size_t cap = 0;
  for (size_t i = 0; i < req->nheaders; i++) {
    const struct rp_http_header *h = &req->headers[i];
    if (h->name_len == 0 || has_ctl(h->name, h->name_len) || has_ctl(h->value, h->value_len) ||
        memchr(h->name, ':', h->name_len) != NULL) {
      rc = RP_EINVAL;
      goto out;
    }
    if (rp_http_token_eq(h->name, h->name_len, "content-length"))
      had_length = 1;
    if (rp_http_token_eq(h->name, h->name_len, "content-length") ||
        rp_http_token_eq(h->name, h->name_len, "transfer-encoding") ||
        rp_http_token_eq(h->name, h->name_len, "expect"))
      continue;
    if (rp_http_token_eq(h->name, h->name_len, "accept"))
      have_accept = 1;
    size_t need = h->name_len + h->value_len + 3;
    if (need > cap) {
      char *nl = realloc(line, need);
      if (nl == NULL) {
        rc = RP_ENOMEM;
        goto out;
      }
      line = nl;
      cap = need;
    }
    /* libcurl sends "Name;" as a header with an empty value ("Name:" would
     * remove one of its own). */
    if (h->value_len == 0)
      snprintf(line, cap, "%.*s;", (int)h->name_len, h->name);
    else
      snprintf(line, cap, "%.*s: %.*s", (int)h->name_len, h->name, (int)h->value_len, h->value);
    rc = add_header(f, line);
    if (rc != 0)
      goto out;
  }
  rc = add_header(f, "Expect:");
  if (rc == 0 && !have_accept)
    rc = add_header(f, "Accept:");
  if (rc == 0 && req->body_len == 0 && strcmp(method, "HEAD") != 0 &&
      (had_length || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
       strcmp(method, "PATCH") == 0))
    rc = add_header(f, "Content-Length: 0");
out:
  free(line);
  return rc;
}

/* ---- the address policy (rp_fetch_req.forbid_internal) -------------------- */

static int class_allowed(const struct rp_fetch *f, int c) {
  return c == RP_ADDR_PUBLIC || (c > 0 && c < RP_ADDR_CLASS_LAST && (f->internal_ok & (1u << c)));
}

static void refusal(char *out, size_t outsz, const char *addr, int c) {
  snprintf(out, outsz, "refusing to connect to %s (%s address)", addr,
           c >= 0 ? rp_upstream_addr_class_name((enum rp_addr_class)c) : "unknown");
}

/* Every socket libcurl opens for a policed transfer comes through here, so
 * a refused address never sees a packet. Happy Eyeballs may still find an
 * allowed address of the same name; the refusal counts only if none is. */
static curl_socket_t on_opensocket(void *arg, curlsocktype purpose, struct curl_sockaddr *a) {
  struct rp_fetch *f = arg;
  if (f->aborted || f->cancelled)
    return CURL_SOCKET_BAD;
  if (purpose == CURLSOCKTYPE_IPCXN && !f->proxied) {
    enum rp_addr_class c = RP_ADDR_RESERVED;
    char ip[INET6_ADDRSTRLEN] = "?";
    if (a->family == AF_INET && a->addrlen >= sizeof(struct sockaddr_in)) {
      c = rp_upstream_addr_class(&a->addr);
      inet_ntop(AF_INET, &((const struct sockaddr_in *)&a->addr)->sin_addr, ip, sizeof(ip));
    } else if (a->family == AF_INET6 && a->addrlen >= sizeof(struct sockaddr_in6)) {
      c = rp_upstream_addr_class(&a->addr);
      inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&a->addr)->sin6_addr, ip, sizeof(ip));
    }
    if (!class_allowed(f, (int)c)) {
      refusal(f->refused, sizeof(f->refused), ip, (int)c);
      rp_log_debug("upstream: %s", f->refused);
      return CURL_SOCKET_BAD;
    }
  }
  return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* Before each request: a reused connection never came through
 * on_opensocket, and a redirect may have picked one from the pool. */
static int on_prereq(void *arg, char *primary_ip, char *local_ip, int primary_port,
                     int local_port) {
  struct rp_fetch *f = arg;
  char msg[sizeof(f->refused)];
  int c;
  (void)local_ip;
  (void)primary_port;
  (void)local_port;
  if (f->proxied)
    return CURL_PREREQFUNC_OK;
  c = rp_upstream_host_class(primary_ip);
  if (c >= 0 && class_allowed(f, c))
    return CURL_PREREQFUNC_OK;
  refusal(msg, sizeof(msg), primary_ip != NULL ? primary_ip : "?", c);
  fail(f, RP_EDENIED, msg);
  return CURL_PREREQFUNC_ABORT;
}

/* Through a proxy only the URL tells where the proxy will connect; refused
 * hosts stop the transfer before a socket to the proxy is opened. */
static int check_proxied_url(struct rp_fetch *f, const char *url) {
  int c;
  char *host = NULL;
  char msg[sizeof(f->refused)];
  CURLU *u = curl_url();
  if (u == NULL)
    return RP_ENOMEM;
  if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
    goto out; /* libcurl refuses it itself */
  c = rp_upstream_host_class(host);
  if (c >= 0 && !class_allowed(f, c)) {
    refusal(msg, sizeof(msg), host, c);
    fail(f, RP_EDENIED, msg);
  }
out:
  curl_free(host);
  curl_url_cleanup(u);
  return 0;
}

/* rp_fetch_req.connect_ip as this transfer's own connect-to line, ahead of
 * the configured ones (the first match wins; they still apply to redirects). */
static int fetch_connect_to(struct rp_fetch *f, const struct rp_fetch_req *req) {
  char *host = NULL, *port = NULL;
  char line[400];
  int rc = 0, v6 = strchr(req->connect_ip, ':') != NULL;
  CURLU *u = curl_url();

  if (u == NULL)
    return RP_ENOMEM;
  if (curl_url_set(u, CURLUPART_URL, req->url, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK) {
    rc = RP_EINVAL;
    goto out;
  }
  snprintf(line, sizeof(line), "%s:%s:%s%s%s:%u", host, port, v6 ? "[" : "", req->connect_ip,
           v6 ? "]" : "",
           req->connect_port != 0 ? req->connect_port : (unsigned)strtoul(port, NULL, 10));
  f->connect_to = curl_slist_append(NULL, line);
  for (struct curl_slist *l = f->up->connect_to; l != NULL && f->connect_to != NULL; l = l->next) {
    struct curl_slist *n = curl_slist_append(f->connect_to, l->data);
    if (n == NULL) {
      curl_slist_free_all(f->connect_to);
      f->connect_to = NULL;
    }
  }
  if (f->connect_to == NULL)
    rc = RP_ENOMEM;
out:
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return rc;
}

/* The certs.d entry for the URL's registry (redirects keep it, as the
 * engines' HTTP clients keep their TLS configuration). */
static int pick_certsd(struct rp_fetch *f, const char *url) {
  char *host = NULL, *port = NULL;
  int rc = 0;
  CURLU *u = curl_url();
  if (u == NULL)
    return RP_ENOMEM;
  if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK)
    goto out; /* libcurl refuses it itself */
  if (strncasecmp(url, "https://", 8) == 0)
    f->host = rp__trust_find(f->trust, host, strtol(port, NULL, 10));
  if (strcmp(port, "443") == 0 || strcmp(port, "80") == 0)
    snprintf(f->hostport, sizeof(f->hostport), "%s", host);
  else
    snprintf(f->hostport, sizeof(f->hostport), "%s:%s", host, port);
out:
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return rc;
}

#define SETOPT(opt, val)                                                                           \
  do {                                                                                             \
    if (curl_easy_setopt(f->easy, opt, val) != CURLE_OK) {                                         \
      rc = RP_EINVAL;                                                                              \
      goto out;                                                                                    \
    }                                                                                              \
  } while (0)

static int setup_easy(struct rp_fetch *f, const struct rp_fetch_req *req) {
  struct rp_upstream *up = f->up;
  int rc = 0;
  const char *method = req->method != NULL ? req->method : "GET";
  int is_head = strcmp(method, "HEAD") == 0;
  int is_https = strncasecmp(req->url, "https://", 8) == 0;
  int has_body = req->body_len != 0;

  f->proxied = req->proxy != NULL && req->proxy[0] != '\0';
  f->forbid_internal = req->forbid_internal;
  f->internal_ok = req->internal_ok;
  /* Behind a proxy regproxy cannot see where a redirect leads. */
  f->follow = req->follow_redirects && !(f->forbid_internal && f->proxied);

  SETOPT(CURLOPT_PRIVATE, f);
  SETOPT(CURLOPT_URL, req->url);
  SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
  SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  SETOPT(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
  SETOPT(CURLOPT_PATH_AS_IS, 1L);
  SETOPT(CURLOPT_NOSIGNAL, 1L);
  SETOPT(CURLOPT_ERRORBUFFER, f->errbuf);
  SETOPT(CURLOPT_BUFFERSIZE, (long)RECV_BUFFER_SIZE);
  SETOPT(CURLOPT_UPLOAD_BUFFERSIZE, (long)SEND_BUFFER_SIZE);
  SETOPT(CURLOPT_TCP_NODELAY, 1L);
  SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
  /* Bytes pass through exactly as the upstream sent them. */
  SETOPT(CURLOPT_HTTP_CONTENT_DECODING, 0L);
  if (req->connect_timeout_ms > 0)
    SETOPT(CURLOPT_CONNECTTIMEOUT_MS, (long)req->connect_timeout_ms);
  else if (up->connect_timeout_ms > 0)
    SETOPT(CURLOPT_CONNECTTIMEOUT_MS, (long)up->connect_timeout_ms);
  {
    /* An upstream that goes silent (before its head or mid-body) would hold
     * its fill, and every client that joins it, forever: below one byte a
     * second for the stall bound, the transfer fails. libcurl exempts a
     * paused transfer, so a slow client is not taken for a silent upstream.
     * A fetch may bound it tighter (a mirror, with another source behind). */
    uint64_t stall = req->stall_timeout_ms > 0 ? req->stall_timeout_ms : up->stall_timeout_ms;
    if (stall > 0) {
      SETOPT(CURLOPT_LOW_SPEED_LIMIT, 1L);
      SETOPT(CURLOPT_LOW_SPEED_TIME, (long)(stall < 1000 ? 1 : (stall + 999) / 1000));
    }
  }

  /* The proxy decision is the caller's alone: CURLOPT_PROXY "" means direct,
   * and a non-NULL CURLOPT_NOPROXY keeps libcurl from reading $NO_PROXY
   * (with NULL it would, and drop the proxy for listed hosts). */
  SETOPT(CURLOPT_PROXY, req->proxy != NULL ? req->proxy : "");
  SETOPT(CURLOPT_NOPROXY, "");
  if (req->proxy != NULL && req->proxy[0] != '\0') {
    SETOPT(CURLOPT_HTTPPROXYTUNNEL, is_https ? 1L : 0L);
    SETOPT(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    if (req->proxy_userinfo != NULL) {
      const char *colon = strchr(req->proxy_userinfo, ':');
      size_t ulen = colon ? (size_t)(colon - req->proxy_userinfo) : strlen(req->proxy_userinfo);
      f->proxy_user = strndup(req->proxy_userinfo, ulen);
      f->proxy_pass = strdup(colon ? colon + 1 : "");
      if (f->proxy_user == NULL || f->proxy_pass == NULL) {
        rc = RP_ENOMEM;
        goto out;
      }
      SETOPT(CURLOPT_PROXYUSERNAME, f->proxy_user);
      SETOPT(CURLOPT_PROXYPASSWORD, f->proxy_pass);
      SETOPT(CURLOPT_PROXYAUTH, (long)CURLAUTH_BASIC);
    }
  }
  if (req->connect_ip[0] != '\0') {
    rc = fetch_connect_to(f, req);
    if (rc != 0)
      goto out;
    SETOPT(CURLOPT_CONNECT_TO, f->connect_to);
  } else if (up->connect_to != NULL) {
    SETOPT(CURLOPT_CONNECT_TO, up->connect_to);
  }

  /* Trust: our shared store replaces whatever libcurl would load. */
  SETOPT(CURLOPT_CAINFO, NULL);
  SETOPT(CURLOPT_CAPATH, NULL);
  SETOPT(CURLOPT_PROXY_CAINFO, NULL);
  SETOPT(CURLOPT_PROXY_CAPATH, NULL);
  rc = pick_certsd(f, req->url);
  if (rc != 0)
    goto out;
  if (f->host != NULL && f->host->ca_pem != NULL) {
    /* Only the reuse key: libcurl compares blobs when it looks for a pooled
     * connection, so one verified with other CAs is never reused after a
     * reload. The store set in on_ssl_ctx already holds these CAs. */
    struct curl_blob blob = {f->host->ca_pem, f->host->ca_pem_len, CURL_BLOB_COPY};
    SETOPT(CURLOPT_CAINFO_BLOB, &blob);
  }
  if (f->host != NULL && f->host->cert_file != NULL) {
    struct curl_blob cert = {f->host->cert_pem, f->host->cert_pem_len, CURL_BLOB_COPY};
    struct curl_blob key = {f->host->key_pem, f->host->key_pem_len, CURL_BLOB_COPY};
    SETOPT(CURLOPT_SSLCERT_BLOB, &cert);
    SETOPT(CURLOPT_SSLCERTTYPE, "PEM");
    SETOPT(CURLOPT_SSLKEY_BLOB, &key);
    SETOPT(CURLOPT_SSLKEYTYPE, "PEM");
  }
  SETOPT(CURLOPT_SSL_CTX_FUNCTION, on_ssl_ctx);
  SETOPT(CURLOPT_SSL_CTX_DATA, f);
  SETOPT(CURLOPT_SSL_VERIFYPEER, 1L);
  SETOPT(CURLOPT_SSL_VERIFYHOST, 2L);
  if (up->mark != 0) {
    SETOPT(CURLOPT_SOCKOPTFUNCTION, on_sockopt);
    SETOPT(CURLOPT_SOCKOPTDATA, up);
  }

  if (f->forbid_internal) {
    SETOPT(CURLOPT_OPENSOCKETFUNCTION, on_opensocket);
    SETOPT(CURLOPT_OPENSOCKETDATA, f);
    SETOPT(CURLOPT_PREREQFUNCTION, on_prereq);
    SETOPT(CURLOPT_PREREQDATA, f);
    if (f->proxied) {
      rc = check_proxied_url(f, req->url);
      if (rc != 0)
        goto out;
    }
  }

  if (f->follow) {
    SETOPT(CURLOPT_FOLLOWLOCATION, 1L);
    SETOPT(CURLOPT_MAXREDIRS, (long)MAX_REDIRECTS);
    SETOPT(CURLOPT_UNRESTRICTED_AUTH, 0L);
  } else {
    SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
  }

  if (is_head) {
    SETOPT(CURLOPT_NOBODY, 1L);
  } else if (has_body) {
    SETOPT(CURLOPT_UPLOAD, 1L);
    SETOPT(CURLOPT_INFILESIZE_LARGE, (curl_off_t)(req->body_len < 0 ? -1 : req->body_len));
    SETOPT(CURLOPT_READFUNCTION, on_read);
    SETOPT(CURLOPT_READDATA, f);
    if (strcmp(method, "PUT") != 0)
      SETOPT(CURLOPT_CUSTOMREQUEST, method);
  } else {
    SETOPT(CURLOPT_HTTPGET, 1L);
    if (strcmp(method, "GET") != 0)
      SETOPT(CURLOPT_CUSTOMREQUEST, method);
  }
  SETOPT(CURLOPT_HEADERFUNCTION, on_header);
  SETOPT(CURLOPT_HEADERDATA, f);
  SETOPT(CURLOPT_WRITEFUNCTION, on_write);
  SETOPT(CURLOPT_WRITEDATA, f);

  rc = build_headers(f, req, method);
  if (rc != 0)
    goto out;
  SETOPT(CURLOPT_HTTPHEADER, f->headers);
out:
  return rc;
}

struct rp_fetch *rp_fetch_start(struct rp_upstream *up, const struct rp_fetch_req *req,
                                const struct rp_fetch_callbacks *cb, void *data) {
  struct rp_fetch *f = NULL;
  if (up == NULL || up->destroying || req == NULL || req->url == NULL || cb == NULL)
    return NULL;
  if (req->method != NULL && (req->method[0] == '\0' || has_ctl(req->method, strlen(req->method)) ||
                              strchr(req->method, ' ') != NULL))
    return NULL;
  f = calloc(1, sizeof(*f));
  if (f == NULL)
    return NULL;
  f->up = up;
  f->cb = *cb;
  f->data = data;
  f->serial = ++up->next_serial;
  f->trust = rp__trust_ref(up->trust);
  f->easy = curl_easy_init();
  if (f->easy == NULL || setup_easy(f, req) != 0)
    goto fail;
  f->next = up->fetches;
  if (up->fetches != NULL)
    up->fetches->prev = f;
  up->fetches = f;
  if (up->depth > 0) {
    f->add_pending = 1;
    return f;
  }
  if (curl_multi_add_handle(up->multi, f->easy) != CURLM_OK) {
    fetch_free(f);
    return NULL;
  }
  f->added = 1;
  return f;
fail:
  if (f->easy != NULL)
    curl_easy_cleanup(f->easy);
  curl_slist_free_all(f->headers);
  curl_slist_free_all(f->connect_to);
  rp_upstream_trust_release(f->trust);
  free(f->proxy_user);
  free(f->proxy_pass);
  free(f);
  return NULL;
}

void rp_fetch_pause(struct rp_fetch *f) {
  if (f == NULL || f->cancelled)
    return;
  /* Lazy: the next on_write returns CURL_WRITEFUNC_PAUSE without calling
   * on_body, which makes libcurl stop reading the socket. */
  f->recv_paused = 1;
}

void rp_fetch_resume(struct rp_fetch *f) {
  if (f == NULL || f->cancelled || !f->recv_paused)
    return;
  f->recv_paused = 0;
  if (f->curl_recv_paused)
    schedule_unpause(f);
}

void rp_fetch_resume_upload(struct rp_fetch *f) {
  if (f == NULL || f->cancelled)
    return;
  f->send_paused = 0;
  if (f->curl_send_paused)
    schedule_unpause(f);
}

void rp_fetch_cancel(struct rp_fetch *f) {
  if (f == NULL || f->cancelled)
    return;
  f->cancelled = 1;
  if (f->finishing)
    return; /* inside on_done: freed when it returns */
  if (f->up->depth > 0)
    return; /* inside libcurl: freed by process_pending */
  fetch_free(f);
}

int rp_fetch_peer_ip(struct rp_fetch *f, char *buf, size_t bufsz) {
  char *ip = NULL;
  if (f == NULL || f->easy == NULL || f->proxied ||
      curl_easy_getinfo(f->easy, CURLINFO_PRIMARY_IP, &ip) != CURLE_OK || ip == NULL ||
      ip[0] == '\0' || strlen(ip) >= bufsz)
    return UV_ENOENT;
  memcpy(buf, ip, strlen(ip) + 1);
  return 0;
}

/* ---- the engine ------------------------------------------------------------ */

static void on_engine_handle_close(uv_handle_t *h) {
  struct rp_upstream *up = h->data;
  if (--up->nclosing == 0 && up->destroying)
    free(up);
}

int rp_upstream_create(uv_loop_t *loop, const struct rp_upstream_opts *opts,
                       struct rp_upstream **out) {
  int rc = 0;
  struct rp_upstream *up = NULL;
  int global = 0, timer = 0, idle = 0;
  char line[600];
  if (loop == NULL || opts == NULL || out == NULL)
    return RP_EINVAL;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    return RP_ENOMEM;
  global = 1;
  up = calloc(1, sizeof(*up));
  if (up == NULL) {
    rc = RP_ENOMEM;
    goto fail;
  }
  up->loop = loop;
  up->connect_timeout_ms = opts->connect_timeout_ms;
  up->stall_timeout_ms = opts->stall_timeout_ms;
  up->mark = opts->mark;
  if (opts->trust != NULL) {
    up->trust = rp__trust_ref(opts->trust);
  } else {
    struct rp_upstream_trust_opts to;
    char *err = NULL;
    memset(&to, 0, sizeof(to));
    to.ca_file = opts->ca_file;
    rc = rp_upstream_trust_load(&to, &up->trust, &err);
    if (rc != 0) {
      rp_log_error("upstream: %s", err != NULL ? err : rp_strerror(rc));
      free(err);
      goto fail;
    }
  }
  for (size_t i = 0; i < opts->n_connect_to; i++) {
    rc = format_connect_to(&opts->connect_to[i], line, sizeof(line));
    if (rc != 0)
      goto fail;
    struct curl_slist *l = curl_slist_append(up->connect_to, line);
    if (l == NULL) {
      rc = RP_ENOMEM;
      goto fail;
    }
    up->connect_to = l;
  }
  up->multi = curl_multi_init();
  if (up->multi == NULL) {
    rc = RP_ENOMEM;
    goto fail;
  }
  if (curl_multi_setopt(up->multi, CURLMOPT_SOCKETFUNCTION, on_socket) != CURLM_OK ||
      curl_multi_setopt(up->multi, CURLMOPT_SOCKETDATA, up) != CURLM_OK ||
      curl_multi_setopt(up->multi, CURLMOPT_TIMERFUNCTION, on_timer) != CURLM_OK ||
      curl_multi_setopt(up->multi, CURLMOPT_TIMERDATA, up) != CURLM_OK ||
      curl_multi_setopt(up->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING) != CURLM_OK) {
    rc = RP_EINVAL;
    goto fail;
  }
  rc = uv_timer_init(loop, &up->timer);
  if (rc != 0)
    goto fail;
  timer = 1;
  up->timer.data = up;
  rc = uv_idle_init(loop, &up->idle);
  if (rc != 0)
    goto fail;
  idle = 1;
  up->idle.data = up;
  *out = up;
  return 0;
fail:
  if (up != NULL) {
    if (up->multi != NULL)
      curl_multi_cleanup(up->multi);
    curl_slist_free_all(up->connect_to);
    rp_upstream_trust_release(up->trust);
    if (timer || idle) {
      /* The handles are initialised: free up in their close callbacks. */
      up->destroying = 1;
      up->nclosing += timer + idle;
      if (timer)
        uv_close((uv_handle_t *)&up->timer, on_engine_handle_close);
      if (idle)
        uv_close((uv_handle_t *)&up->idle, on_engine_handle_close);
    } else {
      free(up);
    }
  }
  if (global)
    curl_global_cleanup();
  return rc;
}

void rp_upstream_destroy(struct rp_upstream *up) {
  if (up == NULL || up->destroying)
    return;
  up->destroying = 1;
  up->nclosing += 2; /* timer + idle; poll handles count themselves */
  while (up->fetches != NULL) {
    up->fetches->cancelled = 1;
    fetch_free(up->fetches);
  }
  curl_multi_cleanup(up->multi);
  up->multi = NULL;
  while (up->polls != NULL)
    poll_ctx_close(up->polls);
  curl_slist_free_all(up->connect_to);
  rp_upstream_trust_release(up->trust);
  up->connect_to = NULL;
  up->trust = NULL;
  uv_close((uv_handle_t *)&up->timer, on_engine_handle_close);
  uv_close((uv_handle_t *)&up->idle, on_engine_handle_close);
  curl_global_cleanup();
}

void rp_upstream_set_trust(struct rp_upstream *up, struct rp_upstream_trust *t) {
  if (up == NULL || t == NULL || up->destroying)
    return;
  rp__trust_ref(t);
  rp_upstream_trust_release(up->trust);
  up->trust = t;
}

uv_loop_t *rp_upstream_loop(const struct rp_upstream *up) {
  return up->loop;
}
