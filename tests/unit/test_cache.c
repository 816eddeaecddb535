/* The content-addressed cache on a real libuv loop and a mkdtemp directory:
 * fills fed in uneven pieces by a producer on the loop, readers writing to a
 * fake client sink (an in-test struct rp_sink that appends to a buffer
 * and completes each write on a later loop turn, optionally slowly), then
 * the index surviving a reopen, start-up clean-up, the directory lock,
 * eviction and an injected disk error. RP_CACHE_BENCH=1 adds a 1 GiB
 * fill+read throughput run. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <sqlite3.h>
#include <uv.h>

#include "cache/internal.h"
#include "regproxy/cache.h"
#include "regproxy/error.h"
#include "regproxy/net.h"

#define MIB ((size_t)1024 * 1024)

static uv_loop_t loop;

/* ---- helpers ---- */

static void fill_random(unsigned char *p, size_t n, uint64_t seed) {
  uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[i] = (unsigned char)(x >> 24);
  }
}

static unsigned char *random_blob(size_t n, uint64_t seed) {
  unsigned char *p = malloc(n > 0 ? n : 1);
  assert_non_null(p);
  fill_random(p, n, seed);
  return p;
}

static void digest_of(const void *p, size_t n, int algo, struct rp_digest *out) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  char s[140];
  int k;

  assert_int_equal(EVP_Digest(p, n, md, &mdlen, algo == 512 ? EVP_sha512() : EVP_sha256(), NULL),
                   1);
  k = snprintf(s, sizeof s, "sha%d:", algo);
  for (unsigned i = 0; i < mdlen; i++)
    k += snprintf(s + k, sizeof s - (size_t)k, "%02x", md[i]);
  assert_int_equal(rp_digest_parse(s, (size_t)k, out), 0);
}

static char *make_dir(void) {
  char tmpl[] = "/tmp/rp_test_cache.XXXXXX";
  char *d = mkdtemp(tmpl);
  assert_non_null(d);
  return strdup(d);
}

static void rm_rf(const char *path) {
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
  assert_int_equal(system(cmd), 0);
}

/* Regular files below dir/sub, recursively. */
static unsigned count_files(const char *dir, const char *sub) {
  char path[8192];
  unsigned n = 0;
  struct dirent *e;
  DIR *d;

  snprintf(path, sizeof path, "%s/%s", dir, sub);
  d = opendir(path);
  if (d == NULL)
    return 0;
  while ((e = readdir(d)) != NULL) {
    char child[1024];
    struct stat st;
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    snprintf(child, sizeof child, "%s/%s", sub, e->d_name);
    snprintf(path, sizeof path, "%s/%s", dir, child);
    if (lstat(path, &st) != 0)
      continue;
    if (S_ISDIR(st.st_mode))
      n += count_files(dir, child);
    else
      n++;
  }
  closedir(d);
  return n;
}

static struct rp_cache *open_cache(const char *dir, uint64_t max_size, uint64_t orphan_max) {
  struct rp_cache_opts o = {.dir = dir, .max_size = max_size, .orphan_fill_max = orphan_max};
  struct rp_cache *c = NULL;
  char *err = NULL;
  int rc = rp_cache_open(&loop, &o, &c, &err);
  if (rc != 0)
    fail_msg("rp_cache_open: %s (%s)", err != NULL ? err : "?", rp_strerror(rc));
  free(err);
  return c;
}

/* Close and let the queued index writes land. */
static void close_cache(struct rp_cache *c) {
  rp_cache_close(c);
  uv_run(&loop, UV_RUN_DEFAULT);
}

static int setup(void **state) {
  assert_int_equal(uv_loop_init(&loop), 0);
  memset(&rp__cache_faults, 0, sizeof rp__cache_faults);
  return 0;
}

static int teardown(void **state) {
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  memset(&rp__cache_faults, 0, sizeof rp__cache_faults);
  return 0;
}

#define run_until(cond) run_until_((cond) ? 1 : 0, &(cond), #cond)
static void run_until_(int dummy, bool *flag, const char *what) {
  uint64_t start = uv_hrtime();
  (void)dummy;
  while (!*flag) {
    if (uv_run(&loop, UV_RUN_ONCE) == 0 && !*flag)
      fail_msg("loop ran dry waiting for %s", what);
    if (uv_hrtime() - start > 30ULL * 1000000000ULL)
      fail_msg("timed out waiting for %s", what);
  }
}

static bool all_set(bool *const *flags, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (!*flags[i])
      return false;
  }
  return true;
}

/* Run until every flag in a set is true. */
static void run_until_all(bool *const *flags, size_t n) {
  uint64_t start = uv_hrtime();
  while (!all_set(flags, n)) {
    if (uv_run(&loop, UV_RUN_ONCE) == 0 && !all_set(flags, n))
      fail_msg("loop ran dry");
    if (uv_hrtime() - start > 60ULL * 1000000000ULL)
      fail_msg("timed out");
  }
}

/* ---- a fake client: the sink a reader writes to ---- */

struct fake {
  struct rp_sink base;
  uv_timer_t timer;
  unsigned char *buf;
  size_t len, cap;
  bool discard; /* count bytes only (benchmarks) */
  uint64_t total;
  struct {
    rp_sink_cb cb;
    void *arg;
  } q[8];
  unsigned nq;
  unsigned slow_ms; /* 0: complete every queued write on the next turn */
  int fail_status;  /* complete writes with this status (a client gone) */
  unsigned writes;
  /* What the client had seen when the fill was watched. */
  struct rp_fill *watch;
  uint64_t full_len;
  bool full_before_publish;
  bool first_seen;
  enum rp_fill_state state_at_first;
};

static void on_fake_timer(uv_timer_t *t) {
  struct fake *fs = t->data;
  unsigned n = fs->slow_ms != 0 ? 1 : fs->nq;
  struct {
    rp_sink_cb cb;
    void *arg;
  } done[8];

  memcpy(done, fs->q, n * sizeof done[0]);
  memmove(fs->q, fs->q + n, (fs->nq - n) * sizeof fs->q[0]);
  fs->nq -= n;
  for (unsigned i = 0; i < n; i++)
    done[i].cb(done[i].arg, fs->fail_status);
  if (fs->nq > 0 && !uv_is_active((uv_handle_t *)&fs->timer))
    uv_timer_start(&fs->timer, on_fake_timer, fs->slow_ms, 0);
}

static int fake_write(struct rp_sink *s, const uv_buf_t *bufs, unsigned n, rp_sink_cb cb,
                      void *arg) {
  struct fake *fs = (struct fake *)s;

  for (unsigned i = 0; i < n; i++) {
    if (!fs->discard) {
      if (fs->len + bufs[i].len > fs->cap) {
        fs->cap = (fs->len + bufs[i].len) * 2;
        fs->buf = realloc(fs->buf, fs->cap);
        assert_non_null(fs->buf);
      }
      memcpy(fs->buf + fs->len, bufs[i].base, bufs[i].len);
      fs->len += bufs[i].len;
    }
    fs->total += bufs[i].len;
  }
  if (fs->watch != NULL) {
    if (!fs->first_seen) {
      fs->first_seen = true;
      fs->state_at_first = rp_fill_state(fs->watch);
    }
    if (fs->total == fs->full_len && rp_fill_state(fs->watch) != RP_FILL_PUBLISHED)
      fs->full_before_publish = true;
  }
  assert_true(fs->nq < 8);
  fs->q[fs->nq].cb = cb;
  fs->q[fs->nq].arg = arg;
  fs->nq++;
  fs->writes++;
  if (!uv_is_active((uv_handle_t *)&fs->timer))
    uv_timer_start(&fs->timer, on_fake_timer, fs->slow_ms, 0);
  return 0;
}

static void fake_init(struct fake *fs) {
  memset(fs, 0, sizeof *fs);
  fs->base.write = fake_write;
  assert_int_equal(uv_timer_init(&loop, &fs->timer), 0);
  fs->timer.data = fs;
}

static void on_handle_closed(uv_handle_t *h) {
  *(bool *)h->data = true;
}

/* Close a handle and wait for its close callback (its memory is ours again). */
static void close_and_wait(uv_handle_t *h) {
  bool closed = false;
  h->data = &closed;
  uv_close(h, on_handle_closed);
  while (!closed)
    uv_run(&loop, UV_RUN_ONCE);
}

/* Complete what is still queued (as a front closing its stream does), then close. */
static void fake_close(struct fake *fs) {
  while (fs->nq > 0) {
    rp_sink_cb cb = fs->q[0].cb;
    void *arg = fs->q[0].arg;
    fs->nq--;
    memmove(fs->q, fs->q + 1, fs->nq * sizeof fs->q[0]);
    cb(arg, UV_ECANCELED);
  }
  close_and_wait((uv_handle_t *)&fs->timer);
}

static void fake_free(struct fake *fs) {
  free(fs->buf);
  fs->buf = NULL;
}

/* ---- readers ---- */

struct rd {
  struct fake fs;
  struct rp_reader *r;
  bool done;
  int status;
};

static void on_rd_done(struct rp_reader *r, void *data, int status) {
  struct rd *rd = data;
  assert_false(rd->done);
  rd->done = true;
  rd->status = status;
  rd->r = NULL;
}

static void rd_start(struct rd *rd, struct rp_cache *c, const struct rp_digest *d,
                     struct rp_fill *f, uint64_t off, int64_t len) {
  rd->r = rp_reader_start(c, d, f, off, len, &rd->fs.base, on_rd_done, rd);
  assert_non_null(rd->r);
}

/* ---- a producer on the loop ---- */

static const size_t pieces[] = {1, 4093, 65536, 7, 100000, 16384, 262147, 3, 31337, 777777};

struct producer {
  struct rp_fill *f;
  const unsigned char *data;
  size_t len;
  size_t pos;
  size_t piece; /* fixed piece size, or 0 for the uneven table */
  unsigned pi;
  size_t budget;        /* bytes per tick */
  unsigned interval_ms; /* 0: an idle handle, as fast as the fill takes it */
  size_t abort_at;      /* abort instead of finishing once pos reaches it (0: never) */
  uv_timer_t timer;
  uv_idle_t idle;
  bool paused;
  bool ended; /* finish or abort called, or the fill refused */
  int write_err;
  unsigned againes;
  bool state_cb;
};

static void prod_tick(struct producer *p);

static void on_prod_timer(uv_timer_t *t) {
  prod_tick(t->data);
}

