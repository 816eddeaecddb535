/* The server side of TLS on top of another rp_stream (MITM), through a
 * memory BIO: ciphertext arrives as the inner stream's read blocks and is
 * handed to OpenSSL without a copy into an intermediate BIO buffer;
 * ciphertext OpenSSL produces is appended to pool blocks that go down with
 * one inner write per flush (the pattern of h2o's lib/common/socket.c).
 *
 * Reading: the inner stream is read while the handshake runs, and after it
 * only while the owner has reading started and nothing is left over, so no
 * more than one inner block of ciphertext (plus OpenSSL's one partial record)
 * is ever held for a stopped reader. What is left over when reading restarts
 * is decrypted from an idle handle on the loop, never from inside
 * read_start.
 *
 * EOF: the peer's close_notify gives UV_EOF; so does a TCP EOF without it (a
 * truncated session), since the HTTP framing above detects a cut message and
 * many clients skip close_notify. Other inner read errors pass through. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "regproxy/log.h"
#include "regproxy/net.h"

/* Plaintext handed to SSL_write per call, and the ciphertext gathered before
 * it goes down to the inner stream: 64 KiB is four full records, and a flush
 * never exceeds FLUSH_AT plus one call's output. */
#define WRITE_CHUNK  (64 * 1024)
#define FLUSH_AT     (256 * 1024)
#define OUT_BLOCKS   8
#define READS_PER_CB 16 /* plaintext blocks delivered per callback */
#define REASON_LEN   256

enum tls_state { TLS_HANDSHAKE, TLS_OPEN, TLS_FAILED, TLS_STATE_LAST };

/* Ciphertext on its way to the inner stream: pool blocks plus, on the last
 * flush of a write, the owner's callback. */
struct cwrite {
  struct tls_stream *ts;
  rp_stream_write_cb cb;
  void *arg;
  unsigned n;
  uv_buf_t bufs[OUT_BLOCKS];
};

/* A write made before the handshake finished: sent once it has. */
struct wreq {
  struct wreq *next;
  rp_stream_write_cb cb;
  void *arg;
  size_t bytes;
  unsigned n;
  uv_buf_t bufs[];
};

struct tls_stream {
  struct rp_stream base;
  struct rp_stream *inner;
  SSL *ssl;
  uv_idle_t idle; /* delivers what is left over after read_start */
  enum tls_state state;
  char *host;
  char *sni;
  char alpn[32];
  rp_tls_select_cb select;
  void *select_arg;
  rp_tls_handshake_cb hs_cb;
  int sni_refused;

  /* Ciphertext in: one inner block at a time. */
  char *in_block;
  size_t in_off, in_len;
  int in_eof;   /* the inner stream's UV_EOF or error, once seen */
  int read_end; /* what ends the plaintext: UV_EOF or an error */
  int eof_delivered;
  int reading;       /* the owner wants plaintext */
  int inner_reading; /* we are reading the inner stream */

  /* Ciphertext out, not yet handed to the inner stream. */
  struct cwrite *out;
  int write_err;

  /* Writes made before the handshake finished. */
  struct wreq *wq_head, **wq_tail;
  size_t wq_bytes;

  rp_stream_shutdown_cb shutdown_cb;
  int shutdown_requested;
  int shutdown_started;

  rp_stream_close_cb close_cb;
  int closing;
  int pending_closes;
};

static BIO_METHOD *bio_method;
static int ex_index = -1;
static CRYPTO_ONCE init_once = CRYPTO_ONCE_STATIC_INIT;

static void pump(struct tls_stream *ts);
static void schedule(struct tls_stream *ts);

/* ---- the BIO between OpenSSL and the inner stream ---- */

static int bio_read(BIO *b, char *out, int len) {
  struct tls_stream *ts = BIO_get_data(b);
  size_t n;

  BIO_clear_retry_flags(b);
  if (len <= 0)
    return 0;
  /* No data is always "retry", even after the inner EOF: the stream decides
   * what an EOF means (a failed handshake, a truncation) rather than OpenSSL. */
  if (ts->in_block == NULL) {
    BIO_set_retry_read(b);
    return -1;
  }
  n = ts->in_len - ts->in_off;
  if (n > (size_t)len)
    n = (size_t)len;
  memcpy(out, ts->in_block + ts->in_off, n);
  ts->in_off += n;
  if (ts->in_off == ts->in_len) {
    rp_buf_free(ts->in_block);
    ts->in_block = NULL;
    ts->in_off = ts->in_len = 0;
  }
  return (int)n;
}

