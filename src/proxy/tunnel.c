/* CONNECT routed to a tunnel (route.c): dial the target (directly or
 * through the parent proxy), answer 200 once connected, then relay bytes
 * both ways with backpressure and half-close.
 *
 * The relay starts with reads into pool blocks and writes from them. Once a
 * tunnel has moved RP_SPLICE_AFTER bytes and both ends are plain TCP, it
 * stops reading, waits for its queued writes to complete and hands both
 * sockets to a splice(2) relay (net/splice.c): bulk bytes then never reach
 * user space. Small and idle tunnels never pay for the pipes and dups. */
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/metrics.h"
#include "regproxy/rules.h"

static const char established[] = "HTTP/1.1 200 Connection established\r\n\r\n";

/* Bytes a tunnel relays through pool blocks before it asks for splice. */
#define RP_SPLICE_AFTER (256 * 1024)

static void on_tunnel_read(struct rp_stream *s, ssize_t nread, char *block);
static void tunnel_maybe_close(struct rp_conn *c);

static struct rp_stream *other_side(struct rp_conn *c, struct rp_stream *s) {
  return s == c->client ? c->upstream : c->client;
}

static int *paused_flag(struct rp_conn *c, struct rp_stream *s) {
  return s == c->client ? &c->client_paused : &c->up_paused;
}

/* REGPROXY_NO_SPLICE=1 keeps every tunnel on read/write (for comparisons);
 * read once, from the environment the server was started with. */
static bool splice_allowed(const struct rp_server *srv) {
  static int allowed = -1;
  if (allowed < 0) {
    allowed = 1;
    for (char **e = srv->envp; e != NULL && *e != NULL; e++)
      if (strncmp(*e, "REGPROXY_NO_SPLICE=", 19) == 0 && strcmp(*e + 19, "") != 0 &&
          strcmp(*e + 19, "0") != 0)
        allowed = 0;
  }
  return allowed == 1;
}

static void relay_resume(struct rp_conn *c) {
  /* Back to read/write with nothing queued: read every side not at EOF. */
  c->client_paused = 0;
  c->up_paused = 0;
  c->client_reading = !c->client_eof && rp_stream_read_start(c->client) == 0;
  c->up_reading = !c->up_eof && rp_stream_read_start(c->upstream) == 0;
}

static const char *side_name(int side) {
  return side == 0 ? "client" : "upstream";
}

/* n bytes read from the client (from_client) or the upstream side, by
 * either relay. */
static void count_read(struct rp_conn *c, bool from_client, size_t n) {
  rp__conn_touch(c);
  if (from_client) {
    c->log.bytes_in += n;
    rp_metrics.bytes[0][RP_SRC_BYTES_TUNNEL] += n;
  } else {
    rp_metrics.bytes[1][RP_SRC_BYTES_TUNNEL] += n;
  }
}

static void on_splice_read(void *data, int from, size_t n) {
  count_read(data, from == 0, n);
}

static void on_splice_write(void *data, int to, size_t n) {
  struct rp_conn *c = data;
  /* Bytes leaving count as activity, as in on_conn_write. */
  rp__conn_touch(c);
  if (to == 0 && c->req_active)
    c->log.bytes_out += n;
}

static void on_splice_eof(void *data, int from) {
  struct rp_conn *c = data;
  rp_log_debug("conn=%llu tunnel: EOF from %s", (unsigned long long)c->id, side_name(from));
  if (from == 0) {
    c->client_eof = 1;
    c->up_shut = 1;
  } else {
    c->up_eof = 1;
    c->client_shut = 1;
  }
  tunnel_maybe_close(c);
}

static void on_splice_error(void *data, int side, int err, bool writing, bool fallback) {
  struct rp_conn *c = data;
  if (fallback) {
    rp_log_debug("conn=%llu tunnel: splice refused (%s), relay=copy", (unsigned long long)c->id,
                 uv_strerror(err));
    rp__tunnel_destroy(c);
    c->splice_off = 1;
    relay_resume(c);
    return;
  }
  if (c->log.reason[0] == '\0') {
    if (writing)
      snprintf(c->log.reason, sizeof(c->log.reason), "write to %s failed: %s", side_name(side),
               uv_strerror(err));
    else
      snprintf(c->log.reason, sizeof(c->log.reason), "%s: %s", side_name(side), uv_strerror(err));
  }
  rp__conn_close(c);
}