static void on_prod_idle(uv_idle_t *h) {
  prod_tick(h->data);
}

static void prod_stop(struct producer *p) {
  if (p->interval_ms != 0)
    uv_timer_stop(&p->timer);
  else
    uv_idle_stop(&p->idle);
}

static void prod_go(struct producer *p) {
  if (p->interval_ms != 0)
    uv_timer_start(&p->timer, on_prod_timer, p->interval_ms, p->interval_ms);
  else
    uv_idle_start(&p->idle, on_prod_idle);
}

static void prod_tick(struct producer *p) {
  size_t written = 0;

  while (!p->ended && p->pos < p->len && written < p->budget) {
    size_t n = p->piece != 0 ? p->piece : pieces[p->pi % (sizeof pieces / sizeof pieces[0])];
    int rc;
    if (n > p->len - p->pos)
      n = p->len - p->pos;
    if (p->abort_at != 0 && p->pos + n > p->abort_at) {
      rp_fill_abort(p->f, "test abort");
      p->ended = true;
      break;
    }
    rc = rp_fill_write(p->f, (const char *)p->data + p->pos, n);
    if (rc == RP_FILL_AGAIN) {
      p->paused = true;
      p->againes++;
      prod_stop(p);
      return;
    }
    if (rc != 0) {
      p->write_err = rc;
      p->ended = true;
      break;
    }
    p->pi++;
    p->pos += n;
    written += n;
  }
  if (!p->ended && p->pos == p->len) {
    rp_fill_finish(p->f);
    p->ended = true;
  }
  if (p->ended)
    prod_stop(p);
}

static void on_prod_writable(struct rp_fill *f, void *data) {
  struct producer *p = data;
  assert_true(p->paused);
  p->paused = false;
  prod_go(p);
}

static void on_prod_state(struct rp_fill *f, void *data) {
  struct producer *p = data;
  p->state_cb = true;
  p->ended = true;
  prod_stop(p);
}

static void prod_init(struct producer *p, struct rp_fill *f, const unsigned char *data, size_t len,
                      unsigned interval_ms, size_t budget) {
  memset(p, 0, sizeof *p);
  p->f = f;
  p->data = data;
  p->len = len;
  p->interval_ms = interval_ms;
  p->budget = budget;
  if (interval_ms != 0) {
    assert_int_equal(uv_timer_init(&loop, &p->timer), 0);
    p->timer.data = p;
  } else {
    assert_int_equal(uv_idle_init(&loop, &p->idle), 0);
    p->idle.data = p;
  }
  rp_fill_set_producer(f, on_prod_writable, on_prod_state, p);
  prod_go(p);
}

static void prod_close(struct producer *p) {
  if (p->interval_ms != 0)
    close_and_wait((uv_handle_t *)&p->timer);
  else
    close_and_wait((uv_handle_t *)&p->idle);
}

/* Until the fill left RUNNING (published or failed). */
static void run_until_fill_done(struct rp_fill *f) {
  uint64_t start = uv_hrtime();
  while (rp_fill_state(f) == RP_FILL_RUNNING) {
    if (uv_run(&loop, UV_RUN_ONCE) == 0 && rp_fill_state(f) == RP_FILL_RUNNING)
      fail_msg("loop ran dry with the fill running");
    if (uv_hrtime() - start > 60ULL * 1000000000ULL)
      fail_msg("timed out waiting for the fill");
  }
}

static bool file_equals(const char *path, const unsigned char *data, size_t len) {
  FILE *fp = fopen(path, "rb");
  unsigned char *buf = malloc(len + 1);
  size_t n;
  bool eq;

  assert_non_null(buf);
  if (fp == NULL) {
    free(buf);
    return false;
  }
  n = fread(buf, 1, len + 1, fp);
  fclose(fp);
  eq = n == len && memcmp(buf, data, len) == 0;
  free(buf);
  return eq;
}

static char *blob_path(const char *dir, const struct rp_digest *d) {
  char *p = NULL;
  assert_true(asprintf(&p, "%s/blobs/sha%d/%.2s/%s", dir, d->algo, d->hex, d->hex) > 0);
  return p;
}

/* Fill data completely through a producer (no reader) and wait for the end. */
static void fill_blob(struct rp_cache *c, const unsigned char *data, size_t len,
                      const struct rp_digest *d, bool is_manifest, const char *mt) {
  struct producer p;
  struct rp_fill *f = rp_fill_start(c, d, (int64_t)len, is_manifest, mt);

  assert_non_null(f);
  prod_init(&p, f, data, len, 0, 8 * MIB);
  run_until_fill_done(f);
  assert_int_equal(rp_fill_state(f), RP_FILL_PUBLISHED);
  prod_close(&p);
  rp_fill_unref(f);
}

/* ---- tests ---- */