static int bio_write(BIO *b, const char *in, int len) {
  struct tls_stream *ts = BIO_get_data(b);
  size_t left = len > 0 ? (size_t)len : 0;

  BIO_clear_retry_flags(b);
  while (left > 0) {
    struct cwrite *cw = ts->out;
    uv_buf_t *cur;
    size_t room, take;

    if (cw == NULL) {
      cw = calloc(1, sizeof(*cw));
      if (cw == NULL)
        return -1;
      ts->out = cw;
    }
    cur = cw->n > 0 ? &cw->bufs[cw->n - 1] : NULL;
    if (cur == NULL || cur->len == RP_BUF_SIZE) {
      /* Flushes keep a cwrite well below OUT_BLOCKS (see FLUSH_AT). */
      if (cw->n == OUT_BLOCKS)
        return -1;
      cur = &cw->bufs[cw->n];
      cur->base = rp_buf_alloc();
      if (cur->base == NULL)
        return -1;
      cur->len = 0;
      cw->n++;
    }
    room = RP_BUF_SIZE - cur->len;
    take = left < room ? left : room;
    memcpy(cur->base + cur->len, in, take);
    cur->len += take;
    in += take;
    left -= take;
  }
  return len;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)b;
  (void)num;
  (void)ptr;
  switch (cmd) {
  case BIO_CTRL_FLUSH: return 1;
  default: return 0;
  }
}

static int bio_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

static void global_init(void) {
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "rp_tls_stream");
  if (m == NULL)
    return;
  if (BIO_meth_set_read(m, bio_read) != 1 || BIO_meth_set_write(m, bio_write) != 1 ||
      BIO_meth_set_ctrl(m, bio_ctrl) != 1 || BIO_meth_set_create(m, bio_create) != 1) {
    BIO_meth_free(m);
    return;
  }
  ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
  if (ex_index < 0) {
    BIO_meth_free(m);
    return;
  }
  bio_method = m;
}

/* ---- ciphertext out ---- */

static void free_cwrite(struct cwrite *cw) {
  for (unsigned i = 0; i < cw->n; i++)
    rp_buf_free(cw->bufs[i].base);
  free(cw);
}

static void on_inner_write(struct rp_stream *inner, int status, void *arg) {
  struct cwrite *cw = arg;
  struct tls_stream *ts = cw->ts;
  rp_stream_write_cb cb = cw->cb;
  void *cb_arg = cw->arg;

  (void)inner;
  free_cwrite(cw);
  /* A write's callback rides on its last flush; an earlier flush of the same
   * write that failed makes it fail too. */
  if (status != 0 && ts->write_err == 0)
    ts->write_err = status;
  if (cb != NULL)
    cb(&ts->base, status != 0 ? status : ts->write_err, cb_arg);
}

/* Hand the gathered ciphertext to the inner stream; with cb, also when there
 * is none, so that the callback runs after everything before it. */
static int flush_out(struct tls_stream *ts, rp_stream_write_cb cb, void *arg) {
  static char empty[1];
  struct cwrite *cw = ts->out;
  uv_buf_t none = uv_buf_init(empty, 0);
  int rc;

  if (cw == NULL) {
    if (cb == NULL)
      return 0;
    cw = calloc(1, sizeof(*cw));
    if (cw == NULL)
      return UV_ENOMEM;
  }
  ts->out = NULL;
  cw->ts = ts;
  cw->cb = cb;
  cw->arg = arg;
  if (ts->closing || ts->inner == NULL) {
    free_cwrite(cw);
    return UV_EPIPE;
  }
  rc = ts->inner->ops->write(ts->inner, cw->n > 0 ? cw->bufs : &none, cw->n > 0 ? cw->n : 1,
                             on_inner_write, cw);
  if (rc != 0)
    free_cwrite(cw);
  return rc;
}

static size_t out_bytes(const struct tls_stream *ts) {
  size_t n = 0;
  if (ts->out != NULL)
    for (unsigned i = 0; i < ts->out->n; i++)
      n += ts->out->bufs[i].len;
  return n;
}

