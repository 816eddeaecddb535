/* The pass-through: the client's request goes to the registry as it came
 * (end-to-end headers, its body streamed from the exchange), and the
 * registry's answer comes back through the exchange, paced by it. What the
 * answer tells (a 2xx confirms the credential, a tag's digest) is noted on
 * the way (memory.c); a failing registry is answered from memory where
 * contract §3 allows. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "regproxy/log.h"
#include "regproxy/net.h"

int rp__relay_head(struct rp_fetch *f, void *data, int status, const char *reason,
                   const struct rp_http_header *headers, size_t n) {
  struct rp__rq *rq = data;
  struct rp_http_head up = {.headers = (struct rp_http_header *)headers, .nheaders = n};
  struct rp_http_header *h;
  size_t nh = 0;
  int rc;

  (void)f;
  (void)reason;
  if (status == 429 || status == 503) {
    unsigned char key[16];
    rp__wait_key(rq, key);
    rp__note_retry_after(rq->reg, rq->registry, key, status, headers, n);
  }
  if ((status >= 500 || status == 429) && rp__can_stale(rq)) {
    rq->stale_pending = true;
    return -1; /* the answer comes from memory once the fetch is gone */
  }
  /* The end-to-end headers go to the client as they came; the length and
   * the framing are the exchange's. */
  h = malloc((n + 1) * sizeof(*h));
  if (h == NULL)
    return -1;
  for (size_t i = 0; i < n; i++)
    if (!rp_http_is_hop_by_hop(&up, &headers[i]) &&
        !rp_http_token_eq(headers[i].name, headers[i].name_len, "content-length"))
      h[nh++] = headers[i];
  if (rq->way == RP_REGISTRY_MIRROR && status == 401)
    rp__mirror_unauthorized(rq);
  rp__observe(rq, status, headers, n);
  rc = rp__rq_start(rq, status, h, nh, rp_http_header_size(headers, n, "content-length"));
  free(h);
  return rc == 0 ? 0 : -1;
}

static void block_written(void *arg, int status) {
  (void)status;
  rp_buf_free(arg);
}

int rp__relay_body(struct rp_fetch *f, void *data, const char *p, size_t n) {
  struct rp__rq *rq = data;
  struct rp_sink *body;

  (void)f;
  if (rp_exchange_queued(rq->x) > RP_EXCHANGE_HIGH) {
    rq->fetch_paused = true;
    return RP_FETCH_PAUSE; /* offered again after rp_fetch_resume */
  }
  rp__grab_body(rq, p, n);
  /* libcurl reuses its buffer after we return, so the bytes are copied, into
   * pool blocks rather than fresh allocations of varying size (which made
   * glibc's heap grow with every body relayed). */
  body = rp_exchange_body(rq->x);
  while (n > 0) {
    char *block = rp_buf_alloc();
    size_t take = n < RP_BUF_SIZE ? n : RP_BUF_SIZE;
    uv_buf_t buf;

    if (block == NULL)
      return -1;
    memcpy(block, p, take);
    buf = uv_buf_init(block, (unsigned)take);
    if (body->write(body, &buf, 1, block_written, block) != 0) {
      rp_buf_free(block);
      return -1;
    }
    rq->reg->counters.bytes_from_upstream += take;
    p += take;
    n -= take;
  }
  return 0;
}

static ssize_t on_fetch_read(struct rp_fetch *f, void *data, char *buf, size_t n) {
  struct rp__rq *rq = data;
  ssize_t got = rp_exchange_read(rq->x, buf, n);

  (void)f;
  if (got == RP_EXCHANGE_AGAIN) {
    rq->body_waiting = true;
    return RP_FETCH_PAUSE;
  }
  return got < 0 ? -1 : got;
}

void rp__relay_done(struct rp_fetch *f, void *data, int status, const char *reason) {
  struct rp__rq *rq = data;

  (void)f;
  rq->fetch = NULL;
  rp__grab_done(rq, status);
  if (rq->stale_pending) {
    rq->stale_pending = false;
    if (!rp__answer_from_memory(rq, "stale", true))
      rp_exchange_error(rq->x, 502, "upstream failing and nothing remembered", true);
    return;
  }
  if (status != 0) {
    rq->reg->counters.upstream_errors++;
    rp__rq_reason(rq, reason);
    /* Unreachable (refused, reset, DNS, timeout) may be answered from memory;
     * a certificate that does not verify may not. */
    if (rq->answered) {
      rp_exchange_abort(rq->x, reason); /* a cut body, never a wrong one */
    } else if (status == RP_EUPSTREAM_HANDSHAKE && rq->way == RP_REGISTRY_TLS) {
      /* The origin does not speak TLS (or refused the handshake): the client
       * sees its connection fail, as it would have through a tunnel, rather
       * than an answer. (dockerd then falls back to http:// for an insecure
       * registry; a 502 inside TLS made it give up.) */
      rp_exchange_abort(rq->x, reason);
    } else if (status == RP_EUPSTREAM_TLS || status == RP_EUPSTREAM_HANDSHAKE ||
               !rp__answer_from_memory(rq, "stale", true)) {
      rp_exchange_error(rq->x, 502, reason, true);
    }
    return;
  }
  rp_exchange_finish(rq->x);
}

static const struct rp_fetch_callbacks relay_callbacks = {
    .on_head = rp__relay_head,
    .on_body = rp__relay_body,
    .read_body = on_fetch_read,
    .on_done = rp__relay_done,
};

static const struct rp_fetch_callbacks relay_callbacks_nobody = {
    .on_head = rp__relay_head,
    .on_body = rp__relay_body,
    .read_body = NULL,
    .on_done = rp__relay_done,
};

void rp__relay(struct rp__rq *rq) {
  struct rp__upreq u;

  if (rq->reg->up == NULL) {
    rp_exchange_error(rq->x, 502, "stopping", true);
    return;
  }
  if (rp__upreq_build(rq, rq->method, false, NULL, &u) != 0) {
    rp_exchange_error(rq->x, 502, "out of memory", true);
    return;
  }
  rq->fetch = rp_fetch_start(rq->reg->up, &u.req,
                             u.req.body_len != 0 ? &relay_callbacks : &relay_callbacks_nobody, rq);
  rp__upreq_free(&u);
  if (rq->fetch == NULL)
    rp_exchange_error(rq->x, 502, "out of memory", true);
}

void rp__relay_drained(struct rp__rq *rq) {
  if (rq->fetch_paused && rq->fetch != NULL && rp_exchange_queued(rq->x) <= RP_EXCHANGE_LOW) {
    rq->fetch_paused = false;
    rp_fetch_resume(rq->fetch);
  }
}

void rp__relay_body_ready(struct rp__rq *rq) {
  if (rq->body_waiting && rq->fetch != NULL) {
    rq->body_waiting = false;
    rp_fetch_resume_upload(rq->fetch);
  }
}

void rp__relay_detach(struct rp__rq *rq) {
  rp__grab_done(rq, RP_EABORTED);
  if (rq->fetch != NULL)
    rp_fetch_cancel(rq->fetch);
  rq->fetch = NULL;
}