static void test_digest_parse(void **state) {
  static const struct {
    const char *s;
    int ok;
  } cases[] = {
      {"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 1},
      {"sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855", 0},
      {"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85", 0},
      {"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555", 0},
      {"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g", 0},
      {"sha256:../../../../etc/passwd", 0},
      {"sha384:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 0},
      {"sha512:"
       "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2"
       "877eec2f63b931bd47417a81a538327af927da3e",
       1},
      {"sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 0},
      {"sha256:", 0},
      {"", 0},
      {"sha256e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct rp_digest d;
    char back[140];
    int rc = rp_digest_parse(cases[i].s, strlen(cases[i].s), &d);
    if (cases[i].ok) {
      assert_int_equal(rc, 0);
      rp_digest_format(&d, back, sizeof back);
      assert_string_equal(back, cases[i].s);
    } else {
      assert_int_equal(rc, RP_EPARSE);
    }
  }
}

/* 10 MiB in uneven pieces, a reader on the fill and one on the published file. */
static void test_fill_publish_read(void **state) {
  const size_t len = 10 * MIB + 12345;
  unsigned char *data = random_blob(len, 1);
  char *dir = make_dir();
  struct rp_cache *c = open_cache(dir, 0, 1ULL << 40);
  struct rp_cache_stats st;
  struct rp_object_info info;
  struct rp_digest d;
  struct producer p;
  struct rd tail, hit;
  struct rp_fill *f;
  char *path;

  digest_of(data, len, 256, &d);
  f = rp_fill_start(c, &d, (int64_t)len, false, NULL);
  assert_non_null(f);
  fake_init(&tail.fs);
  tail.done = false;
  tail.fs.watch = f;
  tail.fs.full_len = len;
  rd_start(&tail, c, NULL, f, 0, -1);
  prod_init(&p, f, data, len, 0, 2 * MIB);
  run_until(tail.done);
  assert_int_equal(tail.status, 0);
  assert_int_equal(rp_fill_state(f), RP_FILL_PUBLISHED);
  assert_int_equal(tail.fs.len, len);
  assert_memory_equal(tail.fs.buf, data, len);
  assert_false(tail.fs.full_before_publish);

  assert_true(rp_cache_has(c, &d, &info));
  assert_int_equal(info.size, len);
  assert_false(info.is_manifest);
  path = blob_path(dir, &d);
  assert_true(file_equals(path, data, len));
  assert_int_equal(count_files(dir, "tmp"), 0);
  rp_cache_stats(c, &st);
  assert_int_equal(st.objects, 1);
  assert_int_equal(st.size_bytes, len);
  assert_int_equal(st.fills_in_flight, 0);

  fake_init(&hit.fs);
  hit.done = false;
  rd_start(&hit, c, &d, NULL, 0, -1);
  run_until(hit.done);
  assert_int_equal(hit.status, 0);
  assert_int_equal(hit.fs.len, len);
  assert_memory_equal(hit.fs.buf, data, len);
  assert_true(hit.fs.writes >= len / RP_CACHE_CHUNK);

  prod_close(&p);
  rp_fill_unref(f);
  fake_close(&tail.fs);
  fake_close(&hit.fs);
  close_cache(c);
  fake_free(&tail.fs);
  fake_free(&hit.fs);
  free(path);
  free(data);
  rm_rf(dir);
  free(dir);
}

static void test_sha512(void **state) {
  const size_t len = (size_t)700 * 1024;
  unsigned char *data = random_blob(len, 2);
  char *dir = make_dir();
  struct rp_cache *c = open_cache(dir, 0, 1ULL << 40);
  struct rp_digest d;
  char *path;

  digest_of(data, len, 512, &d);
  fill_blob(c, data, len, &d, false, NULL);
  path = blob_path(dir, &d);
  assert_non_null(strstr(path, "/blobs/sha512/"));
  assert_true(file_equals(path, data, len));
  close_cache(c);
  free(path);
  free(data);
  rm_rf(dir);
  free(dir);
}

/* Range: offset/length from a published file and from a running fill. */
static void test_range(void **state) {
  const size_t len = 6 * MIB + 99;
  unsigned char *data = random_blob(len, 3);
  char *dir = make_dir();
  struct rp_cache *c = open_cache(dir, 0, 1ULL << 40);
  struct rp_digest d, d2;
  static const struct {
    uint64_t off;
    int64_t len;
  } ranges[] = {
      {0, 1},        {12345, MIB + 7}, {len - 1, 1},
      {len - 1, -1}, {3 * MIB, -1},    {len, 0},
      {len, -1},     {100, 0},         {RP_CACHE_CHUNK - 1, RP_CACHE_CHUNK + 2},
  };
  const size_t nr = sizeof ranges / sizeof ranges[0];
  struct rd rds[sizeof ranges / sizeof ranges[0]];
  unsigned char *data2 = random_blob(len, 33);
  struct producer p;
  struct rp_fill *f;

  digest_of(data, len, 256, &d);
  fill_blob(c, data, len, &d, false, NULL);
  for (size_t i = 0; i < nr; i++) {
    fake_init(&rds[i].fs);
    rds[i].done = false;
    rd_start(&rds[i], c, &d, NULL, ranges[i].off, ranges[i].len);
  }
  for (size_t i = 0; i < nr; i++) {
    size_t want = ranges[i].len >= 0 ? (size_t)ranges[i].len : len - ranges[i].off;
    run_until(rds[i].done);
    assert_int_equal(rds[i].status, 0);
    assert_int_equal(rds[i].fs.total, want);
    if (want > 0)
      assert_memory_equal(rds[i].fs.buf, data + ranges[i].off, want);
    fake_close(&rds[i].fs);
  }
  /* Out of range: refused at start. */
  assert_null(rp_reader_start(c, &d, NULL, len + 1, -1, &rds[0].fs.base, on_rd_done, NULL));
  assert_null(rp_reader_start(c, &d, NULL, 10, (int64_t)len, &rds[0].fs.base, on_rd_done, NULL));

  /* The same ranges while a second blob is still being filled (slowly). */
  digest_of(data2, len, 256, &d2);
  f = rp_fill_start(c, &d2, (int64_t)len, false, NULL);
  assert_non_null(f);
  for (size_t i = 0; i < nr; i++) {
    fake_free(&rds[i].fs);
    fake_init(&rds[i].fs);
    rds[i].done = false;
    rds[i].fs.watch = f;
    rds[i].fs.full_len = ranges[i].off + (ranges[i].len >= 0 ? (uint64_t)ranges[i].len : len);
    rd_start(&rds[i], c, NULL, f, ranges[i].off, ranges[i].len);
  }
  prod_init(&p, f, data2, len, 1, (size_t)512 * 1024);
  for (size_t i = 0; i < nr; i++) {
    size_t want = ranges[i].len >= 0 ? (size_t)ranges[i].len : len - ranges[i].off;
    run_until(rds[i].done);
    assert_int_equal(rds[i].status, 0);
    assert_int_equal(rds[i].fs.total, want);
    if (want > 0)
      assert_memory_equal(rds[i].fs.buf, data2 + ranges[i].off, want);
    /* A range that ends at the blob's end only completes once verified. */
    if (ranges[i].off + want == len && want > 0)
      assert_false(rds[i].fs.full_before_publish);
    fake_close(&rds[i].fs);
  }
  run_until_fill_done(f);
  assert_int_equal(rp_fill_state(f), RP_FILL_PUBLISHED);
  prod_close(&p);
  rp_fill_unref(f);
  close_cache(c);
  for (size_t i = 0; i < nr; i++)
    fake_free(&rds[i].fs);
  free(data);
  free(data2);
  rm_rf(dir);
  free(dir);
}

/* 20 readers on one growing fill, single-flight, first bytes before the end. */
static void test_many_readers(void **state) {
  enum { N = 20 };
  const size_t len = 10 * MIB;
  unsigned char *data = random_blob(len, 4);
  char *dir = make_dir();
  struct rp_cache *c = open_cache(dir, 0, 1ULL << 40);
  struct rd *rds = calloc(N, sizeof *rds);
  bool *flags[N];
  struct rp_digest d;
  struct producer p;
  struct rp_fill *f, *g;

  assert_non_null(rds);
  digest_of(data, len, 256, &d);
  assert_null(rp_fill_find(c, &d));
  f = rp_fill_start(c, &d, (int64_t)len, false, NULL);
  assert_non_null(f);
  assert_null(rp_fill_start(c, &d, (int64_t)len, false, NULL));
  for (int i = 0; i < N; i++) {
    g = rp_fill_find(c, &d);
    assert_ptr_equal(g, f);
    fake_init(&rds[i].fs);
    rds[i].fs.watch = f;
    rds[i].fs.full_len = len;
    rds[i].fs.slow_ms = i % 4 == 0 ? 1 : 0;
    rd_start(&rds[i], c, NULL, g, 0, -1);
    rp_fill_unref(g); /* the reader holds its own */
    flags[i] = &rds[i].done;
  }
  assert_int_equal(rp_fill_readers(f), N);
  prod_init(&p, f, data, len, 1, (size_t)256 * 1024);
  run_until_all(flags, N);
  for (int i = 0; i < N; i++) {
    assert_int_equal(rds[i].status, 0);
    assert_int_equal(rds[i].fs.len, len);
    assert_memory_equal(rds[i].fs.buf, data, len);
    assert_true(rds[i].fs.first_seen);
    assert_int_equal(rds[i].fs.state_at_first, RP_FILL_RUNNING);
    assert_false(rds[i].fs.full_before_publish);
    fake_close(&rds[i].fs);
  }
  assert_int_equal(rp_fill_state(f), RP_FILL_PUBLISHED);
  assert_null(rp_fill_find(c, &d));
  assert_int_equal(rp_fill_readers(f), 0);
  prod_close(&p);
  rp_fill_unref(f);
  close_cache(c);
  for (int i = 0; i < N; i++)
    fake_free(&rds[i].fs);
  free(rds);
  free(data);
  rm_rf(dir);
  free(dir);
}

/* Wrong digest, wrong size (short and long), abort: nothing published, readers
 * fail without the full length. */
enum bad_kind { BAD_DIGEST, BAD_SHORT, BAD_LONG, BAD_ABORT };

static void run_bad(enum bad_kind kind) {
  const size_t len = 5 * MIB + 3;
  unsigned char *data = random_blob(len, 5);
  char *dir = make_dir();
  struct rp_cache *c = open_cache(dir, 0, 1ULL << 40);
  struct rp_cache_stats st;
  struct rp_digest d;
  struct producer p;
  struct rd rds[3];
  bool *flags[3];
  struct rp_fill *f;
  int64_t expected = (int64_t)len;

  if (kind == BAD_DIGEST) {
    data[len / 2] ^= 1; /* digest of the original, bytes differ */
    digest_of(data, len, 256, &d);
    data[len / 2] ^= 1;
  } else {
    digest_of(data, len, 256, &d);
  }
  if (kind == BAD_SHORT)
    expected = (int64_t)len + 1;
  if (kind == BAD_LONG)
    expected = (int64_t)len - 1;
  f = rp_fill_start(c, &d, expected, false, NULL);
  assert_non_null(f);
  for (int i = 0; i < 3; i++) {
    fake_init(&rds[i].fs);
    rds[i].done = false;
    rds[i].fs.slow_ms = i == 2 ? 2 : 0;
    rd_start(&rds[i], c, NULL, f, i == 1 ? 4096 : 0, -1);
    flags[i] = &rds[i].done;
  }
  prod_init(&p, f, data, len, 1, (size_t)512 * 1024);
  if (kind == BAD_ABORT)
    p.abort_at = 3 * MIB;
  run_until_all(flags, 3);
  run_until_fill_done(f);
  assert_int_equal(rp_fill_state(f), RP_FILL_FAILED);
  for (int i = 0; i < 3; i++) {
    assert_int_not_equal(rds[i].status, 0);
    assert_true(rds[i].fs.total < len - (i == 1 ? 4096 : 0));
    assert_memory_equal(rds[i].fs.buf, data + (i == 1 ? 4096 : 0), rds[i].fs.total);
    fake_close(&rds[i].fs);
  }
  rp_cache_stats(c, &st);
  if (kind == BAD_ABORT) {
    assert_int_equal(rds[0].status, RP_EUPSTREAM);
    assert_int_equal(st.digest_mismatches, 0);
  } else {
    assert_int_equal(rds[0].status, RP_EDIGEST);
    assert_int_equal(st.digest_mismatches, 1);
  }
  if (kind == BAD_LONG)
    assert_int_equal(p.write_err, RP_EDIGEST);
  assert_false(rp_cache_has(c, &d, NULL));
  assert_int_equal(st.objects, 0);
  assert_int_equal(st.fills_in_flight, 0);
  assert_null(rp_fill_find(c, &d));
  prod_close(&p);
  rp_fill_unref(f);
  close_cache(c);
  assert_int_equal(count_files(dir, "blobs"), 0);
  assert_int_equal(count_files(dir, "tmp"), 0);
  for (int i = 0; i < 3; i++)
    fake_free(&rds[i].fs);
  free(data);
  rm_rf(dir);
  free(dir);
}

static void test_wrong_digest(void **state) {
  run_bad(BAD_DIGEST);
}

static void test_wrong_size(void **state) {
  run_bad(BAD_SHORT);
  run_bad(BAD_LONG);
}

static void test_abort(void **state) {
  run_bad(BAD_ABORT);
}

/* Unknown expected size: readers learn the end at verification; an empty
 * blob; a short body with unknown size fails only on the digest. */
static void test_unknown_size(void **state) {
  const size_t len = 3 * MIB + 17;
  unsigned char *data = random_blob(len, 14);
  char *dir = make_dir();
  struct rp_cache *c = open_cache(dir, 0, 1ULL << 40);
  struct rp_digest d, de;
  struct producer p;
  struct rd a, b, e;
  struct rp_fill *f;

  digest_of(data, len, 256, &d);
  f = rp_fill_start(c, &d, -1, false, NULL);
  assert_non_null(f);
  fake_init(&a.fs);
  a.done = false;
  a.fs.watch = f;
  a.fs.full_len = len;
  rd_start(&a, c, NULL, f, 0, -1);
  fake_init(&b.fs);
  b.done = false;
  rd_start(&b, c, NULL, f, MIB, -1);
  prod_init(&p, f, data, len, 1, (size_t)256 * 1024);
  run_until(a.done);
  run_until(b.done);
  assert_int_equal(a.status, 0);
  assert_int_equal(b.status, 0);
  assert_int_equal(a.fs.len, len);
  assert_memory_equal(a.fs.buf, data, len);
  assert_false(a.fs.full_before_publish);
  assert_int_equal(b.fs.len, len - MIB);
  assert_memory_equal(b.fs.buf, data + MIB, len - MIB);
  assert_true(rp_cache_has(c, &d, NULL));
  prod_close(&p);
  rp_fill_unref(f);

  /* The empty blob. */
  digest_of("", 0, 256, &de);
  f = rp_fill_start(c, &de, 0, false, NULL);
  assert_non_null(f);
  fake_init(&e.fs);
  e.done = false;
  rd_start(&e, c, NULL, f, 0, -1);
  rp_fill_finish(f);
  run_until(e.done);
  assert_int_equal(e.status, 0);
  assert_int_equal(e.fs.total, 0);
  assert_int_equal(rp_fill_state(f), RP_FILL_PUBLISHED);
  rp_fill_unref(f);
  fake_close(&e.fs);
  fake_init(&e.fs);
  e.done = false;
  rd_start(&e, c, &de, NULL, 0, -1);
  run_until(e.done);
  assert_int_equal(e.status, 0);
  assert_int_equal(e.fs.total, 0);

  /* Cut short with no size to check against: the digest catches it. */
  rp_cache_close(c);
  uv_run(&loop, UV_RUN_DEFAULT);
  rm_rf(dir);
  c = open_cache(dir, 0, 1ULL << 40);
  f = rp_fill_start(c, &d, -1, false, NULL);
  fake_close(&a.fs);
  fake_free(&a.fs);
  fake_init(&a.fs);
  a.done = false;
  rd_start(&a, c, NULL, f, 0, -1);
  prod_init(&p, f, data, len - 1, 1, (size_t)256 * 1024);
  run_until(a.done);
  assert_int_equal(a.status, RP_EDIGEST);
  assert_true(a.fs.total < len - 1);
  assert_false(rp_cache_has(c, &d, NULL));
  prod_close(&p);
  rp_fill_unref(f);

  fake_close(&a.fs);
  fake_close(&b.fs);
  fake_close(&e.fs);
  close_cache(c);
  fake_free(&a.fs);
  fake_free(&b.fs);
  fake_free(&e.fs);
  free(data);
  rm_rf(dir);
  free(dir);
}

/* A client whose writes fail: the reader ends with that error and the fill
 * it tailed goes on (it is below orphan_fill_max). */
static void test_client_error(void **state) {
  const size_t len = 2 * MIB;
  unsigned char *data = random_blob(len, 15);
  char *dir = make_dir();
  struct rp_cache *c = open_cache(dir, 0, 1ULL << 40);
  struct rp_digest d;
  struct producer p;
  struct rd a;
  struct rp_fill *f;

  digest_of(data, len, 256, &d);
  f = rp_fill_start(c, &d, (int64_t)len, false, NULL);
  fake_init(&a.fs);
  a.done = false;
  a.fs.fail_status = UV_EPIPE;
  rd_start(&a, c, NULL, f, 0, -1);
  prod_init(&p, f, data, len, 1, (size_t)256 * 1024);
  run_until(a.done);
  assert_int_equal(a.status, UV_EPIPE);
  run_until_fill_done(f);
  assert_int_equal(rp_fill_state(f), RP_FILL_PUBLISHED);
  prod_close(&p);
  rp_fill_unref(f);
  fake_close(&a.fs);
  close_cache(c);
  fake_free(&a.fs);
  free(data);
  rm_rf(dir);
  free(dir);
}

/* A reader cancelled mid-way (writes and reads still in flight), and readers
 * cancelled at once: no callback, nothing leaked. */
static void test_cancel(void **state) {
  const size_t len = 4 * MIB;
  unsigned char *data = random_blob(len, 6);
  char *dir = make_dir();
  struct rp_cache *c = open_cache(dir, 0, 1ULL << 40);
  struct rp_digest d;
  struct rd a, b, e;
  struct producer p;
  struct rp_fill *f;

  digest_of(data, len, 256, &d);
  fill_blob(c, data, len, &d, false, NULL);
  fake_init(&a.fs);
  a.done = false;
  a.fs.slow_ms = 5;
  rd_start(&a, c, &d, NULL, 0, -1);
  while (a.fs.total < 2 * RP_CACHE_CHUNK)
    uv_run(&loop, UV_RUN_ONCE);
  rp_reader_cancel(a.r);
  fake_init(&b.fs);
  b.done = false;
  rd_start(&b, c, &d, NULL, 0, -1);
  rp_reader_cancel(b.r); /* before the open completed */

  /* On a fill: cancel while it runs; the fill goes on without readers. */
  {
    unsigned char *data2 = random_blob(len, 66);
    struct rp_digest d2;
    digest_of(data2, len, 256, &d2);
    f = rp_fill_start(c, &d2, (int64_t)len, false, NULL);
    fake_init(&e.fs);
    e.done = false;
    rd_start(&e, c, NULL, f, 0, -1);
    prod_init(&p, f, data2, len, 1, (size_t)256 * 1024);
    while (e.fs.total == 0)
      uv_run(&loop, UV_RUN_ONCE);
    rp_reader_cancel(e.r);
    assert_int_equal(rp_fill_readers(f), 0);
    run_until_fill_done(f);
    assert_int_equal(rp_fill_state(f), RP_FILL_PUBLISHED); /* 4 MiB < orphan_fill_max */
    prod_close(&p);
    rp_fill_unref(f);
    free(data2);
  }
  fake_close(&a.fs);
  fake_close(&b.fs);
  fake_close(&e.fs);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_false(a.done);
  assert_false(b.done);
  assert_false(e.done);
  close_cache(c);
  fake_free(&a.fs);
  fake_free(&b.fs);
  fake_free(&e.fs);
  free(data);
  rm_rf(dir);
  free(dir);
}

/* A fill whose last reader leaves: larger than orphan_fill_max it stops (the
 * producer hears it), smaller it completes. */
static void test_orphan(void **state) {
  const size_t len = 3 * MIB;
  unsigned char *data = random_blob(len, 7);
  char *dir = make_dir();
  struct rp_cache *c = open_cache(dir, 0, 1 * MIB);
  struct rp_digest d;
  struct producer p;
  struct rd a;
  struct rp_fill *f;

  digest_of(data, len, 256, &d);
  f = rp_fill_start(c, &d, (int64_t)len, false, NULL);
  fake_init(&a.fs);
  a.done = false;
  rd_start(&a, c, NULL, f, 0, -1);
  prod_init(&p, f, data, len, 1, (size_t)128 * 1024);
  while (a.fs.total == 0)
    uv_run(&loop, UV_RUN_ONCE);
  rp_reader_cancel(a.r);
  assert_int_equal(rp_fill_state(f), RP_FILL_FAILED);
  run_until(p.state_cb);
  assert_false(rp_cache_has(c, &d, NULL));
  assert_true(rp_fill_write(f, "x", 1) < 0);
  prod_close(&p);
  rp_fill_unref(f);
  fake_close(&a.fs);
  close_cache(c);
  assert_int_equal(count_files(dir, "tmp"), 0);
  fake_free(&a.fs);
  free(data);
  rm_rf(dir);
  free(dir);
}

/* Objects, repository memberships and tags survive a reopen. */
static void test_reopen(void **state) {
  const size_t len = 1 * MIB + 1;
  unsigned char *blob = random_blob(len, 8);
  const char manifest[] = "{\"schemaVersion\":2,\"mediaType\":\"application/"
                          "vnd.oci.image.manifest.v1+json\"}";
  const char *mt = "application/vnd.oci.image.manifest.v1+json";
  char *dir = make_dir();
  struct rp_cache *c = open_cache(dir, 0, 1ULL << 40);
  struct rp_tag_entry te, got;
  struct rp_object_info info;
  struct rp_digest db, dm;

  digest_of(blob, len, 256, &db);
  digest_of(manifest, strlen(manifest), 256, &dm);
  fill_blob(c, blob, len, &db, false, NULL);
  fill_blob(c, (const unsigned char *)manifest, strlen(manifest), &dm, true, mt);
  rp_cache_note_repo(c, &db, "docker.io", "library/alpine");
  rp_cache_note_repo(c, &dm, "docker.io", "library/alpine");
  rp_cache_note_repo(c, &db, "ghcr.io", "org/tool");
  memset(&te, 0, sizeof te);
  te.digest = dm;
  snprintf(te.media_type, sizeof te.media_type, "%s", mt);
  te.size = strlen(manifest);
  te.checked = 1700000000;
  rp_cache_tag_put(c, "docker.io", "library/alpine", "3.18", mt, &te);
  rp_cache_tag_put(c, "docker.io", "library/alpine", "3.18", "*/*", &te);
  assert_true(rp_cache_in_repo(c, &db, "ghcr.io", "org/tool"));
  assert_false(rp_cache_in_repo(c, &dm, "ghcr.io", "org/tool"));
  close_cache(c);
  /* What is on disk: a WAL-mode database with the rows. */
  {
    const struct {
      const char *sql;
      const char *want;
    } q[] = {
        {"PRAGMA journal_mode", "wal"},
        {"SELECT count(*) FROM objects", "2"},
        {"SELECT count(*) FROM object_repos", "3"},
        {"SELECT count(*) FROM tags", "2"},
        {"SELECT media_type FROM objects WHERE is_manifest = 1", mt},
    };
    char path[4200];
    sqlite3 *sq = NULL;
    snprintf(path, sizeof path, "%s/index.db", dir);
    assert_int_equal(sqlite3_open_v2(path, &sq, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) {
      sqlite3_stmt *st = NULL;
      assert_int_equal(sqlite3_prepare_v2(sq, q[i].sql, -1, &st, NULL), SQLITE_OK);
      assert_int_equal(sqlite3_step(st), SQLITE_ROW);
      assert_string_equal((const char *)sqlite3_column_text(st, 0), q[i].want);
      sqlite3_finalize(st);
    }
    sqlite3_close(sq);
  }

  c = open_cache(dir, 0, 1ULL << 40);
  assert_true(rp_cache_has(c, &db, &info));
  assert_int_equal(info.size, len);
  assert_false(info.is_manifest);
  assert_string_equal(info.media_type, "");
  assert_true(rp_cache_has(c, &dm, &info));
  assert_true(info.is_manifest);
  assert_string_equal(info.media_type, mt);
  assert_int_equal(info.size, strlen(manifest));
  assert_true(info.last_access > 0);
  assert_true(rp_cache_in_repo(c, &db, "docker.io", "library/alpine"));
  assert_true(rp_cache_in_repo(c, &dm, "docker.io", "library/alpine"));
  assert_true(rp_cache_in_repo(c, &db, "ghcr.io", "org/tool"));
  assert_false(rp_cache_in_repo(c, &dm, "ghcr.io", "org/tool"));
  assert_false(rp_cache_in_repo(c, &db, "docker.io", "library/alpinex"));
  assert_true(rp_cache_tag_get(c, "docker.io", "library/alpine", "3.18", mt, &got));
  assert_string_equal(got.digest.hex, dm.hex);
  assert_string_equal(got.media_type, mt);
  assert_int_equal(got.size, strlen(manifest));
  assert_int_equal(got.checked, 1700000000);
  assert_true(rp_cache_tag_get(c, "docker.io", "library/alpine", "3.18", "*/*", &got));
  assert_false(rp_cache_tag_get(c, "docker.io", "library/alpine", "3.19", mt, &got));
  assert_false(rp_cache_tag_get(c, "docker.io", "library/alpine", "3.18", "x", &got));
  /* Update in place and survive again. */
  te.checked = 1800000000;
  rp_cache_tag_put(c, "docker.io", "library/alpine", "3.18", mt, &te);
  close_cache(c);
  c = open_cache(dir, 0, 1ULL << 40);
  assert_true(rp_cache_tag_get(c, "docker.io", "library/alpine", "3.18", mt, &got));
  assert_int_equal(got.checked, 1800000000);
  close_cache(c);
  free(blob);
  rm_rf(dir);
  free(dir);
}

/* Start-up: leftover temp files removed, rows without files dropped, files
 * without rows removed. */
static void test_startup_cleanup(void **state) {
  const size_t len = 200000;
  unsigned char *a = random_blob(len, 9), *b = random_blob(len, 10);
  char *dir = make_dir();
  struct rp_cache *c;
  struct rp_digest da, db, dx;
  char path[4200];
  char *pa, *pb;
  FILE *fp;

  /* A fresh directory with a tmp/ already there. */
  snprintf(path, sizeof path, "%s/tmp", dir);
  assert_int_equal(mkdir(path, 0700), 0);
  snprintf(path, sizeof path, "%s/tmp/abc.partial", dir);
  fp = fopen(path, "w");
  assert_non_null(fp);
  fputs("partial", fp);
  fclose(fp);
  c = open_cache(dir, 0, 1ULL << 40);
  assert_int_equal(count_files(dir, "tmp"), 0);
  digest_of(a, len, 256, &da);
  digest_of(b, len, 256, &db);
  fill_blob(c, a, len, &da, false, NULL);
  fill_blob(c, b, len, &db, false, NULL);
  close_cache(c);

  /* Now: a leftover temp file, b's file gone, a stray file with no row. */
  snprintf(path, sizeof path, "%s/tmp/%s.1234", dir, da.hex);
  fp = fopen(path, "w");
  assert_non_null(fp);
  fputs("leftover", fp);
  fclose(fp);
  pa = blob_path(dir, &da);
  pb = blob_path(dir, &db);
  assert_int_equal(unlink(pb), 0);
  digest_of("stray", 5, 256, &dx);
  {
    char *px = blob_path(dir, &dx);
    char *slash;
    snprintf(path, sizeof path, "%s", px);
    slash = strrchr(path, '/');
    *slash = '\0';
    (void)mkdir(path, 0700);
    fp = fopen(px, "w");
    assert_non_null(fp);
    fputs("stray", fp);
    fclose(fp);
    c = open_cache(dir, 0, 1ULL << 40);
    assert_int_equal(access(px, F_OK), -1);
    free(px);
  }
  assert_int_equal(count_files(dir, "tmp"), 0);
  assert_true(rp_cache_has(c, &da, NULL));
  assert_false(rp_cache_has(c, &db, NULL));
  assert_false(rp_cache_has(c, &dx, NULL));
  assert_true(file_equals(pa, a, len));
  close_cache(c);
  /* The dropped row stays dropped. */
  c = open_cache(dir, 0, 1ULL << 40);
  assert_false(rp_cache_has(c, &db, NULL));
  assert_int_equal(count_files(dir, "blobs"), 1);
  close_cache(c);
  free(pa);
  free(pb);
  free(a);
  free(b);
  rm_rf(dir);
  free(dir);
}

static void test_lock(void **state) {
  char *dir = make_dir();
  struct rp_cache *c = open_cache(dir, 0, 0), *c2 = NULL;
  struct rp_cache_opts o = {.dir = dir, .max_size = 0};
  char want[4200];
  char *err = NULL;
  struct stat st;

  assert_int_equal(rp_cache_open(&loop, &o, &c2, &err), RP_ECONFIG);
  assert_null(c2);
  assert_non_null(err);
  snprintf(want, sizeof want, "cache directory %s is in use by PID %ld", dir, (long)getpid());
  assert_string_equal(err, want);
  free(err);
  err = NULL;
  assert_int_equal(stat(dir, &st), 0);
  snprintf(want, sizeof want, "%s/blobs", dir);
  assert_int_equal(stat(want, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0700);
  close_cache(c);
  /* Released: opens again. */
  c = open_cache(dir, 0, 0);
  close_cache(c);
  rm_rf(dir);
  free(dir);
}

/* Another process holds the directory (the message names it) and is killed
 * with SIGKILL in the middle of a fill: the lock is free again, the partial
 * temp file is removed at the next open and nothing was published. */
/* A damaged index.db (overwritten, truncated) is moved aside and the cache
 * starts empty; its files go, as they have no row; the next open is normal. */
static void test_damaged_index(void **state) {
  const size_t len = 300000;
  unsigned char *data = random_blob(len, 23);
  char *dir = make_dir();
  char index[4200], aside[4200];
  struct rp_cache *c;
  struct rp_digest d;
  struct stat st;

  (void)state;
  digest_of(data, len, 256, &d);
  snprintf(index, sizeof index, "%s/index.db", dir);
  snprintf(aside, sizeof aside, "%s/index.db.damaged", dir);
  for (int kind = 0; kind < 2; kind++) {
    FILE *fp;
    c = open_cache(dir, 0, 1ULL << 40);
    fill_blob(c, data, len, &d, false, NULL);
    close_cache(c);
    assert_int_equal(stat(index, &st), 0);
    if (kind == 0) {
      fp = fopen(index, "r+b");
      assert_non_null(fp);
      assert_int_equal(fwrite(data, 1, 4096, fp), 4096);
      fclose(fp);
    } else {
      assert_int_equal(truncate(index, st.st_size / 2), 0);
    }
    (void)unlink(aside);
    c = open_cache(dir, 0, 1ULL << 40);
    assert_int_equal(stat(aside, &st), 0);
    assert_false(rp_cache_has(c, &d, NULL));
    assert_int_equal(count_files(dir, "blobs"), 0);
    fill_blob(c, data, len, &d, false, NULL);
    close_cache(c);
    assert_int_equal(unlink(aside), 0);
    c = open_cache(dir, 0, 1ULL << 40);
    assert_true(rp_cache_has(c, &d, NULL));
    assert_int_not_equal(stat(aside, &st), 0);
    close_cache(c);
  }
  free(data);
  rm_rf(dir);
  free(dir);
}

/* An index whose quick_check failed in the index writer of an earlier run
 * (index.db.check-failed next to it) is set aside at the next open like one
 * found damaged there. */
static void test_check_failed_index_set_aside(void **state) {
  const size_t len = 50000;
  unsigned char *data = random_blob(len, 91);
  char *dir = make_dir();
  char marker[4200], aside[4200];
  struct rp_cache *c;
  struct rp_digest d;
  struct stat st;
  FILE *fp;

  (void)state;
  digest_of(data, len, 256, &d);
  c = open_cache(dir, 0, 1ULL << 40);
  fill_blob(c, data, len, &d, false, NULL);
  close_cache(c);
  snprintf(marker, sizeof marker, "%s/index.db.check-failed", dir);
  snprintf(aside, sizeof aside, "%s/index.db.damaged", dir);
  fp = fopen(marker, "w");
  assert_non_null(fp);
  fclose(fp);
  c = open_cache(dir, 0, 1ULL << 40);
  assert_int_equal(stat(aside, &st), 0);
  assert_int_not_equal(stat(marker, &st), 0);
  assert_false(rp_cache_has(c, &d, NULL));
  assert_int_equal(count_files(dir, "blobs"), 0);
  close_cache(c);
  free(data);
  rm_rf(dir);
  free(dir);
}

/* defer_file_check (a server's open): the files are checked on the thread
 * pool after the open returned. A row whose file went is dropped, a stray
 * file from before the open is removed, a file written since (by this run)
 * is left alone. */
static void test_deferred_file_check(void **state) {
  const size_t len = 100000;
  unsigned char *a = random_blob(len, 81), *b = random_blob(len, 82);
  char *dir = make_dir();
  struct rp_cache_opts o = {.dir = dir, .orphan_fill_max = 1ULL << 40, .defer_file_check = true};
  struct rp_digest da, db, dx, dy;
  struct rp_cache *c = NULL;
  struct timeval old[2] = {{.tv_sec = 1000000000}, {.tv_sec = 1000000000}};
  char *pa, *pb, *px, *py, *err = NULL;
  char path[4200], *slash;
  FILE *fp;

  (void)state;
  digest_of(a, len, 256, &da);
  digest_of(b, len, 256, &db);
  c = open_cache(dir, 0, 1ULL << 40);
  fill_blob(c, a, len, &da, false, NULL);
  fill_blob(c, b, len, &db, false, NULL);
  close_cache(c);
  pa = blob_path(dir, &da);
  pb = blob_path(dir, &db);
  assert_int_equal(unlink(pb), 0);
  digest_of("stray", 5, 256, &dx);
  digest_of("fresh", 5, 256, &dy);
  px = blob_path(dir, &dx);
  py = blob_path(dir, &dy);
  snprintf(path, sizeof path, "%s", px);
  slash = strrchr(path, '/');
  *slash = '\0';
  (void)mkdir(path, 0700);
  fp = fopen(px, "w");
  assert_non_null(fp);
  fputs("stray", fp);
  fclose(fp);
  assert_int_equal(utimes(px, old), 0); /* from an earlier run */

  assert_int_equal(rp_cache_open(&loop, &o, &c, &err), 0);
  /* Not checked yet: the open did not look at the files. */
  assert_true(c->scanning);
  assert_true(rp_cache_has(c, &db, NULL));
  assert_int_equal(access(px, F_OK), 0);
  /* Written by this run while the listing runs: never a stray. */
  snprintf(path, sizeof path, "%s", py);
  slash = strrchr(path, '/');
  *slash = '\0';
  (void)mkdir(path, 0700);
  fp = fopen(py, "w");
  assert_non_null(fp);
  fputs("fresh", fp);
  fclose(fp);
  while (c->scanning)
    uv_run(&loop, UV_RUN_ONCE);
  assert_true(rp_cache_has(c, &da, NULL));
  assert_false(rp_cache_has(c, &db, NULL));
  assert_true(file_equals(pa, a, len));
  close_cache(c);
  assert_int_equal(access(px, F_OK), -1);
  assert_int_equal(access(py, F_OK), 0);
  /* The dropped row stays dropped. */
  c = open_cache(dir, 0, 1ULL << 40);
  assert_false(rp_cache_has(c, &db, NULL));
  assert_true(rp_cache_has(c, &da, NULL));
  close_cache(c);
  free(err);
  free(pa);
  free(pb);
  free(px);
  free(py);
  free(a);
  free(b);
  rm_rf(dir);
  free(dir);
}

static void test_crash_restart(void **state) {
  const size_t len = 8 * MIB;
  unsigned char *data = random_blob(len, 16);
  char *dir = make_dir();
  struct rp_cache_opts o = {.dir = dir, .max_size = 0, .orphan_fill_max = 1ULL << 40};
  struct rp_cache *c = NULL;
  struct rp_digest d;
  char want[4200];
  char *err = NULL;
  int ready[2];
  int status;
  char b;
  pid_t pid;

  digest_of(data, len, 256, &d);
  assert_int_equal(pipe(ready), 0);
  pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    /* The child: its own loop, half a fill on disk, then wait to be killed. */
    uv_loop_t cl;
    struct rp_cache *cc = NULL;
    struct rp_fill *f;
    if (uv_loop_init(&cl) != 0 || rp_cache_open(&cl, &o, &cc, NULL) != 0)
      _exit(1);
    f = rp_fill_start(cc, &d, (int64_t)len, false, NULL);
    if (f == NULL || rp_fill_write(f, (const char *)data, 3 * MIB) != 0)
      _exit(1);
    while (rp_fill_committed(f) < 3 * MIB)
      uv_run(&cl, UV_RUN_ONCE);
    if (write(ready[1], "r", 1) != 1)
      _exit(1);
    for (;;)
      pause();
  }
  close(ready[1]);
  assert_int_equal(read(ready[0], &b, 1), 1);
  close(ready[0]);
  assert_int_equal(count_files(dir, "tmp"), 1);
  assert_int_equal(rp_cache_open(&loop, &o, &c, &err), RP_ECONFIG);
  snprintf(want, sizeof want, "cache directory %s is in use by PID %ld", dir, (long)pid);
  assert_string_equal(err, want);
  free(err);
  assert_int_equal(kill(pid, SIGKILL), 0);
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFSIGNALED(status));

  c = open_cache(dir, 0, 1ULL << 40);
  assert_int_equal(count_files(dir, "tmp"), 0);
  assert_int_equal(count_files(dir, "blobs"), 0);
  assert_false(rp_cache_has(c, &d, NULL));
  /* And the next fill of that digest works. */
  fill_blob(c, data, len, &d, false, NULL);
  assert_true(rp_cache_has(c, &d, NULL));
  close_cache(c);
  free(data);
  rm_rf(dir);
  free(dir);
}

/* LRU eviction keeps the newest and never evicts an object being read. */
static void test_eviction(void **state) {
  const size_t len = 1 * MIB;
  unsigned char *blobs[4];
  struct rp_digest d[4];
  char *dir = make_dir();
  struct rp_cache *c = open_cache(dir, 2 * MIB + MIB / 2, 1ULL << 40);
  struct rp_cache_stats st;
  struct rd a;

  for (int i = 0; i < 4; i++) {
    blobs[i] = random_blob(len, 20 + (uint64_t)i);
    digest_of(blobs[i], len, 256, &d[i]);
  }
  fill_blob(c, blobs[0], len, &d[0], false, NULL); /* A */
  fill_blob(c, blobs[1], len, &d[1], false, NULL); /* B */
  /* A slow reader pins A (and makes it the most recent). */
  fake_init(&a.fs);
  a.done = false;
  a.fs.slow_ms = 50;
  rd_start(&a, c, &d[0], NULL, 0, -1);
  fill_blob(c, blobs[2], len, &d[2], false, NULL); /* C: B goes */
  assert_true(rp_cache_has(c, &d[0], NULL));
  assert_false(rp_cache_has(c, &d[1], NULL));
  assert_true(rp_cache_has(c, &d[2], NULL));
  fill_blob(c, blobs[3], len, &d[3], false, NULL); /* D: A is oldest but pinned, C goes */
  assert_true(rp_cache_has(c, &d[0], NULL));
  assert_false(rp_cache_has(c, &d[2], NULL));
  assert_true(rp_cache_has(c, &d[3], NULL));
  assert_false(a.done);
  rp_cache_stats(c, &st);
  assert_int_equal(st.evictions, 2);
  assert_int_equal(st.objects, 2);
  assert_int_equal(st.size_bytes, 2 * len);
  run_until(a.done);
  assert_int_equal(a.status, 0);
  assert_int_equal(a.fs.len, len);
  assert_memory_equal(a.fs.buf, blobs[0], len);
  fake_close(&a.fs);
  close_cache(c);
  assert_int_equal(count_files(dir, "blobs"), 2);
  c = open_cache(dir, 2 * MIB + MIB / 2, 1ULL << 40);
  assert_true(rp_cache_has(c, &d[0], NULL));
  assert_false(rp_cache_has(c, &d[1], NULL));
  assert_false(rp_cache_has(c, &d[2], NULL));
  assert_true(rp_cache_has(c, &d[3], NULL));
  close_cache(c);
  /* A smaller bound at open evicts the least recently used. */
  c = open_cache(dir, MIB, 1ULL << 40);
  rp_cache_stats(c, &st);
  assert_int_equal(st.objects, 1);
  close_cache(c);
  fake_free(&a.fs);
  for (int i = 0; i < 4; i++)
    free(blobs[i]);
  rm_rf(dir);
  free(dir);
}

/* ENOSPC mid-fill (injected): readers still get every byte, nothing is
 * published, the temp file is gone. With a slow reader the in-memory window
 * fills and the producer waits for it. */
static void test_disk_error(void **state) {
  enum { N = 3 };
  const size_t len = 40 * MIB + 5;
  unsigned char *data = random_blob(len, 11);
  char *dir = make_dir();
  struct rp_cache *c = open_cache(dir, 0, 1ULL << 40);
  struct rp_digest d;
  struct producer p;
  struct rd rds[N];
  bool *flags[N];
  struct rp_fill *f;

  digest_of(data, len, 256, &d);
  rp__cache_faults.write_err = UV_ENOSPC;
  rp__cache_faults.write_err_at = 3 * MIB;
  f = rp_fill_start(c, &d, (int64_t)len, false, NULL);
  assert_non_null(f);
  for (int i = 0; i < N; i++) {
    fake_init(&rds[i].fs);
    rds[i].done = false;
    rds[i].fs.slow_ms = i == 0 ? 1 : 0;
    rd_start(&rds[i], c, NULL, f, i == 2 ? 1000 : 0, -1);
    flags[i] = &rds[i].done;
  }
  prod_init(&p, f, data, len, 0, 4 * MIB);
  run_until_all(flags, N);
  for (int i = 0; i < N; i++) {
    size_t off = i == 2 ? 1000 : 0;
    assert_int_equal(rds[i].status, 0);
    assert_int_equal(rds[i].fs.len, len - off);
    assert_memory_equal(rds[i].fs.buf, data + off, len - off);
    fake_close(&rds[i].fs);
  }
  assert_true(rp_fill_disk_failed(f));
  assert_int_equal(rp_fill_state(f), RP_FILL_FAILED);
  assert_true(p.againes > 0); /* the window held the producer back */
  assert_false(rp_cache_has(c, &d, NULL));
  prod_close(&p);
  rp_fill_unref(f);
  close_cache(c);
  assert_int_equal(count_files(dir, "blobs"), 0);
  assert_int_equal(count_files(dir, "tmp"), 0);
  for (int i = 0; i < N; i++)
    fake_free(&rds[i].fs);

  /* A disk error with no reader attached ends the fill; the producer hears it. */
  rm_rf(dir);
  c = open_cache(dir, 0, 1ULL << 40);
  rp__cache_faults.write_err_at = 0;
  f = rp_fill_start(c, &d, (int64_t)len, false, NULL);
  prod_init(&p, f, data, len, 1, 1 * MIB);
  run_until(p.state_cb);
  assert_int_equal(rp_fill_state(f), RP_FILL_FAILED);
  assert_true(rp_fill_disk_failed(f));
  prod_close(&p);
  rp_fill_unref(f);
  close_cache(c);
  assert_int_equal(count_files(dir, "tmp"), 0);
  free(data);
  rm_rf(dir);
  free(dir);
}

/* Closing the cache with a fill running: the fill fails, its producer hears
 * it, nothing is kept. */
static void test_close_with_fill(void **state) {
  const size_t len = 2 * MIB;
  unsigned char *data = random_blob(len, 12);
  char *dir = make_dir();
  struct rp_cache *c = open_cache(dir, 0, 1ULL << 40);
  struct rp_digest d;
  struct producer p;
  struct rp_fill *f;

  digest_of(data, len, 256, &d);
  f = rp_fill_start(c, &d, (int64_t)len, false, NULL);
  prod_init(&p, f, data, len, 1, (size_t)64 * 1024);
  uv_run(&loop, UV_RUN_ONCE);
  rp_cache_close(c);
  assert_int_equal(rp_fill_state(f), RP_FILL_FAILED);
  run_until(p.state_cb);
  prod_close(&p);
  rp_fill_unref(f);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(count_files(dir, "tmp"), 0);
  assert_int_equal(count_files(dir, "blobs"), 0);
  free(data);
  rm_rf(dir);
  free(dir);
}

/* RP_CACHE_BENCH=1: a 1 GiB fill with one reader attached, then a 1 GiB read
 * of the published file. */
static void test_bench(void **state) {
  const size_t len = 1024ULL * MIB;
  const char *direnv = getenv("RP_CACHE_BENCH_DIR");
  unsigned char *data;
  char *dir;
  struct rp_cache *c;
  struct rp_digest d;
  struct rd rd;
  struct producer p;
  struct rp_fill *f;
  EVP_MD_CTX *md;
  unsigned char mdv[EVP_MAX_MD_SIZE];
  unsigned int mdlen;
  char s[80];
  uint64_t t0, t1;
  int k;

  if (getenv("RP_CACHE_BENCH") == NULL) {
    skip();
    return;
  }
  data = random_blob(len, 13);
  md = EVP_MD_CTX_new();
  EVP_DigestInit_ex(md, EVP_sha256(), NULL);
  EVP_DigestUpdate(md, data, len);
  EVP_DigestFinal_ex(md, mdv, &mdlen);
  EVP_MD_CTX_free(md);
  k = snprintf(s, sizeof s, "sha256:");
  for (unsigned i = 0; i < mdlen; i++)
    k += snprintf(s + k, sizeof s - (size_t)k, "%02x", mdv[i]);
  assert_int_equal(rp_digest_parse(s, (size_t)k, &d), 0);
  if (direnv != NULL) {
    char tmpl[4096];
    snprintf(tmpl, sizeof tmpl, "%s/rp_bench.XXXXXX", direnv);
    dir = strdup(mkdtemp(tmpl));
  } else {
    dir = make_dir();
  }
  c = open_cache(dir, 0, 1ULL << 40);

  f = rp_fill_start(c, &d, (int64_t)len, false, NULL);
  fake_init(&rd.fs);
  rd.done = false;
  rd.fs.discard = true;
  rd_start(&rd, c, NULL, f, 0, -1);
  t0 = uv_hrtime();
  prod_init(&p, f, data, len, 0, 1 * MIB);
  p.piece = (size_t)64 * 1024;
  run_until(rd.done);
  t1 = uv_hrtime();
  assert_int_equal(rd.status, 0);
  assert_int_equal(rd.fs.total, len);
  assert_int_equal(rp_fill_state(f), RP_FILL_PUBLISHED);
  print_message(
      "bench: 1 GiB fill (sha256, write, fsync, publish) + 1 reader: %.0f MB/s (%.2f s)\n",
      (double)len / 1e6 / ((double)(t1 - t0) / 1e9), (double)(t1 - t0) / 1e9);
  prod_close(&p);
  rp_fill_unref(f);
  fake_close(&rd.fs);

  fake_init(&rd.fs);
  rd.done = false;
  rd.fs.discard = true;
  t0 = uv_hrtime();
  rd_start(&rd, c, &d, NULL, 0, -1);
  run_until(rd.done);
  t1 = uv_hrtime();
  assert_int_equal(rd.status, 0);
  assert_int_equal(rd.fs.total, len);
  print_message("bench: 1 GiB read of the published file (page cache): %.0f MB/s (%.2f s)\n",
                (double)len / 1e6 / ((double)(t1 - t0) / 1e9), (double)(t1 - t0) / 1e9);
  fake_close(&rd.fs);
  close_cache(c);
  free(data);
  rm_rf(dir);
  free(dir);
}

/* ---- who may receive what: the tables it rests on (contract §3) ---- */

static void on_published_count(struct rp_fill *f, void *data) {
  (void)f;
  (*(int *)data)++;
}

static int count_rows(const char *dir, const char *sql) {
  char path[4200];
  sqlite3 *sq = NULL;
  sqlite3_stmt *st = NULL;
  int n;

  snprintf(path, sizeof path, "%s/index.db", dir);
  assert_int_equal(sqlite3_open_v2(path, &sq, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_prepare_v2(sq, sql, -1, &st, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  n = sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(sq);
  return n;
}

/* A membership is recorded only for a published (verified) object, goes
 * with it, and a fill records its own only once it published. */
static void test_membership_follows_objects(void **state) {
  const size_t len = 64 * 1024;
  unsigned char *a = random_blob(len, 70), *b = random_blob(len, 71);
  const char manifest[] = "{\"schemaVersion\":2}";
  const char *mt = "application/vnd.oci.image.manifest.v1+json";
  char *dir = make_dir();
  struct rp_cache *c = open_cache(dir, 0, 1ULL << 40);
  struct rp_digest da, db, dm;
  struct rp_tag_entry te;
  struct producer p;
  struct rp_fill *f;
  int published = 0;
  (void)state;

  digest_of(a, len, 256, &da);
  digest_of(b, len, 256, &db);
  digest_of(manifest, strlen(manifest), 256, &dm);
  /* Not published: nothing to belong anywhere. */
  rp_cache_note_repo(c, &da, "docker.io", "evil/x");
  assert_false(rp_cache_in_repo(c, &da, "docker.io", "evil/x"));
  /* A fill that fails records nothing, and its watcher is never called. */
  f = rp_fill_start(c, &da, (int64_t)len, false, NULL);
  assert_non_null(f);
  rp_fill_note_repo(f, "docker.io", "evil/x");
  rp_fill_on_published(f, on_published_count, &published);
  rp_fill_abort(f, "test");
  rp_fill_unref(f);
  uv_run(&loop, UV_RUN_NOWAIT);
  /* The same digest published through another repository. */
  f = rp_fill_start(c, &da, (int64_t)len, false, NULL);
  assert_non_null(f);
  rp_fill_note_repo(f, "docker.io", "good/y");
  rp_fill_note_repo(f, "docker.io", "good/y");
  rp_fill_on_published(f, on_published_count, &published);
  assert_false(rp_cache_in_repo(c, &da, "docker.io", "good/y"));
  prod_init(&p, f, a, len, 0, 8 * MIB);
  run_until_fill_done(f);
  assert_int_equal(rp_fill_state(f), RP_FILL_PUBLISHED);
  for (int spins = 0; published < 1 && spins < 1000; spins++)
    uv_run(&loop, UV_RUN_ONCE);
  assert_int_equal(published, 1);
  prod_close(&p);
  rp_fill_unref(f);
  assert_true(rp_cache_in_repo(c, &da, "docker.io", "good/y"));
  assert_false(rp_cache_in_repo(c, &da, "docker.io", "evil/x"));
  assert_true(rp_cache_knows_registry(c, "docker.io"));
  /* A cleared watcher is not called. */
  f = rp_fill_start(c, &db, (int64_t)len, false, NULL);
  rp_fill_on_published(f, on_published_count, &published);
  rp_fill_on_published(f, NULL, NULL);
  prod_init(&p, f, b, len, 0, 8 * MIB);
  run_until_fill_done(f);
  prod_close(&p);
  rp_fill_unref(f);
  uv_run(&loop, UV_RUN_NOWAIT);
  assert_int_equal(published, 1);
  /* A manifest and a tag naming it; removing the manifest takes both along. */
  fill_blob(c, (const unsigned char *)manifest, strlen(manifest), &dm, true, mt);
  rp_cache_note_repo(c, &dm, "docker.io", "good/y");
  memset(&te, 0, sizeof te);
  te.digest = dm;
  snprintf(te.media_type, sizeof te.media_type, "%s", mt);
  te.checked = 1700000000;
  rp_cache_tag_put(c, "docker.io", "good/y", "1", "", &te);
  assert_true(rp_cache_tag_get(c, "docker.io", "good/y", "1", "", NULL));
  assert_int_equal(rp_cache_remove(c, &dm), 0);
  assert_false(rp_cache_in_repo(c, &dm, "docker.io", "good/y"));
  assert_false(rp_cache_tag_get(c, "docker.io", "good/y", "1", "", NULL));
  close_cache(c);
  assert_int_equal(count_rows(dir, "SELECT count(*) FROM object_repos"), 1);
  assert_int_equal(count_rows(dir, "SELECT count(*) FROM tags"), 0);
  c = open_cache(dir, 0, 1ULL << 40);
  assert_true(rp_cache_in_repo(c, &da, "docker.io", "good/y"));
  assert_false(rp_cache_in_repo(c, &dm, "docker.io", "good/y"));
  close_cache(c);
  free(a);
  free(b);
  rm_rf(dir);
  free(dir);
}

/* Tag memory keeps the most recently confirmed RP_CACHE_TAGS_MAX entries,
 * in memory and in the index; public answers survive a restart. */
static void test_bounded_tables(void **state) {
  char *dir = make_dir();
  struct rp_cache *c = open_cache(dir, 0, 1ULL << 40);
  struct rp_tag_entry te;
  bool pub;
  int64_t when;
  char tag[32];
  (void)state;

  memset(&te, 0, sizeof te);
  digest_of("x", 1, 256, &te.digest);
  snprintf(te.media_type, sizeof te.media_type, "application/vnd.oci.image.index.v1+json");
  for (int i = 0; i < RP_CACHE_TAGS_MAX + 100; i++) {
    snprintf(tag, sizeof tag, "t%d", i);
    te.checked = 1700000000 + i;
    rp_cache_tag_put(c, "docker.io", "library/alpine", tag, "", &te);
  }
  assert_false(rp_cache_tag_get(c, "docker.io", "library/alpine", "t0", "", NULL));
  assert_false(rp_cache_tag_get(c, "docker.io", "library/alpine", "t99", "", NULL));
  assert_true(rp_cache_tag_get(c, "docker.io", "library/alpine", "t100", "", NULL));
  snprintf(tag, sizeof tag, "t%d", RP_CACHE_TAGS_MAX + 99);
  assert_true(rp_cache_tag_get(c, "docker.io", "library/alpine", tag, "", NULL));
  rp_cache_public_put(c, "docker.io", "library/alpine", true, 1700000000);
  rp_cache_public_put(c, "docker.io", "private/app", false, 1700000001);
  assert_false(rp_cache_public_get(c, "docker.io", "library/other", &pub, &when));
  close_cache(c);
  /* The tags refer to no object: the index drops them at the next open. */
  assert_int_equal(count_rows(dir, "SELECT count(*) FROM tags"), RP_CACHE_TAGS_MAX);
  c = open_cache(dir, 0, 1ULL << 40);
  assert_false(rp_cache_tag_get(c, "docker.io", "library/alpine", tag, "", NULL));
  assert_true(rp_cache_public_get(c, "docker.io", "library/alpine", &pub, &when));
  assert_true(pub);
  assert_int_equal(when, 1700000000);
  assert_true(rp_cache_public_get(c, "docker.io", "private/app", &pub, &when));
  assert_false(pub);
  close_cache(c);
  assert_int_equal(count_rows(dir, "SELECT count(*) FROM tags"), 0);
  rm_rf(dir);
  free(dir);
}

/* A fill larger than the cache, past the running fills' share of it, or
 * beyond RP_CACHE_FILLS_MAX at once is refused (the caller relays). */
static void test_fills_bounded(void **state) {
  char *dir = make_dir();
  struct rp_cache *c = open_cache(dir, 10 * MIB, 1ULL << 40);
  struct rp_fill *f[RP_CACHE_FILLS_MAX + 1];
  struct rp_digest d;
  char seed[16];
  (void)state;

  digest_of("big", 3, 256, &d);
  assert_null(rp_fill_start(c, &d, 10 * MIB + 1, false, NULL));
  f[0] = rp_fill_start(c, &d, 6 * MIB, false, NULL);
  assert_non_null(f[0]);
  digest_of("big2", 4, 256, &d);
  assert_null(rp_fill_start(c, &d, 5 * MIB, false, NULL)); /* 6 + 5 > 10 */
  f[1] = rp_fill_start(c, &d, 4 * MIB, false, NULL);
  assert_non_null(f[1]);
  rp_fill_abort(f[0], "test");
  rp_fill_abort(f[1], "test");
  rp_fill_unref(f[0]);
  rp_fill_unref(f[1]);
  digest_of("big3", 4, 256, &d);
  f[0] = rp_fill_start(c, &d, 10 * MIB, false, NULL); /* room again */
  assert_non_null(f[0]);
  rp_fill_abort(f[0], "test");
  rp_fill_unref(f[0]);
  for (int i = 0; i < RP_CACHE_FILLS_MAX + 1; i++) {
    snprintf(seed, sizeof seed, "n%d", i);
    digest_of(seed, strlen(seed), 256, &d);
    f[i] = rp_fill_start(c, &d, 1, false, NULL);
    if (i < RP_CACHE_FILLS_MAX)
      assert_non_null(f[i]);
    else
      assert_null(f[i]);
  }
  for (int i = 0; i < RP_CACHE_FILLS_MAX; i++) {
    rp_fill_abort(f[i], "test");
    rp_fill_unref(f[i]);
  }
  uv_run(&loop, UV_RUN_NOWAIT);
  close_cache(c);
  rm_rf(dir);
  free(dir);
}

/* ---- maintenance while serving (the admin endpoints) ---- */

struct vres {
  bool done;
  int status;
  struct rp_digest d;
};

struct evicted_seen {
  struct rp_digest d[4];
  uint64_t bytes;
  int n;
};

static bool on_evicted(const struct rp_object_info *info, void *data) {
  struct evicted_seen *e = data;

  if (e->n < 4)
    e->d[e->n] = info->digest;
  e->n++;
  e->bytes += info->size;
  return true;
}

static void on_vdone(struct rp_cache *c, const struct rp_digest *d, int status, void *data) {
  struct vres *v = data;
  (void)c;
  v->done = true;
  v->status = status;
  v->d = *d;
}

struct fres {
  bool done;
  int status;
  const char *gone; /* a path that must be gone when the flush reports */
  bool was_gone;
};

static void on_fdone(struct rp_cache *c, int status, void *data) {
  struct fres *f = data;
  struct stat st;
  (void)c;
  f->done = true;
  f->status = status;
  f->was_gone = f->gone == NULL || stat(f->gone, &st) != 0;
}

/* The lock file names the owner's PID, then its admin URL; a digest is
 * re-hashed on the thread pool while pinned; a flush reports once removals
 * are on disk; evict_to trims once and leaves the bound alone; a cache closed
 * under a running verification cancels it and waits for its report. */
static void test_maintenance(void **state) {
  const size_t len = 1 * MIB;
  unsigned char *blobs[3];
  struct rp_digest d[3], unknown;
  char *dir = make_dir();
  struct rp_cache *c = open_cache(dir, 0, 1ULL << 40), *c2 = NULL;
  struct rp_cache_opts o = {.dir = dir};
  struct rp_cache_owner own;
  struct rp_cache_stats st;
  struct vres v = {0};
  struct fres f = {0};
  char want[4200];
  char *err = NULL, *path;
  uint64_t freed = 0;
  unsigned char x;
  int fd;

  for (int i = 0; i < 3; i++) {
    blobs[i] = random_blob(len, 40 + (uint64_t)i);
    digest_of(blobs[i], len, 256, &d[i]);
    fill_blob(c, blobs[i], len, &d[i], false, NULL);
  }
  digest_of("x", 1, 256, &unknown);

  /* The owner's address. */
  assert_int_equal(rp_cache_owner_read(dir, &own), 0);
  assert_int_equal(own.pid, (long)getpid());
  assert_string_equal(own.admin, "");
  assert_int_equal(rp_cache_set_owner(c, "http://[2001:db8::1234:5678]:20800"), 0);
  assert_int_equal(rp_cache_set_owner(c, "http://127.0.0.1:2080"), 0);
  assert_int_equal(rp_cache_owner_read(dir, &own), 0);
  assert_int_equal(own.pid, (long)getpid());
  assert_string_equal(own.admin, "http://127.0.0.1:2080");
  snprintf(want, sizeof want, "%s/lock", dir);
  fd = open(want, O_RDONLY);
  assert_true(fd >= 0);
  {
    char buf[128];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    assert_true(n > 0);
    buf[n] = '\0';
    snprintf(want, sizeof want, "%ld\nadmin=http://127.0.0.1:2080\n", (long)getpid());
    assert_string_equal(buf, want);
  }
  close(fd);
  assert_int_equal(rp_cache_set_owner(c, "http://a b"), RP_EINVAL);
  assert_int_equal(rp_cache_set_owner(c, "http://a\nadmin=http://evil"), RP_EINVAL);
  assert_int_equal(rp_cache_set_owner(c, "file:///etc/passwd"), RP_EINVAL);
  assert_int_equal(rp_cache_open(&loop, &o, &c2, &err), RP_ECONFIG);
  snprintf(want, sizeof want, "cache directory %s is in use by PID %ld", dir, (long)getpid());
  assert_string_equal(err, want);
  free(err);

  /* An intact object. */
  assert_int_equal(rp_cache_verify_start(c, &d[0], on_vdone, &v), 0);
  assert_false(v.done);
  run_until(v.done);
  assert_int_equal(v.status, 0);
  assert_memory_equal(&v.d, &d[0], sizeof v.d);
  assert_int_equal(rp_cache_verify_start(c, &unknown, on_vdone, &v), RP_EINVAL);

  /* A corrupt one: pinned while hashed, removable afterwards. */
  path = blob_path(dir, &d[1]);
  fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  assert_int_equal(pread(fd, &x, 1, 4096), 1);
  x ^= 0xff;
  assert_int_equal(pwrite(fd, &x, 1, 4096), 1);
  close(fd);
  memset(&v, 0, sizeof v);
  assert_int_equal(rp_cache_verify_start(c, &d[1], on_vdone, &v), 0);
  assert_int_equal(rp_cache_remove(c, &d[1]), RP_EDENIED);
  assert_int_equal(rp_cache_evict_to(c, 1, NULL), 2); /* all but the pinned one */
  assert_true(rp_cache_has(c, &d[1], NULL));
  run_until(v.done);
  assert_int_equal(v.status, RP_EDIGEST);
  rp_cache_stats(c, &st);
  assert_int_equal(st.digest_mismatches, 1);
  assert_int_equal(rp_cache_remove(c, &d[1]), 0);
  f.gone = path;
  assert_int_equal(rp_cache_flush(c, on_fdone, &f), 0);
  assert_false(f.done);
  run_until(f.done);
  assert_int_equal(f.status, 0);
  assert_true(f.was_gone);
  assert_int_equal(count_files(dir, "blobs"), 0);
  free(path);

  /* evict_to leaves the bound as it was (0: none), trim sets it. */
  for (int i = 0; i < 3; i++)
    fill_blob(c, blobs[i], len, &d[i], false, NULL);
  assert_int_equal(rp_cache_evict_to(c, 2 * MIB, &freed), 1);
  assert_int_equal(freed, len);
  assert_false(rp_cache_has(c, &d[0], NULL)); /* the least recently used */
  assert_int_equal(rp_cache_evict_to(c, 0, &freed), 0);
  rp_cache_stats(c, &st);
  assert_int_equal(st.max_size, 0);
  assert_int_equal(st.objects, 2);
  fill_blob(c, blobs[0], len, &d[0], false, NULL);
  rp_cache_stats(c, &st);
  assert_int_equal(st.objects, 3);
  assert_int_equal(rp_cache_trim(c, 2 * MIB, NULL), 1);
  rp_cache_stats(c, &st);
  assert_int_equal(st.max_size, 2 * MIB);
  /* evict_each names what it evicted, least recently used first. */
  {
    struct evicted_seen e;
    memset(&e, 0, sizeof e);
    assert_int_equal(rp_cache_evict_each(c, len, &freed, on_evicted, &e), 1);
    assert_int_equal(e.n, 1);
    assert_memory_equal(&e.d[0], &d[2], sizeof e.d[0]);
    assert_int_equal(e.bytes, len);
    assert_int_equal(freed, len);
    assert_true(rp_cache_has(c, &d[0], NULL));
  }

  /* Closed while a verification runs: it is cancelled (unless it was done
   * already) and reports, then the cache goes. */
  memset(&v, 0, sizeof v);
  assert_int_equal(rp_cache_verify_start(c, &d[0], on_vdone, &v), 0);
  rp_cache_close(c);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_true(v.done);
  assert_true(v.status == UV_ECANCELED || v.status == 0);
  c = open_cache(dir, 0, 0); /* the lock was released */
  assert_int_equal(rp_cache_flush(c, on_fdone, &f), 0);
  rp_cache_close(c);
  memset(&f, 0, sizeof f);
  assert_int_equal(rp_cache_flush(c, on_fdone, &f), RP_EINVAL); /* closing */
  uv_run(&loop, UV_RUN_DEFAULT);
  for (int i = 0; i < 3; i++)
    free(blobs[i]);
  rm_rf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_digest_parse),
      cmocka_unit_test_setup_teardown(test_fill_publish_read, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sha512, setup, teardown),
      cmocka_unit_test_setup_teardown(test_range, setup, teardown),
      cmocka_unit_test_setup_teardown(test_many_readers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wrong_digest, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wrong_size, setup, teardown),
      cmocka_unit_test_setup_teardown(test_abort, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unknown_size, setup, teardown),
      cmocka_unit_test_setup_teardown(test_client_error, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
      cmocka_unit_test_setup_teardown(test_orphan, setup, teardown),
      cmocka_unit_test_setup_teardown(test_reopen, setup, teardown),
      cmocka_unit_test_setup_teardown(test_startup_cleanup, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lock, setup, teardown),
      cmocka_unit_test_setup_teardown(test_crash_restart, setup, teardown),
      cmocka_unit_test_setup_teardown(test_damaged_index, setup, teardown),
      cmocka_unit_test_setup_teardown(test_deferred_file_check, setup, teardown),
      cmocka_unit_test_setup_teardown(test_check_failed_index_set_aside, setup, teardown),
      cmocka_unit_test_setup_teardown(test_eviction, setup, teardown),
      cmocka_unit_test_setup_teardown(test_membership_follows_objects, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bounded_tables, setup, teardown),
      cmocka_unit_test_setup_teardown(test_fills_bounded, setup, teardown),
      cmocka_unit_test_setup_teardown(test_disk_error, setup, teardown),
      cmocka_unit_test_setup_teardown(test_close_with_fill, setup, teardown),
      cmocka_unit_test_setup_teardown(test_maintenance, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bench, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