static const struct rp_splice_cbs splice_cbs = {
    .on_read = on_splice_read,
    .on_write = on_splice_write,
    .on_eof = on_splice_eof,
    .on_error = on_splice_error,
};

/* Nothing is queued on either stream any more: hand the sockets over. */
static void splice_takeover(struct rp_conn *c) {
  int rc;

  c->splice_pending = 0;
  rc =
      rp_splice_start(c->client, c->upstream, c->client_eof, c->up_eof, &splice_cbs, c, &c->splice);
  if (rc != 0) {
    rp_log_debug("conn=%llu tunnel: no splice (%s), relay=copy", (unsigned long long)c->id,
                 uv_strerror(rc));
    c->splice = NULL;
    c->splice_off = 1;
    relay_resume(c);
    return;
  }
  rp_log_debug("conn=%llu tunnel: relay=splice after %llu bytes", (unsigned long long)c->id,
               (unsigned long long)c->relay_bytes);
}

/* Enough bytes went through read/write: stop reading and switch once the
 * writes in flight have completed (rp__tunnel_drained). A side's EOF is
 * fine once its shutdown of the other stream has completed; while one is
 * pending the next read tries again. An end that is not a plain socket
 * (TLS, in-memory) keeps the tunnel on read/write. */
static void splice_maybe(struct rp_conn *c) {
  int fd;
  if (c->splice_off || c->splice_pending || c->relay_bytes < RP_SPLICE_AFTER)
    return;
  if (!splice_allowed(c->srv) || rp_tcp_stream_fd(c->client, &fd) != 0 ||
      rp_tcp_stream_fd(c->upstream, &fd) != 0) {
    c->splice_off = 1;
    return;
  }
  if ((c->client_eof && !c->up_shut) || (c->up_eof && !c->client_shut))
    return;
  c->splice_pending = 1;
  rp_stream_read_stop(c->client);
  rp_stream_read_stop(c->upstream);
  c->client_reading = 0;
  c->up_reading = 0;
}

void rp__tunnel_destroy(struct rp_conn *c) {
  rp_splice_destroy(c->splice);
  c->splice = NULL;
}

static void tunnel_start(struct rp_conn *c) {
  uv_buf_t buf = uv_buf_init((char *)established, sizeof(established) - 1);
  int rc;

  rp__conn_go_state(c, RP_CONN_TUNNEL);
  rp_metrics.tunnels_active++;
  c->log.status = 200;
  /* A transparent client never asked for a tunnel: it gets no answer. */
  rc = c->transparent ? 0 : rp__conn_write(c, c->client, &buf, 1, NULL, NULL);
  /* Bytes the client sent right behind its CONNECT head belong upstream
   * (transparent: everything it sent while we peeked). */
  if (rc == 0 && c->in != NULL && c->in_off < c->in_len) {
    buf = uv_buf_init(c->in->block + c->in_off, (unsigned)(c->in_len - c->in_off));
    c->log.bytes_in += c->in_len - c->in_off;
    rc = rp__conn_write(c, c->upstream, &buf, 1, c->in, NULL);
  }
  rp__bref_put(c->in);
  c->in = NULL;
  /* A tunnel has no more HTTP to parse: give the head arena back. */
  rp_http_parser_destroy(c->parser);
  c->parser = NULL;
  rp__server_heap_freed(c->srv);
  if (rc != 0) {
    rp__conn_close(c);
    return;
  }
  c->client->on_read = on_tunnel_read;
  c->upstream->on_read = on_tunnel_read;
  c->client_reading = rp_stream_read_start(c->client) == 0;
  c->up_reading = rp_stream_read_start(c->upstream) == 0;
  rp__conn_set_timer(c, RP_TM_TUNNEL, c->srv->cfg->tunnel_idle_timeout_ms);
}