static void log_ssl_error(const char *what) {
  char reason[REASON_LEN];
  unsigned long e = ERR_peek_error();
  if (e != 0 && rp_log_enabled(RP_LOG_DEBUG)) {
    ERR_error_string_n(e, reason, sizeof(reason));
    rp_log_debug("tls %s: %s", what, reason);
  }
  ERR_clear_error();
}

/* Encrypt bufs and send them down; cb(arg) runs once the inner stream has
 * written the last of it. On error nothing of the callback remains. */
static int encrypt_bufs(struct tls_stream *ts, const uv_buf_t *bufs, unsigned n,
                        rp_stream_write_cb cb, void *arg) {
  int rc;

  for (unsigned i = 0; i < n; i++) {
    size_t off = 0;
    while (off < bufs[i].len) {
      size_t chunk = bufs[i].len - off;
      int r;

      if (chunk > WRITE_CHUNK)
        chunk = WRITE_CHUNK;
      ERR_clear_error();
      r = SSL_write(ts->ssl, bufs[i].base + off, (int)chunk);
      if (r <= 0) {
        log_ssl_error("write");
        /* Records already made still go down; the session is broken anyway. */
        (void)flush_out(ts, NULL, NULL);
        return UV_EPROTO;
      }
      off += (size_t)r;
      if (out_bytes(ts) >= FLUSH_AT) {
        rc = flush_out(ts, NULL, NULL);
        if (rc != 0)
          return rc;
      }
    }
  }
  return flush_out(ts, cb, arg);
}

/* ---- reading ---- */

static void update_inner_reading(struct tls_stream *ts) {
  int want, rc;

  if (ts->closing)
    return;
  want = ts->state != TLS_FAILED && ts->in_block == NULL && ts->in_eof == 0 && ts->read_end == 0 &&
         (ts->state == TLS_HANDSHAKE || ts->reading);
  if (want == ts->inner_reading)
    return;
  rc = want ? ts->inner->ops->read_start(ts->inner) : ts->inner->ops->read_stop(ts->inner);
  if (rc == 0) {
    ts->inner_reading = want;
    return;
  }
  if (want) {
    /* Treated like a read error: it ends the handshake or the plaintext. */
    ts->in_eof = rc;
    schedule(ts);
  }
}

static void on_idle(uv_idle_t *h);

static void schedule(struct tls_stream *ts) {
  if (!ts->closing)
    uv_idle_start(&ts->idle, on_idle);
}

static void on_idle(uv_idle_t *h) {
  struct tls_stream *ts = h->data;
  uv_idle_stop(h);
  pump(ts);
}

/* Decrypt into pool blocks for the owner while it reads; ends on
 * SSL_ERROR_WANT_READ (more ciphertext needed) or at the end of the stream. */
static void deliver(struct tls_stream *ts) {
  for (unsigned rounds = 0; ts->reading && !ts->closing && !ts->eof_delivered; rounds++) {
    char *block;
    size_t got = 0;
    int want_read = 0;

    if (ts->read_end != 0) {
      ts->eof_delivered = 1;
      ts->base.on_read(&ts->base, ts->read_end, NULL);
      return;
    }
    if (rounds == READS_PER_CB) {
      schedule(ts);
      return;
    }
    block = rp_buf_alloc();
    if (block == NULL) {
      ts->read_end = UV_ENOMEM;
      continue;
    }
    while (got < RP_BUF_SIZE) {
      int r, e;

      ERR_clear_error();
      r = SSL_read(ts->ssl, block + got, (int)(RP_BUF_SIZE - got));
      if (r > 0) {
        got += (size_t)r;
        continue;
      }
      e = SSL_get_error(ts->ssl, r);
      if (e == SSL_ERROR_WANT_READ) {
        if (ts->in_eof == 0)
          want_read = 1;
        else
          ts->read_end = ts->in_eof; /* truncated when UV_EOF: see the top */
      } else if (e == SSL_ERROR_ZERO_RETURN) {
        ts->read_end = UV_EOF;
      } else {
        log_ssl_error("read");
        ts->read_end = UV_EPROTO;
      }
      break;
    }
    /* Reading may have produced records to send (alerts, key updates). */
    if (flush_out(ts, NULL, NULL) != 0 && ts->read_end == 0)
      ts->read_end = UV_EPIPE;
    if (got > 0)
      ts->base.on_read(&ts->base, (ssize_t)got, block);
    else
      rp_buf_free(block);
    if (want_read)
      return;
  }
}

