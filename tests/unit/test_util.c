/* util: the growable buffer and the string hash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sbuf),
      cmocka_unit_test(test_str_hash),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
