/* rp_client_hello_parse: real ClientHellos from OpenSSL and hand-built ones,
 * whole, split over records, cut at every byte, and broken on purpose. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/ssl.h>

#include "regproxy/clienthello.h"

/* ---- a real ClientHello: what OpenSSL's client sends first ---- */

static size_t openssl_hello(const char *sni, bool alpn, uint8_t *out, size_t outsz) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  SSL *ssl;
  BIO *rbio, *wbio;
  int n;

  assert_non_null(ctx);
  ssl = SSL_new(ctx);
  rbio = BIO_new(BIO_s_mem());
  wbio = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl, rbio, wbio);
  if (sni != NULL)
    SSL_set_tlsext_host_name(ssl, sni);
  if (alpn) {
    static const unsigned char protos[] = "\x02h2\x08http/1.1";
    SSL_set_alpn_protos(ssl, protos, sizeof(protos) - 1);
  }
  SSL_set_connect_state(ssl);
  assert_int_equal(SSL_do_handshake(ssl), -1); /* wants to read the server's answer */
  n = BIO_read(wbio, out, (int)outsz);
  assert_true(n > 0);
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  return (size_t)n;
}

/* ---- hand-built ones ---- */

struct buf {
  uint8_t b[40000];
  size_t n;
};

static void put8(struct buf *b, unsigned v) {
  b->b[b->n++] = (uint8_t)v;
}

static void put16(struct buf *b, unsigned v) {
  put8(b, v >> 8);
  put8(b, v & 0xff);
}

static void put(struct buf *b, const void *p, size_t n) {
  memcpy(b->b + b->n, p, n);
  b->n += n;
}

struct hello_opts {
  const char *sni;
  bool ech;
  size_t padding; /* bytes of a padding extension (21) */
  bool dup_ext;
};

/* The handshake message (type, 3-byte length, body). */
static void build_hello(struct buf *m, const struct hello_opts *o) {
  struct buf e = {.n = 0};
  uint8_t random[32] = {0};

  if (o->sni != NULL) {
    size_t l = strlen(o->sni);
    put16(&e, 0);
    put16(&e, (unsigned)(l + 5));
    put16(&e, (unsigned)(l + 3));
    put8(&e, 0);
    put16(&e, (unsigned)l);
    put(&e, o->sni, l);
  }
  if (o->ech) {
    put16(&e, 0xfe0d);
    put16(&e, 4);
    put(&e, "\x00\x01\x02\x03", 4);
  }
  if (o->padding > 0) {
    put16(&e, 21);
    put16(&e, (unsigned)o->padding);
    memset(e.b + e.n, 0, o->padding);
    e.n += o->padding;
  }
  if (o->dup_ext) {
    put16(&e, 21);
    put16(&e, 0);
  }
  m->n = 0;
  put8(m, 1);
  put8(m, 0);
  put16(m, 0); /* length, set below */
  put16(m, 0x0303);
  put(m, random, 32);
  put8(m, 0);  /* session id */
  put16(m, 2); /* one cipher suite */
  put16(m, 0x1301);
  put8(m, 1); /* null compression */
  put8(m, 0);
  put16(m, (unsigned)e.n);
  put(m, e.b, e.n);
  m->b[1] = (uint8_t)((m->n - 4) >> 16);
  m->b[2] = (uint8_t)((m->n - 4) >> 8);
  m->b[3] = (uint8_t)(m->n - 4);
}

/* The message in records whose payloads end at the given cut points. */
static void records(struct buf *out, const struct buf *m, const size_t *cuts, size_t ncuts) {
  size_t from = 0;
  out->n = 0;
  for (size_t i = 0; i <= ncuts; i++) {
    size_t to = i < ncuts ? cuts[i] : m->n;
    put8(out, 0x16);
    put16(out, 0x0301);
    put16(out, (unsigned)(to - from));
    put(out, m->b + from, to - from);
    from = to;
  }
}

