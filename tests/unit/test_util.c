/* util: the growable buffer, the string hash, base64 (strict like the
 * hand-written decoder it replaced: padding optional, canonical only). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "regproxy/error.h"
#include "regproxy/util.h"

static void test_sbuf(void **state) {
  struct rp_sbuf b = {0};
  char big[3000];
  char *p;
  size_t n;

  rp_sbuf_add(&b, "ab", 2);
  rp_sbuf_adds(&b, "cd");
  rp_sbuf_addf(&b, "-%d-%s", 42, "x");
  assert_string_equal(b.p, "abcd-42-x");
  /* Past the first 512 bytes the buffer grows and keeps what it had. */
  memset(big, 'z', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  rp_sbuf_adds(&b, big);
  p = rp_sbuf_take(&b, &n);
  assert_int_equal(n, 9 + sizeof(big) - 1);
  assert_memory_equal(p, "abcd-42-x", 9);
  assert_int_equal(p[n - 1], 'z');
  assert_int_equal(p[n], '\0');
  free(p);
  /* take resets the buffer; an empty one hands over NULL. */
  assert_null(b.p);
  assert_int_equal(b.len, 0);
  p = rp_sbuf_take(&b, &n);
  assert_null(p);
  assert_int_equal(n, 0);
  rp_sbuf_adds(&b, "left over");
  rp_sbuf_free(&b);
  assert_null(b.p);
  rp_sbuf_free(&b);
}

static void test_str_hash(void **state) {
  /* FNV-1a 32-bit reference values. */
  static const struct {
    const char *s;
    uint32_t h;
  } cases[] = {
      {"", 0x811c9dc5u},
      {"a", 0xe40c292cu},
      {"foobar", 0xbf9cf968u},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    assert_int_equal(rp_str_hash(cases[i].s), cases[i].h);
}

static void test_base64_encode(void **state) {
  /* RFC 4648 §10, and bytes that are not text. */
  static const struct {
    const char *in;
    size_t len;
    const char *out;
  } cases[] = {
      {"", 0, ""},
      {"f", 1, "Zg=="},
      {"fo", 2, "Zm8="},
      {"foo", 3, "Zm9v"},
      {"foob", 4, "Zm9vYg=="},
      {"fooba", 5, "Zm9vYmE="},
      {"foobar", 6, "Zm9vYmFy"},
      {"\xff\xfe\x00\x01", 4, "//4AAQ=="},
      {"\xfb\xff", 2, "+/8="},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char *out = rp_base64_encode(cases[i].in, cases[i].len);
    assert_non_null(out);
    assert_string_equal(out, cases[i].out);
    free(out);
  }
}

static void test_base64_decode(void **state) {
  static const struct {
    const char *in;
    int rc;
    const char *out;
    size_t len;
  } cases[] = {
      {"dXNlcjpwYXNz", 0, "user:pass", 9},
      {"dXNlcjpwYXNzMQ==", 0, "user:pass1", 10},
      {"dXNlcjpwYXNzMQ", 0, "user:pass1", 10},
      {"dXNlcjpwYXNzMTI=", 0, "user:pass12", 11},
      {"dXNlcjpwYXNzMTI", 0, "user:pass12", 11},
      {"", 0, "", 0},
      {"Zg", 0, "f", 1},
      {"//4AAQ==", 0, "\xff\xfe\x00\x01", 4},
      {"+/8", 0, "\xfb\xff", 2},
      {"@@@@", RP_EPARSE, NULL, 0},
      {"a", RP_EPARSE, NULL, 0},
      {"a===", RP_EPARSE, NULL, 0},
      {"====", RP_EPARSE, NULL, 0},
      {"==", RP_EPARSE, NULL, 0},
      {"Zm9v==", RP_EPARSE, NULL, 0}, /* padding where none belongs */
      {"dXNlcjpwYXNzMQ=", RP_EPARSE, NULL, 0},
      {"dXNl cjpw", RP_EPARSE, NULL, 0},
      {"dXNlcjpwYXNzMR==", RP_EPARSE, NULL, 0}, /* non-zero pad bits */
      {"dXNlcjpwYXNzMTJ=", RP_EPARSE, NULL, 0}, /* non-zero pad bits */
      {"dX=lcjpw", RP_EPARSE, NULL, 0},         /* '=' inside */
      {"  dXNlcjpw", RP_EPARSE, NULL, 0},       /* OpenSSL skips this */
      {"dXNlcjpw\n", RP_EPARSE, NULL, 0},
      {"dXNlcjpw\r\n\r\n", RP_EPARSE, NULL, 0}, /* OpenSSL drops this */
      {"dXNl\ncjpw", RP_EPARSE, NULL, 0},
      {"dXNlcjp-", RP_EPARSE, NULL, 0}, /* base64url is not accepted */
      {"dXNlcjp_", RP_EPARSE, NULL, 0},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char *out = NULL;
    size_t len = 99;
    int rc = rp_base64_decode(cases[i].in, strlen(cases[i].in), &out, &len);
    if (rc != cases[i].rc)
      fail_msg("base64 \"%s\": rc %d want %d", cases[i].in, rc, cases[i].rc);
    if (rc == 0) {
      assert_int_equal(len, cases[i].len);
      assert_memory_equal(out, cases[i].out, len);
      assert_int_equal(out[len], '\0');
    } else {
      assert_null(out);
    }
    free(out);
  }
  /* Only in[0..len) is read. */
  char *out = NULL;
  size_t len = 0;
  assert_int_equal(rp_base64_decode("Zm9vYmFy!", 4, &out, &len), 0);
  assert_string_equal(out, "foo");
  free(out);
}

static void test_base64_roundtrip(void **state) {
  unsigned char in[300];
  for (size_t i = 0; i < sizeof(in); i++)
    in[i] = (unsigned char)(i * 37 + 11);
  for (size_t n = 0; n <= sizeof(in); n++) {
    char *enc = rp_base64_encode(in, n), *dec = NULL;
    size_t len = 0;
    assert_non_null(enc);
    assert_int_equal(rp_base64_decode(enc, strlen(enc), &dec, &len), 0);
    assert_int_equal(len, n);
    assert_memory_equal(dec, in, n);
    free(dec);
    /* and without the padding */
    size_t e = strlen(enc);
    while (e > 0 && enc[e - 1] == '=')
      e--;
    assert_int_equal(rp_base64_decode(enc, e, &dec, &len), 0);
    assert_int_equal(len, n);
    assert_memory_equal(dec, in, n);
    free(dec);
    free(enc);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sbuf),
      cmocka_unit_test(test_str_hash),
      cmocka_unit_test(test_base64_encode),
      cmocka_unit_test(test_base64_decode),
      cmocka_unit_test(test_base64_roundtrip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