static void on_dialed(void *data, int status, struct rp_stream *s, const char *reason) {
  struct rp_conn *c = data;
  c->dial = NULL;
  if (status != 0) {
    rp_metrics_upstream_error(status == RP_ETIMEDOUT ? "timeout"
                              : status == RP_EPROXY  ? "proxy"
                                                     : "connect");
    if (c->transparent) {
      /* Not an HTTP client: it sees the connection fail, as it would have. */
      c->log.status = rp__dial_status(status);
      snprintf(c->log.reason, sizeof(c->log.reason), "%s", reason);
      rp__conn_close(c);
      return;
    }
    rp__conn_respond(c, rp__dial_status(status), reason, true);
    return;
  }
  rp__conn_set_upstream(c, s);
  tunnel_start(c);
}

void rp__tunnel_connect(struct rp_conn *c) {
  struct rp_server *srv = c->srv;
  struct rp_dial_req req;

  c->keep_alive = 0;
  rp__conn_go_state(c, RP_CONN_DIAL);
  rp__conn_stop_client(c);
  rp__conn_dial_req(c, &req, c->target.host, c->target.port, c->route.via_parent, true);
  c->dial = rp_dial_start(srv->loop, &req, on_dialed, c);
  if (c->dial == NULL)
    rp__conn_respond(c, 502, "out of memory", true);
}

static void tunnel_maybe_close(struct rp_conn *c) {
  /* Both directions ended and each EOF was passed on (after the queued
   * bytes, which the shutdown waits for). */
  if (c->client_eof && c->up_eof && c->client_shut && c->up_shut)
    rp__conn_close(c);
}

static void on_tunnel_shutdown(struct rp_stream *s, int status) {
  struct rp_conn *c = s->data;
  if (c->closing)
    return;
  if (s == c->client)
    c->client_shut = 1;
  else
    c->up_shut = 1;
  if (status != 0)
    rp__conn_close(c);
  else
    tunnel_maybe_close(c);
}

static void on_tunnel_read(struct rp_stream *s, ssize_t nread, char *block) {
  struct rp_conn *c = s->data;
  struct rp_stream *peer = other_side(c, s);
  struct rp_bref *ref;
  uv_buf_t buf;

  if (nread < 0) {
    if (nread != UV_EOF) {
      if (c->log.reason[0] == '\0')
        snprintf(c->log.reason, sizeof(c->log.reason), "%s: %s",
                 s == c->client ? "client" : "upstream", uv_strerror((int)nread));
      rp__conn_close(c);
      return;
    }
    rp_log_debug("conn=%llu tunnel: EOF from %s", (unsigned long long)c->id,
                 s == c->client ? "client" : "upstream");
    if (s == c->client) {
      c->client_eof = 1;
      c->client_reading = 0;
    } else {
      c->up_eof = 1;
      c->up_reading = 0;
    }
    if (rp_stream_shutdown(peer, on_tunnel_shutdown) != 0)
      rp__conn_close(c);
    return;
  }
  c->relay_bytes += (uint64_t)nread;
  count_read(c, s == c->client, (size_t)nread);
  ref = rp__bref_new(block);
  if (ref == NULL) {
    rp__conn_close(c);
    return;
  }
  buf = uv_buf_init(block, (unsigned)nread);
  if (rp__conn_write(c, peer, &buf, 1, ref, NULL) != 0) {
    rp__bref_put(ref);
    rp__conn_close(c);
    return;
  }
  rp__bref_put(ref);
  splice_maybe(c);
  if (!c->splice_pending && rp__conn_queued(c, peer) > RP_QUEUE_HIGH) {
    rp_stream_read_stop(s);
    *paused_flag(c, s) = 1;
  }
}

void rp__tunnel_drained(struct rp_conn *c, struct rp_stream *s) {
  /* s drained: the side feeding it may read again. */
  struct rp_stream *src = other_side(c, s);
  int *paused = paused_flag(c, src);
  int eof = src == c->client ? c->client_eof : c->up_eof;

  if (c->splice_pending) {
    if (c->client_inflight == 0 && c->up_inflight == 0)
      splice_takeover(c);
    return;
  }
  if (*paused && !eof && rp__conn_queued(c, s) <= RP_QUEUE_LOW) {
    *paused = 0;
    rp_stream_read_start(src);
  }
}