/* Every proper prefix needs more; the whole parses OK. */
static void check_prefixes(const uint8_t *p, size_t n, struct rp_client_hello *ch) {
  for (size_t k = 0; k < n; k++) {
    if (rp_client_hello_parse(p, k, ch) != RP_CH_NEED_MORE)
      fail_msg("prefix of %zu/%zu bytes not NEED_MORE", k, n);
  }
  assert_int_equal(rp_client_hello_parse(p, n, ch), RP_CH_OK);
  assert_int_equal(ch->record_bytes, n);
}

static void test_openssl_hello(void **state) {
  uint8_t b[8192];
  struct rp_client_hello ch;
  size_t n;
  (void)state;

  n = openssl_hello("Registry-1.Docker.IO", true, b, sizeof(b));
  check_prefixes(b, n, &ch);
  assert_true(ch.has_sni);
  assert_string_equal(ch.sni, "registry-1.docker.io");
  assert_false(ch.sni_is_ip);
  assert_false(ch.ech);
  assert_true(ch.alpn_h2 && ch.alpn_http11);
  assert_int_equal(ch.legacy_version, 0x0303);
  /* What follows the ClientHello (the client's next bytes) is not counted. */
  memcpy(b + n, "\x17\x03\x03\x00\x01x", 6);
  assert_int_equal(rp_client_hello_parse(b, n + 6, &ch), RP_CH_OK);
  assert_int_equal(ch.record_bytes, n);

  n = openssl_hello(NULL, false, b, sizeof(b));
  assert_int_equal(rp_client_hello_parse(b, n, &ch), RP_CH_OK);
  assert_false(ch.has_sni);
  assert_string_equal(ch.sni, "");
  assert_false(ch.alpn_h2 || ch.alpn_http11);
}

/* Go 1.24 offers X25519MLKEM768: a ClientHello over 1,200 bytes that spans
 * TCP segments, and some stacks split it over TLS records too. */
static void test_split_over_records(void **state) {
  struct hello_opts o = {.sni = "ghcr.io", .padding = 1400};
  struct buf m, s;
  struct rp_client_hello ch;
  size_t cuts[3][3] = {{1, 0, 0}, {2, 700, 0}, {500, 1000, 1300}};
  size_t ncuts[3] = {1, 2, 3};
  (void)state;

  build_hello(&m, &o);
  for (size_t i = 0; i < 3; i++) {
    records(&s, &m, cuts[i], ncuts[i]);
    check_prefixes(s.b, s.n, &ch);
    assert_string_equal(ch.sni, "ghcr.io");
  }
  /* The largest allowed message, over two full records. */
  o.padding = 1;
  build_hello(&m, &o);
  o.padding = 1 + (RP_CLIENT_HELLO_MAX - m.n);
  build_hello(&m, &o);
  assert_int_equal(m.n, RP_CLIENT_HELLO_MAX);
  {
    size_t cut = 16384;
    records(&s, &m, &cut, 1);
  }
  assert_int_equal(rp_client_hello_parse(s.b, s.n, &ch), RP_CH_OK);
  /* One byte more is refused as soon as the length is seen. */
  o.padding++;
  build_hello(&m, &o);
  {
    size_t cut = 16384;
    records(&s, &m, &cut, 1);
  }
  assert_int_equal(rp_client_hello_parse(s.b, 9, &ch), RP_CH_INVALID);
}

static void test_names(void **state) {
  static const struct {
    const char *sni;
    bool ok;
    const char *want;
    bool ip;
  } cases[] = {
      {"quay.io", true, "quay.io", false},
      {"QUAY.IO.", true, "quay.io", false},
      {"my_host.example", true, "my_host.example", false},
      {"10.1.2.3", true, "10.1.2.3", true},
      {"::1", true, "::1", true},
      {"fd00::5", true, "fd00::5", true},
      {"a:b", false, NULL, false},
      {"bad host", false, NULL, false},
      {"nul\x01", false, NULL, false},
      {".", false, NULL, false},
      {"\xc3\xa9.example", false, NULL, false},
  };
  struct buf m, s;
  struct rp_client_hello ch;
  (void)state;

  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct hello_opts o = {.sni = cases[i].sni};
    enum rp_ch_status st;
    build_hello(&m, &o);
    records(&s, &m, NULL, 0);
    st = rp_client_hello_parse(s.b, s.n, &ch);
    if (st != (cases[i].ok ? RP_CH_OK : RP_CH_INVALID))
      fail_msg("%s: status %d", cases[i].sni, (int)st);
    if (cases[i].ok) {
      assert_string_equal(ch.sni, cases[i].want);
      assert_int_equal(ch.sni_is_ip, cases[i].ip);
    }
  }
}