/* ---- the handshake ---- */

static int on_servername(SSL *ssl, int *alert, void *arg) {
  struct tls_stream *ts = SSL_get_ex_data(ssl, ex_index);
  const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  SSL_CTX *ctx;

  (void)arg;
  if (ts == NULL)
    return SSL_TLSEXT_ERR_NOACK; /* not one of ours: leave the session alone */
  if (sni != NULL && ts->sni == NULL) {
    ts->sni = strdup(sni);
    if (ts->sni == NULL) {
      *alert = SSL_AD_INTERNAL_ERROR;
      return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
  }
  /* This runs before the certificate is chosen, so the switch below is what
   * gives a base context without a certificate one. */
  ctx = ts->select(ts->select_arg, ts->host, sni);
  if (ctx == NULL) {
    ts->sni_refused = 1;
    *alert = SSL_AD_UNRECOGNIZED_NAME;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  if (SSL_set_SSL_CTX(ssl, ctx) == NULL) {
    SSL_CTX_free(ctx);
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  SSL_CTX_free(ctx); /* the session holds its own reference now */
  return SSL_TLSEXT_ERR_OK;
}

static void on_inner_shutdown(struct rp_stream *inner, int status) {
  struct tls_stream *ts = inner->data;
  rp_stream_shutdown_cb cb = ts->shutdown_cb;

  ts->shutdown_cb = NULL;
  if (cb != NULL)
    cb(&ts->base, status);
}

/* close_notify, then the inner stream's EOF after everything queued. */
static int start_shutdown(struct tls_stream *ts) {
  int r, rc;

  ts->shutdown_started = 1;
  ERR_clear_error();
  r = SSL_shutdown(ts->ssl);
  if (r < 0)
    log_ssl_error("shutdown"); /* no close_notify, but the EOF still goes */
  rc = flush_out(ts, NULL, NULL);
  if (rc != 0)
    return rc;
  return ts->inner->ops->shutdown(ts->inner, on_inner_shutdown);
}

static void do_shutdown(struct tls_stream *ts) {
  int rc = start_shutdown(ts);
  if (rc != 0) {
    rp_stream_shutdown_cb cb = ts->shutdown_cb;
    ts->shutdown_cb = NULL;
    if (cb != NULL)
      cb(&ts->base, rc);
  }
}

static void handshake_failed(struct tls_stream *ts, int status, const char *reason) {
  rp_tls_handshake_cb cb = ts->hs_cb;

  ts->state = TLS_FAILED;
  ts->hs_cb = NULL;
  update_inner_reading(ts);
  if (cb != NULL)
    cb(&ts->base, status, reason);
}

static void handshake_done(struct tls_stream *ts) {
  rp_tls_handshake_cb cb = ts->hs_cb;
  const unsigned char *alpn = NULL;
  unsigned alpn_len = 0;

  ts->state = TLS_OPEN;
  ts->hs_cb = NULL;
  SSL_get0_alpn_selected(ts->ssl, &alpn, &alpn_len);
  if (alpn != NULL && alpn_len < sizeof(ts->alpn)) {
    memcpy(ts->alpn, alpn, alpn_len);
    ts->alpn[alpn_len] = '\0';
  }
  /* Writes and a shutdown the owner made before now go out first, so that
   * whatever the callback writes comes after them. */
  while (!ts->closing && ts->wq_head != NULL) {
    struct wreq *q = ts->wq_head;
    int rc;

    ts->wq_head = q->next;
    if (ts->wq_head == NULL)
      ts->wq_tail = &ts->wq_head;
    ts->wq_bytes -= q->bytes;
    rc = encrypt_bufs(ts, q->bufs, q->n, q->cb, q->arg);
    if (rc != 0 && q->cb != NULL)
      q->cb(&ts->base, rc, q->arg);
    free(q);
  }
  if (!ts->closing && ts->shutdown_requested && !ts->shutdown_started)
    do_shutdown(ts);
  if (!ts->closing && cb != NULL)
    cb(&ts->base, 0, "");
}

static void handshake(struct tls_stream *ts) {
  char reason[REASON_LEN];
  unsigned long err;
  int r, e, rc, status = UV_EPROTO;

  ERR_clear_error();
  r = SSL_do_handshake(ts->ssl);
  e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(ts->ssl, r);
  err = ERR_peek_error();
  /* Send what was made even on failure: the alert tells the client why. */
  rc = flush_out(ts, NULL, NULL);
  if (r == 1 && rc == 0) {
    handshake_done(ts);
    return;
  }
  if (e == SSL_ERROR_WANT_READ && rc == 0 && ts->in_eof == 0)
    return;
  if (ts->sni_refused) {
    snprintf(reason, sizeof(reason), "server name refused: sni=%s host=%s",
             ts->sni != NULL ? ts->sni : "(none)", ts->host != NULL ? ts->host : "(none)");
  } else if (e != SSL_ERROR_WANT_READ && err != 0) {
    ERR_error_string_n(err, reason, sizeof(reason));
  } else if (rc != 0) {
    status = rc;
    snprintf(reason, sizeof(reason), "write failed during handshake: %s", uv_strerror(rc));
  } else if (ts->in_eof == UV_EOF) {
    status = UV_EOF;
    snprintf(reason, sizeof(reason), "client closed during handshake");
  } else if (ts->in_eof != 0) {
    status = ts->in_eof;
    snprintf(reason, sizeof(reason), "read failed during handshake: %s", uv_strerror(ts->in_eof));
  } else {
    snprintf(reason, sizeof(reason), "handshake failed (SSL error %d)", e);
  }
  ERR_clear_error();
  handshake_failed(ts, status, reason);
}

static void pump(struct tls_stream *ts) {
  if (ts->closing)
    return;
  if (ts->state == TLS_HANDSHAKE)
    handshake(ts);
  if (!ts->closing && ts->state == TLS_OPEN)
    deliver(ts);
  update_inner_reading(ts);
}

static void on_inner_read(struct rp_stream *inner, ssize_t nread, char *block) {
  struct tls_stream *ts = inner->data;

  if (ts->closing) {
    rp_buf_free(block);
    return;
  }
  if (nread < 0) {
    ts->in_eof = (int)nread;
  } else {
    /* Inner reading stops whenever a block is left over (update_inner_reading). */
    assert(ts->in_block == NULL);
    ts->in_block = block;
    ts->in_off = 0;
    ts->in_len = (size_t)nread;
  }
  pump(ts);
}

/* ---- the stream functions ---- */

static int tls_read_start(struct rp_stream *s) {
  struct tls_stream *ts = (struct tls_stream *)s;

  if (ts->closing)
    return UV_EINVAL;
  ts->reading = 1;
  if (ts->state != TLS_OPEN)
    return 0; /* the handshake reads on its own; plaintext follows it */
  if (ts->in_block != NULL || ts->in_eof != 0 || ts->read_end != 0 || SSL_has_pending(ts->ssl))
    schedule(ts);
  else
    update_inner_reading(ts);
  return 0;
}

static int tls_read_stop(struct rp_stream *s) {
  struct tls_stream *ts = (struct tls_stream *)s;

  if (ts->closing)
    return 0;
  /* A scheduled idle stays: it finds nothing to deliver, or it reports a
   * handshake that could not read. */
  ts->reading = 0;
  update_inner_reading(ts);
  return 0;
}

static int tls_write(struct rp_stream *s, const uv_buf_t *bufs, unsigned n, rp_stream_write_cb cb,
                     void *arg) {
  struct tls_stream *ts = (struct tls_stream *)s;
  struct wreq *q;

  if (ts->closing || ts->shutdown_requested)
    return UV_EPIPE;
  if (ts->state == TLS_FAILED)
    return UV_EPROTO;
  if (ts->state == TLS_OPEN)
    return encrypt_bufs(ts, bufs, n, cb, arg);
  q = malloc(sizeof(*q) + (size_t)n * sizeof(q->bufs[0]));
  if (q == NULL)
    return UV_ENOMEM;
  q->next = NULL;
  q->cb = cb;
  q->arg = arg;
  q->n = n;
  q->bytes = 0;
  for (unsigned i = 0; i < n; i++) {
    q->bufs[i] = bufs[i];
    q->bytes += bufs[i].len;
  }
  *ts->wq_tail = q;
  ts->wq_tail = &q->next;
  ts->wq_bytes += q->bytes;
  return 0;
}

static int tls_shutdown(struct rp_stream *s, rp_stream_shutdown_cb cb) {
  struct tls_stream *ts = (struct tls_stream *)s;
  int rc;

  if (ts->closing)
    return UV_EPIPE;
  if (ts->shutdown_requested)
    return UV_EALREADY;
  if (ts->state == TLS_FAILED)
    return UV_ENOTCONN;
  ts->shutdown_requested = 1;
  ts->shutdown_cb = cb;
  if (ts->state == TLS_HANDSHAKE)
    return 0; /* after the handshake and the writes queued before it */
  rc = start_shutdown(ts);
  if (rc != 0)
    ts->shutdown_cb = NULL; /* an error returned here means no callback */
  return rc;
}

static void finish_close(struct tls_stream *ts) {
  rp_stream_close_cb cb = ts->close_cb;

  /* Callbacks the owner is owed run before the stream is gone. */
  while (ts->wq_head != NULL) {
    struct wreq *q = ts->wq_head;
    ts->wq_head = q->next;
    if (q->cb != NULL)
      q->cb(&ts->base, UV_ECANCELED, q->arg);
    free(q);
  }
  if (ts->shutdown_cb != NULL) {
    rp_stream_shutdown_cb scb = ts->shutdown_cb;
    ts->shutdown_cb = NULL;
    scb(&ts->base, UV_ECANCELED);
  }
  rp_buf_free(ts->in_block);
  if (ts->out != NULL)
    free_cwrite(ts->out);
  SSL_free(ts->ssl); /* and the BIO */
  free(ts->host);
  free(ts->sni);
  if (cb != NULL)
    cb(&ts->base);
  free(ts);
}

static void on_inner_close(struct rp_stream *inner) {
  struct tls_stream *ts = inner->data;
  ts->inner = NULL;
  if (--ts->pending_closes == 0)
    finish_close(ts);
}

static void on_idle_close(uv_handle_t *h) {
  struct tls_stream *ts = h->data;
  if (--ts->pending_closes == 0)
    finish_close(ts);
}

static void tls_close(struct rp_stream *s, rp_stream_close_cb cb) {
  struct tls_stream *ts = (struct tls_stream *)s;

  if (ts->closing)
    return;
  ts->closing = 1;
  ts->close_cb = cb;
  ts->reading = 0;
  ts->pending_closes = 2;
  uv_close((uv_handle_t *)&ts->idle, on_idle_close);
  ts->inner->ops->close(ts->inner, on_inner_close);
}

static size_t tls_write_queue_size(const struct rp_stream *s) {
  const struct tls_stream *ts = (const struct tls_stream *)s;
  size_t n = ts->wq_bytes + out_bytes(ts);
  if (ts->inner != NULL)
    n += ts->inner->ops->write_queue_size(ts->inner);
  return n;
}

static int tls_peername(const struct rp_stream *s, struct sockaddr_storage *ss) {
  const struct tls_stream *ts = (const struct tls_stream *)s;
  if (ts->inner == NULL)
    return UV_ENOTCONN;
  return ts->inner->ops->peername(ts->inner, ss);
}

static uv_loop_t *tls_loop(const struct rp_stream *s) {
  const struct tls_stream *ts = (const struct tls_stream *)s;
  return ts->idle.loop;
}

static const struct rp_stream_ops tls_ops = {
    .name = "tls",
    .read_start = tls_read_start,
    .read_stop = tls_read_stop,
    .write = tls_write,
    .shutdown = tls_shutdown,
    .close = tls_close,
    .write_queue_size = tls_write_queue_size,
    .peername = tls_peername,
    .loop = tls_loop,
};

const char *rp_tls_stream_sni(const struct rp_stream *s) {
  if (s == NULL || s->ops != &tls_ops)
    return NULL;
  return ((const struct tls_stream *)s)->sni;
}

const char *rp_tls_stream_alpn(const struct rp_stream *s) {
  const struct tls_stream *ts = (const struct tls_stream *)s;
  if (s == NULL || s->ops != &tls_ops || ts->alpn[0] == '\0')
    return NULL;
  return ts->alpn;
}

static void on_failed_create_close(uv_handle_t *h) {
  free(h->data);
}

struct rp_stream *rp_tls_stream_server(struct rp_stream *inner, SSL_CTX *base_ctx, const char *host,
                                       rp_tls_select_cb select, void *select_arg,
                                       rp_tls_handshake_cb cb) {
  return rp_tls_stream_server_preread(inner, base_ctx, host, select, select_arg, cb, NULL, 0);
}

struct rp_stream *rp_tls_stream_server_preread(struct rp_stream *inner, SSL_CTX *base_ctx,
                                               const char *host, rp_tls_select_cb select,
                                               void *select_arg, rp_tls_handshake_cb cb,
                                               char *preread, size_t preread_len) {
  struct tls_stream *ts = NULL;
  rp_stream_read_cb saved_read;
  void *saved_data;
  uv_loop_t *loop;
  BIO *bio = NULL;
  int rc;

  if (inner == NULL || base_ctx == NULL || select == NULL || inner->ops->loop == NULL)
    return NULL;
  loop = inner->ops->loop(inner);
  if (loop == NULL)
    return NULL;
  if (CRYPTO_THREAD_run_once(&init_once, global_init) != 1 || bio_method == NULL)
    return NULL;
  ts = calloc(1, sizeof(*ts));
  if (ts == NULL)
    goto fail;
  ts->base.ops = &tls_ops;
  ts->inner = inner;
  ts->state = TLS_HANDSHAKE;
  ts->select = select;
  ts->select_arg = select_arg;
  ts->hs_cb = cb;
  ts->wq_tail = &ts->wq_head;
  if (host != NULL) {
    ts->host = strdup(host);
    if (ts->host == NULL)
      goto fail;
  }
  /* The callback and the options are the same for every session on base_ctx. */
  SSL_CTX_set_tlsext_servername_callback(base_ctx, on_servername);
  ts->ssl = SSL_new(base_ctx);
  if (ts->ssl == NULL)
    goto fail;
  bio = BIO_new(bio_method);
  if (bio == NULL)
    goto fail;
  BIO_set_data(bio, ts);
  SSL_set_bio(ts->ssl, bio, bio); /* one reference, taken by the session */
  bio = NULL;
  if (SSL_set_ex_data(ts->ssl, ex_index, ts) != 1)
    goto fail;
  SSL_set_accept_state(ts->ssl);
  SSL_set_options(ts->ssl, SSL_OP_NO_RENEGOTIATION);
  /* An idle session gives its record buffers back, like the read pool. */
  SSL_set_mode(ts->ssl, SSL_MODE_RELEASE_BUFFERS);

  rc = uv_idle_init(loop, &ts->idle);
  if (rc != 0)
    goto fail;
  ts->idle.data = ts;
  saved_read = inner->on_read;
  saved_data = inner->data;
  if (preread != NULL && preread_len > 0) {
    /* The bytes already read go first, as the inner block on hand; the inner
     * stream is read again once the handshake has taken them (pump from the
     * loop, never from inside this call or the caller's read callback). */
    rc = inner->ops->read_stop(inner);
  }
  if (rc == 0 && preread != NULL && preread_len > 0) {
    inner->on_read = on_inner_read;
    inner->data = ts;
    ts->in_block = preread;
    ts->in_off = 0;
    ts->in_len = preread_len;
    schedule(ts);
    return &ts->base;
  }
  if (rc == 0) {
    inner->on_read = on_inner_read;
    inner->data = ts;
    rc = inner->ops->read_start(inner);
  }
  if (rc == UV_EALREADY)
    rc = 0;
  if (rc != 0) {
    inner->on_read = saved_read;
    inner->data = saved_data;
    SSL_free(ts->ssl);
    free(ts->host);
    uv_close((uv_handle_t *)&ts->idle, on_failed_create_close);
    return NULL;
  }
  ts->inner_reading = 1;
  return &ts->base;

fail:
  ERR_clear_error();
  BIO_free(bio);
  if (ts != NULL) {
    SSL_free(ts->ssl);
    free(ts->host);
    free(ts);
  }
  return NULL;
}
