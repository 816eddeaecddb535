/* The TLS stream (server side) on a real libuv loop: a listener on
 * 127.0.0.1:0 wraps each accepted TCP stream with rp_tls_stream_server,
 * starting on a base SSL_CTX without a certificate; the client is a thread
 * with blocking OpenSSL (or memory BIOs where the test needs to control how
 * records are packed into segments). */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "regproxy/net.h"

#define HOST      "test.local"
#define MIB       (1024 * 1024)
#define PATTERN   (64 * 1024)
#define QUEUE_MAX (1 * MIB)

static unsigned char pattern[PATTERN]; /* random; the bulk transfers repeat it */

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void fill_random(unsigned char *p, size_t n) {
  static uint64_t x = 0x9e3779b97f4a7c15ULL;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[i] = (unsigned char)x;
  }
}

static void sha256(const void *p, size_t n, unsigned char out[32]) {
  unsigned int len = 32;
  assert_int_equal(EVP_Digest(p, n, out, &len, EVP_sha256(), NULL), 1);
}

/* ---- certificates and contexts ---- */

struct tls_fixture {
  EVP_PKEY *key;
  X509 *cert;
  SSL_CTX *base;     /* server: no certificate, only the servername switch */
  SSL_CTX *leaf;     /* server: the self-signed leaf for test.local */
  SSL_CTX *trust;    /* client trusting the leaf */
  SSL_CTX *distrust; /* client trusting nothing */
};

static struct tls_fixture fx;

static int on_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg) {
  static const unsigned char ours[] = "\x08http/1.1";
  (void)ssl;
  (void)arg;
  if (SSL_select_next_proto((unsigned char **)out, outlen, ours, sizeof(ours) - 1, in, inlen) !=
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_NOACK;
  return SSL_TLSEXT_ERR_OK;
}

static X509 *make_cert(EVP_PKEY *key) {
  X509 *x = X509_new();
  X509_NAME *name;
  X509_EXTENSION *ext;
  X509V3_CTX v3;

  if (x == NULL)
    return NULL;
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)HOST, -1, -1, 0);
  X509_set_issuer_name(x, name);
  X509_set_pubkey(x, key);
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
  ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:" HOST);
  if (ext == NULL || X509_add_ext(x, ext, -1) != 1 || X509_sign(x, key, EVP_sha256()) == 0) {
    X509_EXTENSION_free(ext);
    X509_free(x);
    return NULL;
  }
  X509_EXTENSION_free(ext);
  return x;
}

static int group_setup(void **state) {
  (void)state;
  fill_random(pattern, sizeof(pattern));
  fx.key = EVP_EC_gen("P-256");
  assert_non_null(fx.key);
  fx.cert = make_cert(fx.key);
  assert_non_null(fx.cert);

  fx.base = SSL_CTX_new(TLS_server_method());
  assert_non_null(fx.base);
  fx.leaf = SSL_CTX_new(TLS_server_method());
  assert_non_null(fx.leaf);
  assert_int_equal(SSL_CTX_use_certificate(fx.leaf, fx.cert), 1);
  assert_int_equal(SSL_CTX_use_PrivateKey(fx.leaf, fx.key), 1);
  SSL_CTX_set_alpn_select_cb(fx.leaf, on_alpn_select, NULL);

  fx.trust = SSL_CTX_new(TLS_client_method());
  assert_non_null(fx.trust);
  assert_int_equal(X509_STORE_add_cert(SSL_CTX_get_cert_store(fx.trust), fx.cert), 1);
  SSL_CTX_set_verify(fx.trust, SSL_VERIFY_PEER, NULL);
  fx.distrust = SSL_CTX_new(TLS_client_method());
  assert_non_null(fx.distrust);
  SSL_CTX_set_verify(fx.distrust, SSL_VERIFY_PEER, NULL);
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  SSL_CTX_free(fx.base);
  SSL_CTX_free(fx.leaf);
  SSL_CTX_free(fx.trust);
  SSL_CTX_free(fx.distrust);
  X509_free(fx.cert);
  EVP_PKEY_free(fx.key);
  rp_buf_pool_drain();
  return 0;
}

/* ---- the client thread ---- */

enum cl_mode {
  CL_TLS,           /* handshake, send, read until close_notify */
  CL_COALESCE,      /* Finished and data in one segment, then wait for a 1-byte ack */
  CL_PARTIAL_HELLO, /* half a ClientHello, then close */
  CL_CLOSE_NOW,     /* connect and close */
  CL_GARBAGE,       /* plain HTTP at a TLS port */
  CL_MODE_LAST
};