static void test_ech(void **state) {
  struct hello_opts o = {.sni = "public.example", .ech = true};
  struct buf m, s;
  struct rp_client_hello ch;
  (void)state;

  build_hello(&m, &o);
  records(&s, &m, NULL, 0);
  assert_int_equal(rp_client_hello_parse(s.b, s.n, &ch), RP_CH_OK);
  assert_true(ch.ech);
  assert_string_equal(ch.sni, "public.example");
}

static void test_not_a_hello(void **state) {
  struct hello_opts o = {.sni = "quay.io"};
  struct buf m, s;
  struct rp_client_hello ch;
  uint8_t x[64];
  (void)state;

  assert_int_equal(rp_client_hello_parse((const uint8_t *)"GET / HTTP/1.1\r\n", 16, &ch),
                   RP_CH_INVALID);
  assert_int_equal(rp_client_hello_parse((const uint8_t *)"G", 1, &ch), RP_CH_INVALID);
  assert_int_equal(rp_client_hello_parse((const uint8_t *)"\x16\x02", 2, &ch), RP_CH_INVALID);
  assert_int_equal(rp_client_hello_parse((const uint8_t *)"\x16\x03\x05", 3, &ch), RP_CH_INVALID);
  assert_int_equal(rp_client_hello_parse((const uint8_t *)"\x16\x03\x01\x00\x00", 5, &ch),
                   RP_CH_INVALID); /* empty handshake record */
  assert_int_equal(rp_client_hello_parse((const uint8_t *)"\x16\x03\x01\x40\x01", 5, &ch),
                   RP_CH_INVALID); /* record over 16 KiB */
  assert_int_equal(rp_client_hello_parse((const uint8_t *)"", 0, &ch), RP_CH_NEED_MORE);

  build_hello(&m, &o);
  /* A server hello, not a client hello. */
  records(&s, &m, NULL, 0);
  s.b[5] = 2;
  assert_int_equal(rp_client_hello_parse(s.b, s.n, &ch), RP_CH_INVALID);
  /* An alert record in the middle of the handshake. */
  {
    size_t cut = 10;
    records(&s, &m, &cut, 1);
    s.b[5 + 10] = 0x15;
    assert_int_equal(rp_client_hello_parse(s.b, s.n, &ch), RP_CH_INVALID);
  }
  /* Extension lengths that do not add up. */
  records(&s, &m, NULL, 0);
  s.b[s.n - 11]++; /* the low byte of the server_name list length */
  assert_int_equal(rp_client_hello_parse(s.b, s.n, &ch), RP_CH_INVALID);
  /* The same extension twice. */
  o.dup_ext = true;
  o.padding = 3;
  build_hello(&m, &o);
  records(&s, &m, NULL, 0);
  assert_int_equal(rp_client_hello_parse(s.b, s.n, &ch), RP_CH_INVALID);
  /* Noise never gets past INVALID or NEED_MORE wrongly, and never reads out of bounds. */
  for (unsigned seed = 1; seed < 2000; seed++) {
    srand(seed);
    for (size_t i = 0; i < sizeof(x); i++)
      x[i] = (uint8_t)rand();
    x[0] = 0x16;
    x[1] = 3;
    x[2] = 1;
    (void)rp_client_hello_parse(x, sizeof(x), &ch);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_openssl_hello), cmocka_unit_test(test_split_over_records),
      cmocka_unit_test(test_names),         cmocka_unit_test(test_ech),
      cmocka_unit_test(test_not_a_hello),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
