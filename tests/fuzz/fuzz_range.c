/* libFuzzer target for rp_http_range_parse: the first 8 bytes pick the object
 * size, the rest is a Range value. Whatever it accepts must lie inside the
 * object and must be a plain "bytes=N-[M]" (digits only). */

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "regproxy/error.h"
#include "regproxy/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint64_t objsize = 0, off = 0, len = 0;
  const char *v;
  size_t n;
  int rc;

  if (size < 8)
    return 0;
  memcpy(&objsize, data, 8);
  objsize >>= (data[0] & 63); /* small sizes as often as huge ones */
  v = (const char *)data + 8;
  n = size - 8;
  rc = rp_http_range_parse(v, n, objsize, &off, &len);
  if (rc != 0 && rc != RP_EPARSE && rc != RP_EINVAL)
    abort();
  if (rc != 0)
    return 0;
  if (len == 0 || off >= objsize || len > objsize - off)
    abort(); /* outside the object */
  if (n < 8 || strncasecmp(v, "bytes=", 6) != 0)
    abort();
  for (size_t i = 6, dashes = 0; i < n; i++) {
    if (v[i] == '-' ? ++dashes > 1 : (v[i] < '0' || v[i] > '9'))
      abort(); /* only digits and one dash */
  }
  return 0;
}