struct client {
  pthread_t th;
  int port;
  enum cl_mode mode;
  SSL_CTX *ctx;
  const char *sni;
  const char *alpn; /* wire format */
  const unsigned char *send;
  size_t send_len;
  size_t chunk;
  bool close_after_send; /* close_notify right after sending */
  bool truncate;         /* instead: a TCP FIN without close_notify */
  bool check_pattern;
  /* results */
  bool hs_ok;
  char err[256];
  size_t recv_len;
  unsigned char *recv; /* the first recv_cap bytes */
  size_t recv_cap;
  bool close_notify;
  bool pattern_ok;
  double secs; /* from the end of the handshake to the close_notify */
};

static int client_connect(int port) {
  struct sockaddr_in sa;
  struct timeval tv = {.tv_sec = 20};
  int fd = socket(AF_INET, SOCK_STREAM, 0);

  if (fd < 0)
    return -1;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static void client_err(struct client *c, const char *what) {
  unsigned long e = ERR_peek_error();
  char buf[200] = "";
  if (e != 0)
    ERR_error_string_n(e, buf, sizeof(buf));
  snprintf(c->err, sizeof(c->err), "%s: %s", what, buf);
  ERR_clear_error();
}

static void client_got(struct client *c, const unsigned char *p, size_t n) {
  if (c->check_pattern) {
    size_t off = c->recv_len % PATTERN, done = 0;
    while (done < n) {
      size_t take = PATTERN - off < n - done ? PATTERN - off : n - done;
      if (memcmp(p + done, pattern + off, take) != 0)
        c->pattern_ok = false;
      done += take;
      off = 0;
    }
  }
  if (c->recv_len < c->recv_cap) {
    size_t take = c->recv_cap - c->recv_len < n ? c->recv_cap - c->recv_len : n;
    memcpy(c->recv + c->recv_len, p, take);
  }
  c->recv_len += n;
}

static SSL *client_ssl(struct client *c, int fd) {
  SSL *ssl = SSL_new(c->ctx);
  assert_non_null(ssl);
  if (fd >= 0)
    SSL_set_fd(ssl, fd);
  if (c->sni != NULL)
    SSL_set_tlsext_host_name(ssl, c->sni);
  SSL_set1_host(ssl, HOST);
  if (c->alpn != NULL)
    SSL_set_alpn_protos(ssl, (const unsigned char *)c->alpn, (unsigned)strlen(c->alpn));
  return ssl;
}

static void client_tls(struct client *c, int fd) {
  SSL *ssl = client_ssl(c, fd);
  unsigned char *buf = malloc(PATTERN);
  double t0;

  assert_non_null(buf);
  if (SSL_connect(ssl) != 1) {
    client_err(c, "connect");
    goto out;
  }
  c->hs_ok = true;
  t0 = now_s();
  for (size_t off = 0; off < c->send_len;) {
    size_t n = c->send_len - off < c->chunk ? c->send_len - off : c->chunk;
    int r = SSL_write(ssl, c->send + off, (int)n);
    if (r <= 0) {
      client_err(c, "write");
      goto out;
    }
    off += (size_t)r;
  }
  if (c->close_after_send)
    SSL_shutdown(ssl);
  if (c->truncate)
    shutdown(fd, SHUT_WR);
  for (;;) {
    int r = SSL_read(ssl, buf, PATTERN);
    if (r > 0) {
      client_got(c, buf, (size_t)r);
      continue;
    }
    if (SSL_get_error(ssl, r) == SSL_ERROR_ZERO_RETURN)
      c->close_notify = true;
    else
      client_err(c, "read");
    break;
  }
  c->secs = now_s() - t0;
  if (!c->close_after_send && !c->truncate)
    SSL_shutdown(ssl);
out:
  free(buf);
  SSL_free(ssl);
}

static int send_pending(int fd, BIO *wbio) {
  char buf[16384];
  int n;
  while ((n = BIO_read(wbio, buf, sizeof(buf))) > 0)
    if (send(fd, buf, (size_t)n, 0) != n)
      return -1;
  return 0;
}

static int recv_into(int fd, BIO *rbio) {
  char buf[16384];
  ssize_t n = recv(fd, buf, sizeof(buf), 0);
  if (n <= 0)
    return -1;
  return BIO_write(rbio, buf, (int)n) == (int)n ? 0 : -1;
}

/* The client's Finished and its first data leave in one send(), so the
 * server finds the data already read when its handshake completes. */
static void client_coalesce(struct client *c, int fd) {
  SSL *ssl = client_ssl(c, -1);
  BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
  unsigned char buf[4096];
  int r;

  SSL_set_bio(ssl, rbio, wbio);
  SSL_set_connect_state(ssl);
  while ((r = SSL_do_handshake(ssl)) != 1) {
    if (SSL_get_error(ssl, r) != SSL_ERROR_WANT_READ || send_pending(fd, wbio) != 0 ||
        recv_into(fd, rbio) != 0) {
      client_err(c, "handshake");
      goto out;
    }
  }
  c->hs_ok = true;
  for (size_t off = 0; off < c->send_len; off += c->chunk) {
    int n = (int)(c->send_len - off < c->chunk ? c->send_len - off : c->chunk);
    assert_int_equal(SSL_write(ssl, c->send + off, n), n);
  }
  if (send_pending(fd, wbio) != 0)
    goto out;
  /* Nothing more is sent until the server acknowledges all of it. */
  while (c->recv_len == 0) {
    r = SSL_read(ssl, buf, sizeof(buf));
    if (r > 0)
      client_got(c, buf, (size_t)r);
    else if (SSL_get_error(ssl, r) != SSL_ERROR_WANT_READ || recv_into(fd, rbio) != 0)
      goto out;
  }
  SSL_shutdown(ssl);
  send_pending(fd, wbio);
  while (recv(fd, buf, sizeof(buf), 0) > 0)
    ;
out:
  SSL_free(ssl);
}

static void client_partial_hello(struct client *c, int fd) {
  SSL *ssl = client_ssl(c, -1);
  BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
  char hello[4096];
  int n;

  SSL_set_bio(ssl, rbio, wbio);
  SSL_set_connect_state(ssl);
  assert_int_equal(SSL_do_handshake(ssl), -1);
  n = BIO_read(wbio, hello, sizeof(hello));
  assert_true(n > 100);
  assert_int_equal(send(fd, hello, (size_t)n / 2, 0), n / 2);
  SSL_free(ssl);
  ERR_clear_error();
}

static void *client_main(void *arg) {
  struct client *c = arg;
  static const char garbage[] = "GET / HTTP/1.1\r\nHost: test.local\r\n\r\n";
  char buf[256];
  int fd = client_connect(c->port);

  if (fd < 0) {
    snprintf(c->err, sizeof(c->err), "connect failed");
    return NULL;
  }
  switch (c->mode) {
  case CL_TLS: client_tls(c, fd); break;
  case CL_COALESCE: client_coalesce(c, fd); break;
  case CL_PARTIAL_HELLO: client_partial_hello(c, fd); break;
  case CL_CLOSE_NOW: break;
  case CL_GARBAGE:
    if (send(fd, garbage, sizeof(garbage) - 1, 0) > 0)
      while (recv(fd, buf, sizeof(buf), 0) > 0)
        ;
    break;
  default: break;
  }
  close(fd);
  ERR_clear_error();
  return NULL;
}

/* ---- the server on the loop ---- */

enum srv_mode {
  SRV_ECHO,      /* echo everything; on EOF shut down, then close */
  SRV_SINK,      /* count and hash; on EOF shut down, then close */
  SRV_PAUSE,     /* like SINK, with one read_stop of 300 ms */
  SRV_SOURCE,    /* send source_len bytes of pattern, shut down; close on EOF */
  SRV_SMALL,     /* many small writes, the first ones before the handshake */
  SRV_EARLY,     /* a write and the shutdown before the handshake */
  SRV_LATE_READ, /* read_start 150 ms after the handshake; 1-byte ack */
  SRV_MODE_LAST
};

#define SMALL_WRITES 5000
#define SMALL_EARLY  100

struct server {
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_timer_t watchdog, timer;
  int port;
  enum srv_mode mode;
  struct rp_stream *s;

  int select_calls;
  bool select_sni_null;
  char select_sni[256];
  char select_host[256];

  bool hs_done;
  int hs_status;
  char hs_reason[256];
  char sni[256];
  char alpn[32];
  bool closed;

  unsigned char *recv; /* first recv_cap bytes */
  size_t recv_cap, recv_len;
  int eof_status;
  bool eof;
  int shutdown_status;
  bool shutdown_done;

  bool paused, pause_done;
  size_t pause_at;
  unsigned reads_while_paused;
  size_t ack_at;

  size_t source_len, sent;
  unsigned writes_done;
  bool order_ok;
  int write_status;
  size_t queue_after_early_write;
  double t0, secs;

  unsigned char *small_data; /* the bytes of the small writes, in order */
  size_t small_len;
  uint16_t small_sizes[SMALL_WRITES];
};

static void on_server_closed(struct rp_stream *s) {
  struct server *sv = s->data;
  sv->closed = true;
  uv_close((uv_handle_t *)&sv->watchdog, NULL);
  uv_close((uv_handle_t *)&sv->timer, NULL);
}

static void server_close(struct server *sv) {
  rp_stream_close(sv->s, on_server_closed);
}

static void on_watchdog(uv_timer_t *t) {
  (void)t;
  fprintf(stderr, "test_stream_tls: watchdog fired\n");
  abort();
}

static SSL_CTX *select_ctx(void *arg, const char *host, const char *sni) {
  struct server *sv = arg;
  sv->select_calls++;
  snprintf(sv->select_host, sizeof(sv->select_host), "%s", host);
  sv->select_sni_null = sni == NULL;
  snprintf(sv->select_sni, sizeof(sv->select_sni), "%s", sni != NULL ? sni : "");
  if (sni != NULL && strcmp(sni, "nocert.local") == 0) {
    SSL_CTX_up_ref(fx.base); /* no switch to a certificate: must fail */
    return fx.base;
  }
  if (sni != NULL && strcmp(sni, host) != 0)
    return NULL;
  SSL_CTX_up_ref(fx.leaf);
  return fx.leaf;
}

static void on_write_done(struct rp_stream *s, int status, void *arg) {
  struct server *sv = s->data;
  if (status != 0 && sv->write_status == 0)
    sv->write_status = status;
  if ((uintptr_t)arg != sv->writes_done)
    sv->order_ok = false;
  sv->writes_done++;
}

static void on_echo_written(struct rp_stream *s, int status, void *arg) {
  struct server *sv = s->data;
  if (status != 0 && sv->write_status == 0)
    sv->write_status = status;
  rp_buf_free(arg);
}

static void on_shutdown(struct rp_stream *s, int status) {
  struct server *sv = s->data;
  sv->shutdown_done = true;
  sv->shutdown_status = status;
  /* ECHO, SINK, PAUSE shut down after the client's EOF: nothing more comes. */
  if (sv->eof)
    server_close(sv);
}

static void source_pump(struct server *sv);

static void on_source_written(struct rp_stream *s, int status, void *arg) {
  struct server *sv = s->data;
  (void)arg;
  if (status != 0 && sv->write_status == 0)
    sv->write_status = status;
  sv->writes_done++;
  if (!sv->closed)
    source_pump(sv);
}

static void source_pump(struct server *sv) {
  while (sv->sent < sv->source_len && rp_stream_write_queue_size(sv->s) < QUEUE_MAX) {
    size_t n = sv->source_len - sv->sent < PATTERN ? sv->source_len - sv->sent : PATTERN;
    uv_buf_t b = uv_buf_init((char *)pattern, (unsigned)n);
    assert_int_equal(rp_stream_write(sv->s, &b, 1, on_source_written, NULL), 0);
    sv->sent += n;
    if (sv->sent == sv->source_len)
      assert_int_equal(rp_stream_shutdown(sv->s, on_shutdown), 0);
  }
}

static void small_write(struct server *sv, unsigned i) {
  size_t off = 0;
  uv_buf_t b;
  for (unsigned k = 0; k < i; k++)
    off += sv->small_sizes[k];
  b = uv_buf_init((char *)sv->small_data + off, sv->small_sizes[i]);
  assert_int_equal(rp_stream_write(sv->s, &b, 1, on_write_done, (void *)(uintptr_t)i), 0);
}

static void on_timer(uv_timer_t *t) {
  struct server *sv = t->data;
  if (sv->closed)
    return;
  sv->paused = false;
  sv->pause_done = true;
  assert_int_equal(rp_stream_read_start(sv->s), 0);
}

static void on_server_read(struct rp_stream *s, ssize_t nread, char *block) {
  struct server *sv = s->data;

  if (nread < 0) {
    assert_false(sv->eof); /* once */
    sv->eof = true;
    sv->eof_status = (int)nread;
    sv->secs = now_s() - sv->t0;
    if (sv->mode == SRV_ECHO || sv->mode == SRV_SINK || sv->mode == SRV_PAUSE)
      assert_int_equal(rp_stream_shutdown(s, on_shutdown), 0);
    else
      server_close(sv);
    return;
  }
  assert_non_null(block);
  assert_true(nread > 0 && nread <= RP_BUF_SIZE);
  if (sv->paused)
    sv->reads_while_paused++;
  if (sv->recv_len < sv->recv_cap) {
    size_t take =
        sv->recv_cap - sv->recv_len < (size_t)nread ? sv->recv_cap - sv->recv_len : (size_t)nread;
    memcpy(sv->recv + sv->recv_len, block, take);
  }
  sv->recv_len += (size_t)nread;
  if (sv->mode == SRV_ECHO) {
    uv_buf_t b = uv_buf_init(block, (unsigned)nread);
    assert_int_equal(rp_stream_write(s, &b, 1, on_echo_written, block), 0);
    return;
  }
  rp_buf_free(block);
  if (sv->mode == SRV_PAUSE && !sv->pause_done && !sv->paused && sv->recv_len >= sv->pause_at) {
    sv->paused = true;
    assert_int_equal(rp_stream_read_stop(s), 0);
    uv_timer_start(&sv->timer, on_timer, 300, 0);
  }
  if (sv->mode == SRV_LATE_READ && sv->recv_len == sv->ack_at) {
    uv_buf_t b = uv_buf_init((char *)"k", 1);
    assert_int_equal(rp_stream_write(s, &b, 1, NULL, NULL), 0);
  }
}

static void on_handshake(struct rp_stream *s, int status, const char *reason) {
  struct server *sv = s->data;
  const char *p;

  assert_false(sv->hs_done); /* once */
  sv->hs_done = true;
  sv->hs_status = status;
  snprintf(sv->hs_reason, sizeof(sv->hs_reason), "%s", reason);
  assert_non_null(reason);
  assert_null(strchr(reason, '\n'));
  if (status != 0) {
    server_close(sv);
    return;
  }
  p = rp_tls_stream_sni(s);
  snprintf(sv->sni, sizeof(sv->sni), "%s", p != NULL ? p : "");
  p = rp_tls_stream_alpn(s);
  snprintf(sv->alpn, sizeof(sv->alpn), "%s", p != NULL ? p : "");
  sv->t0 = now_s();
  switch (sv->mode) {
  case SRV_LATE_READ: uv_timer_start(&sv->timer, on_timer, 150, 0); return;
  case SRV_SOURCE: source_pump(sv); break;
  case SRV_SMALL:
    for (unsigned i = SMALL_EARLY; i < SMALL_WRITES; i++)
      small_write(sv, i);
    assert_int_equal(rp_stream_shutdown(s, on_shutdown), 0);
    break;
  default: break;
  }
  assert_int_equal(rp_stream_read_start(s), 0);
}

static void on_connection(uv_stream_t *l, int status) {
  struct server *sv = l->data;
  uv_tcp_t *tcp;
  struct rp_stream *inner;

  assert_int_equal(status, 0);
  tcp = rp_tcp_handle_new(&sv->loop, AF_UNSPEC);
  assert_non_null(tcp);
  assert_int_equal(uv_accept(l, (uv_stream_t *)tcp), 0);
  rp_tcp_tune(tcp, 0);
  inner = rp_tcp_stream_wrap(tcp);
  sv->s = rp_tls_stream_server(inner, fx.base, HOST, select_ctx, sv, on_handshake);
  assert_non_null(sv->s);
  assert_ptr_equal(inner->data, sv->s); /* the TLS stream owns inner now */
  assert_string_equal(sv->s->ops->name, "tls");
  assert_ptr_equal(sv->s->ops->loop(sv->s), &sv->loop);
  sv->s->data = sv;
  sv->s->on_read = on_server_read;
  uv_close((uv_handle_t *)l, NULL); /* one connection per test */

  if (sv->mode == SRV_EARLY) {
    uv_buf_t b = uv_buf_init((char *)"early", 5);
    assert_int_equal(rp_stream_write(sv->s, &b, 1, on_write_done, (void *)(uintptr_t)0), 0);
    sv->queue_after_early_write = rp_stream_write_queue_size(sv->s);
    assert_int_equal(rp_stream_shutdown(sv->s, on_shutdown), 0);
    assert_int_equal(rp_stream_write(sv->s, &b, 1, NULL, NULL), UV_EPIPE);
  } else if (sv->mode == SRV_SMALL) {
    for (unsigned i = 0; i < SMALL_EARLY; i++)
      small_write(sv, i);
    sv->queue_after_early_write = rp_stream_write_queue_size(sv->s);
  }
}

static void server_init(struct server *sv, enum srv_mode mode) {
  memset(sv, 0, sizeof(*sv));
  sv->mode = mode;
  sv->order_ok = true;
}

/* Run one connection: the loop until the server's stream is closed, then the
 * client thread to its end; every handle must be closed by then. */
static void run(struct server *sv, struct client *cl) {
  struct sockaddr_in sa;
  int len = sizeof(sa);

  assert_int_equal(uv_loop_init(&sv->loop), 0);
  assert_int_equal(uv_tcp_init(&sv->loop, &sv->listener), 0);
  sv->listener.data = sv;
  assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
  assert_int_equal(uv_tcp_bind(&sv->listener, (struct sockaddr *)&sa, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&sv->listener, 8, on_connection), 0);
  assert_int_equal(uv_tcp_getsockname(&sv->listener, (struct sockaddr *)&sa, &len), 0);
  sv->port = ntohs(sa.sin_port);
  assert_int_equal(uv_timer_init(&sv->loop, &sv->watchdog), 0);
  uv_timer_start(&sv->watchdog, on_watchdog, 50000, 0);
  uv_unref((uv_handle_t *)&sv->watchdog);
  assert_int_equal(uv_timer_init(&sv->loop, &sv->timer), 0);
  sv->timer.data = sv;

  cl->port = sv->port;
  cl->pattern_ok = true;
  assert_int_equal(pthread_create(&cl->th, NULL, client_main, cl), 0);
  assert_int_equal(uv_run(&sv->loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(pthread_join(cl->th, NULL), 0);
  assert_true(sv->closed);
  assert_int_equal(uv_loop_close(&sv->loop), 0);
}

/* ---- the cases ---- */

static void test_echo_1mib(void **state) {
  static struct server sv;
  struct client cl = {0};
  size_t n = MIB;
  unsigned char *data = malloc(n), *back = malloc(n), *got = malloc(n);
  unsigned char want[32], h[32];

  (void)state;
  assert_non_null(data);
  assert_non_null(back);
  assert_non_null(got);
  fill_random(data, n);
  sha256(data, n, want);
  server_init(&sv, SRV_ECHO);
  sv.recv = got;
  sv.recv_cap = n;
  cl.mode = CL_TLS;
  cl.ctx = fx.trust;
  cl.sni = HOST;
  cl.alpn = "\x08http/1.1";
  cl.send = data;
  cl.send_len = n;
  cl.chunk = 100 * 1000; /* not a multiple of anything */
  cl.close_after_send = true;
  cl.recv = back;
  cl.recv_cap = n;
  run(&sv, &cl);

  assert_string_equal(cl.err, "");
  assert_true(cl.hs_ok);
  assert_int_equal(sv.hs_status, 0);
  assert_string_equal(sv.hs_reason, "");
  assert_int_equal(sv.select_calls, 1);
  assert_string_equal(sv.select_sni, HOST);
  assert_string_equal(sv.select_host, HOST);
  assert_string_equal(sv.sni, HOST);
  assert_string_equal(sv.alpn, "http/1.1");
  assert_int_equal(sv.recv_len, n);
  sha256(got, n, h);
  assert_memory_equal(h, want, 32);
  assert_true(sv.eof);
  assert_int_equal(sv.eof_status, UV_EOF);
  assert_int_equal(sv.write_status, 0);
  assert_true(sv.shutdown_done);
  assert_int_equal(sv.shutdown_status, 0);
  assert_int_equal(cl.recv_len, n);
  sha256(back, n, h);
  assert_memory_equal(h, want, 32);
  assert_true(cl.close_notify);
  free(data);
  free(back);
  free(got);
}

/* Without SNI the connection's host is the identity: select sees NULL and the
 * client still verifies test.local. */
static void test_no_sni(void **state) {
  static struct server sv;
  struct client cl = {0};
  unsigned char back[16];

  (void)state;
  server_init(&sv, SRV_ECHO);
  cl.mode = CL_TLS;
  cl.ctx = fx.trust;
  cl.send = (const unsigned char *)"ping";
  cl.send_len = 4;
  cl.chunk = 4;
  cl.close_after_send = true;
  cl.recv = back;
  cl.recv_cap = sizeof(back);
  run(&sv, &cl);

  assert_string_equal(cl.err, "");
  assert_int_equal(sv.hs_status, 0);
  assert_int_equal(sv.select_calls, 1);
  assert_true(sv.select_sni_null);
  assert_string_equal(sv.select_host, HOST);
  assert_string_equal(sv.sni, "");
  assert_string_equal(sv.alpn, "");
  assert_int_equal(cl.recv_len, 4);
  assert_memory_equal(back, "ping", 4);
  assert_true(cl.close_notify);
}

static void test_small_writes(void **state) {
  static struct server sv;
  struct client cl = {0};
  unsigned char sizes[SMALL_WRITES];
  unsigned char want[32], h[32];
  unsigned char *back;

  (void)state;
  server_init(&sv, SRV_SMALL);
  fill_random(sizes, sizeof(sizes));
  for (unsigned i = 0; i < SMALL_WRITES; i++) {
    sv.small_sizes[i] = (uint16_t)(sizes[i] % 200); /* zero-length writes too */
    sv.small_len += sv.small_sizes[i];
  }
  sv.small_data = malloc(sv.small_len);
  back = malloc(sv.small_len);
  assert_non_null(sv.small_data);
  assert_non_null(back);
  fill_random(sv.small_data, sv.small_len);
  sha256(sv.small_data, sv.small_len, want);
  cl.mode = CL_TLS;
  cl.ctx = fx.trust;
  cl.sni = HOST;
  cl.recv = back;
  cl.recv_cap = sv.small_len;
  run(&sv, &cl);

  assert_string_equal(cl.err, "");
  assert_int_equal(sv.hs_status, 0);
  assert_true(sv.queue_after_early_write >= SMALL_EARLY); /* held until the handshake */
  assert_int_equal(sv.writes_done, SMALL_WRITES);
  assert_true(sv.order_ok);
  assert_int_equal(sv.write_status, 0);
  assert_true(sv.shutdown_done);
  assert_int_equal(sv.shutdown_status, 0);
  assert_int_equal(cl.recv_len, sv.small_len);
  sha256(back, sv.small_len, h);
  assert_memory_equal(h, want, 32);
  assert_true(cl.close_notify);
  assert_true(sv.eof);
  free(sv.small_data);
  free(back);
}

/* A write and the shutdown made before the handshake go out after it: the
 * client reads the data, then the close_notify. */
static void test_shutdown_close_notify(void **state) {
  static struct server sv;
  struct client cl = {0};
  unsigned char back[16];

  (void)state;
  server_init(&sv, SRV_EARLY);
  cl.mode = CL_TLS;
  cl.ctx = fx.trust;
  cl.sni = HOST;
  cl.recv = back;
  cl.recv_cap = sizeof(back);
  run(&sv, &cl);

  assert_string_equal(cl.err, "");
  assert_int_equal(sv.hs_status, 0);
  assert_int_equal(sv.queue_after_early_write, 5);
  assert_int_equal(sv.writes_done, 1);
  assert_true(sv.shutdown_done);
  assert_int_equal(sv.shutdown_status, 0);
  assert_int_equal(cl.recv_len, 5);
  assert_memory_equal(back, "early", 5);
  assert_true(cl.close_notify);
  assert_true(sv.eof); /* the client's close_notify after ours */
  assert_int_equal(sv.eof_status, UV_EOF);
}

/* No reads while stopped, even as the client keeps sending; everything after
 * read_start. */
static void test_read_stop_start(void **state) {
  static struct server sv;
  struct client cl = {0};
  size_t n = 4 * MIB;
  unsigned char *data = malloc(n), *got = malloc(n);
  unsigned char want[32], h[32];

  (void)state;
  assert_non_null(data);
  assert_non_null(got);
  fill_random(data, n);
  sha256(data, n, want);
  server_init(&sv, SRV_PAUSE);
  sv.recv = got;
  sv.recv_cap = n;
  sv.pause_at = 256 * 1024;
  cl.mode = CL_TLS;
  cl.ctx = fx.trust;
  cl.sni = HOST;
  cl.send = data;
  cl.send_len = n;
  cl.chunk = 16384;
  cl.close_after_send = true;
  run(&sv, &cl);

  assert_string_equal(cl.err, "");
  assert_true(sv.pause_done);
  assert_int_equal(sv.reads_while_paused, 0);
  assert_int_equal(sv.recv_len, n);
  sha256(got, n, h);
  assert_memory_equal(h, want, 32);
  assert_true(cl.close_notify);
  free(data);
  free(got);
}

/* A TCP EOF without close_notify ends the plaintext like a clean close. */
static void test_truncation_is_eof(void **state) {
  static struct server sv;
  struct client cl = {0};
  size_t n = 300000;
  unsigned char *data = malloc(n), *got = malloc(n);

  (void)state;
  assert_non_null(data);
  assert_non_null(got);
  fill_random(data, n);
  server_init(&sv, SRV_SINK);
  sv.recv = got;
  sv.recv_cap = n;
  cl.mode = CL_TLS;
  cl.ctx = fx.trust;
  cl.sni = HOST;
  cl.send = data;
  cl.send_len = n;
  cl.chunk = 7000;
  cl.truncate = true;
  run(&sv, &cl);

  assert_string_equal(cl.err, "");
  assert_int_equal(sv.recv_len, n);
  assert_memory_equal(got, data, n);
  assert_true(sv.eof);
  assert_int_equal(sv.eof_status, UV_EOF);
  assert_true(cl.close_notify); /* the server still closes properly */
  free(data);
  free(got);
}

/* Data that arrived with the client's Finished sits in the stream until
 * read_start, and must come out then although no new ciphertext arrives (the
 * client sends nothing more until it has the ack). */
static void test_buffered_delivered_on_read_start(void **state) {
  static struct server sv;
  struct client cl = {0};
  size_t n = 3000; /* three records, small enough for one segment with the Finished */
  unsigned char *data = malloc(n), *got = malloc(n);
  unsigned char ack[4];

  (void)state;
  assert_non_null(data);
  assert_non_null(got);
  fill_random(data, n);
  server_init(&sv, SRV_LATE_READ);
  sv.recv = got;
  sv.recv_cap = n;
  sv.ack_at = n;
  cl.mode = CL_COALESCE;
  cl.ctx = fx.trust;
  cl.sni = HOST;
  cl.send = data;
  cl.send_len = n;
  cl.chunk = 1000;
  cl.recv = ack;
  cl.recv_cap = sizeof(ack);
  run(&sv, &cl);

  assert_string_equal(cl.err, "");
  assert_true(cl.hs_ok);
  assert_int_equal(sv.recv_len, n);
  assert_memory_equal(got, data, n);
  assert_int_equal(cl.recv_len, 1);
  assert_int_equal(ack[0], 'k');
  assert_true(sv.eof);
  free(data);
  free(got);
}

struct fail_case {
  const char *name;
  enum cl_mode mode;
  bool distrust;
  const char *sni;
  int status;
  const char *reason;     /* substring of the server's reason */
  const char *client_err; /* substring of the client's error, or NULL */
};

static const struct fail_case fail_cases[] = {
    {"sni names another host", CL_TLS, false, "other.local", UV_EPROTO,
     "sni=other.local host=test.local", "unrecognized name"},
    {"client does not trust the certificate", CL_TLS, true, HOST, UV_EPROTO, "unknown ca",
     "certificate verify failed"},
    {"half a ClientHello, then close", CL_PARTIAL_HELLO, false, HOST, UV_EOF,
     "client closed during handshake", NULL},
    {"close right after connect", CL_CLOSE_NOW, false, HOST, UV_EOF,
     "client closed during handshake", NULL},
    {"plain HTTP", CL_GARBAGE, false, HOST, UV_EPROTO, "http request", NULL},
    {"selected context has no certificate", CL_TLS, false, "nocert.local", UV_EPROTO,
     "error:", "alert"},
};

static void test_handshake_failures(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(fail_cases) / sizeof(fail_cases[0]); i++) {
    const struct fail_case *fc = &fail_cases[i];
    static struct server sv;
    struct client cl = {0};

    server_init(&sv, SRV_ECHO);
    cl.mode = fc->mode;
    cl.ctx = fc->distrust ? fx.distrust : fx.trust;
    cl.sni = fc->sni;
    run(&sv, &cl);
    print_message("%s: status %d, reason \"%s\", client \"%s\"\n", fc->name, sv.hs_status,
                  sv.hs_reason, cl.err);
    assert_true(sv.hs_done);
    assert_int_equal(sv.hs_status, fc->status);
    assert_non_null(strstr(sv.hs_reason, fc->reason));
    assert_false(cl.hs_ok);
    if (fc->client_err != NULL)
      assert_non_null(strstr(cl.err, fc->client_err));
  }
}

static size_t bench_bytes(void) {
  const char *e = getenv("RP_TLS_BENCH_MB");
  long mb = e != NULL ? atol(e) : 256;
  return (size_t)(mb > 0 ? mb : 256) * MIB;
}

/* Bulk transfer both ways; prints MB/s, asserts only correctness. */
static void test_throughput(void **state) {
  static struct server sv;
  struct client cl = {0};
  size_t n = bench_bytes();
  unsigned char *data;

  (void)state;
  server_init(&sv, SRV_SOURCE);
  sv.source_len = n;
  cl.mode = CL_TLS;
  cl.ctx = fx.trust;
  cl.sni = HOST;
  cl.check_pattern = true;
  run(&sv, &cl);
  assert_string_equal(cl.err, "");
  assert_int_equal(cl.recv_len, n);
  assert_true(cl.pattern_ok);
  assert_true(cl.close_notify);
  assert_int_equal(sv.write_status, 0);
  print_message("server -> client: %zu MiB in %.3f s = %.0f MB/s\n", n / MIB, cl.secs,
                (double)n / 1e6 / cl.secs);

  /* client -> server: the client sends the pattern over and over. */
  data = malloc(n);
  assert_non_null(data);
  for (size_t off = 0; off < n; off += PATTERN)
    memcpy(data + off, pattern, n - off < PATTERN ? n - off : PATTERN);
  server_init(&sv, SRV_SINK);
  memset(&cl, 0, sizeof(cl));
  cl.mode = CL_TLS;
  cl.ctx = fx.trust;
  cl.sni = HOST;
  cl.send = data;
  cl.send_len = n;
  cl.chunk = PATTERN;
  cl.close_after_send = true;
  run(&sv, &cl);
  assert_string_equal(cl.err, "");
  assert_int_equal(sv.recv_len, n);
  assert_int_equal(sv.eof_status, UV_EOF);
  print_message("client -> server: %zu MiB in %.3f s = %.0f MB/s\n", n / MIB, sv.secs,
                (double)n / 1e6 / sv.secs);
  free(data);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_echo_1mib),
      cmocka_unit_test(test_no_sni),
      cmocka_unit_test(test_small_writes),
      cmocka_unit_test(test_shutdown_close_notify),
      cmocka_unit_test(test_read_stop_start),
      cmocka_unit_test(test_truncation_is_eof),
      cmocka_unit_test(test_buffered_delivered_on_read_start),
      cmocka_unit_test(test_handshake_failures),
      cmocka_unit_test(test_throughput),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
