/* The TCP implementation of struct rp_stream, and the read-buffer pool. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "regproxy/log.h"
#include "regproxy/net.h"

/* Blocks are recycled through a short free list: a busy relay reuses the same
 * few blocks, an idle proxy gives the memory back. */
#define POOL_KEEP 64

struct pool_block {
  struct pool_block *next;
};

static struct pool_block *pool_free;
static unsigned pool_count;

char *rp_buf_alloc(void) {
  struct pool_block *b = pool_free;
  if (b != NULL) {
    pool_free = b->next;
    pool_count--;
    return (char *)b;
  }
  return malloc(RP_BUF_SIZE);
}

void rp_buf_free(char *block) {
  if (block == NULL)
    return;
  if (pool_count >= POOL_KEEP) {
    free(block);
    return;
  }
  struct pool_block *b = (struct pool_block *)(void *)block;
  b->next = pool_free;
  pool_free = b;
  pool_count++;
}

void rp_buf_pool_drain(void) {
  while (pool_free != NULL) {
    struct pool_block *b = pool_free;
    pool_free = b->next;
    free(b);
  }
  pool_count = 0;
}

struct tcp_stream {
  struct rp_stream base;
  uv_tcp_t tcp; /* tcp.data points back at this struct */
  rp_stream_close_cb close_cb;
  rp_stream_shutdown_cb shutdown_cb;
  uv_shutdown_t shutdown_req;
  int closing;
};

struct tcp_write {
  uv_write_t req;
  struct tcp_stream *ts;
  rp_stream_write_cb cb;
  void *arg;
};

uv_tcp_t *rp_tcp_handle_new(uv_loop_t *loop, int family) {
  struct tcp_stream *ts = calloc(1, sizeof(*ts));
  if (ts == NULL)
    return NULL;
  if (uv_tcp_init_ex(loop, &ts->tcp, (unsigned)family) != 0) {
    free(ts);
    return NULL;
  }
  ts->tcp.data = ts;
  return &ts->tcp;
}

static void on_discard_close(uv_handle_t *h) {
  free(h->data);
}

void rp_tcp_handle_discard(uv_tcp_t *tcp) {
  if (tcp != NULL)
    uv_close((uv_handle_t *)tcp, on_discard_close);
}

void rp_tcp_tune(uv_tcp_t *tcp, uint32_t mark) {
  uv_os_fd_t fd;

  uv_tcp_nodelay(tcp, 1);
  if (mark != 0 && uv_fileno((uv_handle_t *)tcp, &fd) == 0) {
#ifdef SO_MARK
    if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0)
      rp_log_warn("SO_MARK %u: %s", mark, uv_strerror(-errno));
#endif
  }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  buf->base = rp_buf_alloc();
  buf->len = buf->base != NULL ? RP_BUF_SIZE : 0;
}

static void on_tcp_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  struct tcp_stream *ts = s->data;
  if (nread == 0) {
    rp_buf_free(buf->base);
    return;
  }
  if (nread < 0) {
    rp_buf_free(buf->base);
    ts->base.on_read(&ts->base, nread, NULL);
    return;
  }
  ts->base.on_read(&ts->base, nread, buf->base);
}

static int tcp_read_start(struct rp_stream *s) {
  struct tcp_stream *ts = (struct tcp_stream *)s;
  if (ts->closing)
    return UV_EINVAL;
  return uv_read_start((uv_stream_t *)&ts->tcp, on_alloc, on_tcp_read);
}

static int tcp_read_stop(struct rp_stream *s) {
  struct tcp_stream *ts = (struct tcp_stream *)s;
  if (ts->closing)
    return 0;
  return uv_read_stop((uv_stream_t *)&ts->tcp);
}

static void on_tcp_write(uv_write_t *req, int status) {
  struct tcp_write *w = (struct tcp_write *)req;
  if (w->cb != NULL)
    w->cb(&w->ts->base, status, w->arg);
  free(w);
}

static int tcp_write(struct rp_stream *s, const uv_buf_t *bufs, unsigned n, rp_stream_write_cb cb,
                     void *arg) {
  struct tcp_stream *ts = (struct tcp_stream *)s;
  struct tcp_write *w;
  int rc;

  if (ts->closing)
    return UV_EPIPE;
  w = malloc(sizeof(*w));
  if (w == NULL)
    return UV_ENOMEM;
  w->ts = ts;
  w->cb = cb;
  w->arg = arg;
  rc = uv_write(&w->req, (uv_stream_t *)&ts->tcp, bufs, n, on_tcp_write);
  if (rc != 0)
    free(w);
  return rc;
}

static void on_tcp_shutdown(uv_shutdown_t *req, int status) {
  struct tcp_stream *ts = req->data;
  rp_stream_shutdown_cb cb = ts->shutdown_cb;
  ts->shutdown_cb = NULL;
  if (cb != NULL)
    cb(&ts->base, status);
}

static int tcp_shutdown(struct rp_stream *s, rp_stream_shutdown_cb cb) {
  struct tcp_stream *ts = (struct tcp_stream *)s;
  if (ts->closing)
    return UV_EPIPE;
  ts->shutdown_cb = cb;
  ts->shutdown_req.data = ts;
  return uv_shutdown(&ts->shutdown_req, (uv_stream_t *)&ts->tcp, on_tcp_shutdown);
}

static void on_tcp_close(uv_handle_t *h) {
  struct tcp_stream *ts = h->data;
  if (ts->close_cb != NULL)
    ts->close_cb(&ts->base);
  free(ts);
}

static void tcp_close(struct rp_stream *s, rp_stream_close_cb cb) {
  struct tcp_stream *ts = (struct tcp_stream *)s;
  if (ts->closing)
    return;
  ts->closing = 1;
  ts->close_cb = cb;
  uv_close((uv_handle_t *)&ts->tcp, on_tcp_close);
}

static size_t tcp_write_queue_size(const struct rp_stream *s) {
  const struct tcp_stream *ts = (const struct tcp_stream *)s;
  return uv_stream_get_write_queue_size((const uv_stream_t *)&ts->tcp);
}

static int tcp_peername(const struct rp_stream *s, struct sockaddr_storage *ss) {
  const struct tcp_stream *ts = (const struct tcp_stream *)s;
  int len = sizeof(*ss);
  return uv_tcp_getpeername(&ts->tcp, (struct sockaddr *)ss, &len);
}

static uv_loop_t *tcp_loop(const struct rp_stream *s) {
  return ((const struct tcp_stream *)s)->tcp.loop;
}

static const struct rp_stream_ops tcp_ops;

int rp_tcp_stream_sockname(const struct rp_stream *s, struct sockaddr_storage *ss) {
  const struct tcp_stream *ts = (const struct tcp_stream *)s;
  int len = sizeof(*ss);
  if (s == NULL || s->ops != &tcp_ops)
    return UV_EINVAL;
  return uv_tcp_getsockname(&ts->tcp, (struct sockaddr *)ss, &len);
}

int rp_tcp_stream_fd(const struct rp_stream *s, int *fd) {
  const struct tcp_stream *ts = (const struct tcp_stream *)s;
  uv_os_fd_t f;
  int rc;

  if (s == NULL || s->ops != &tcp_ops || ts->closing)
    return UV_EINVAL;
  rc = uv_fileno((const uv_handle_t *)&ts->tcp, &f);
  if (rc == 0)
    *fd = f;
  return rc;
}

static const struct rp_stream_ops tcp_ops = {
    .name = "tcp",
    .read_start = tcp_read_start,
    .read_stop = tcp_read_stop,
    .write = tcp_write,
    .shutdown = tcp_shutdown,
    .close = tcp_close,
    .write_queue_size = tcp_write_queue_size,
    .peername = tcp_peername,
    .loop = tcp_loop,
};

struct rp_stream *rp_tcp_stream_wrap(uv_tcp_t *tcp) {
  struct tcp_stream *ts = tcp->data;
  ts->base.ops = &tcp_ops;
  return &ts->base;
}
