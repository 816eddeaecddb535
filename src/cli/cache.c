/* `regproxy cache ls|du|verify|gc|rm <digest>` (contract §4, §3 "One owner per
 * cache directory"). Direct mode: the command opens the cache directory
 * itself (taking its lock). When a running regproxy holds the lock, the
 * command asks that instance through the admin URL it recorded in the lock
 * file instead (docs/admin.md), with the same output and exit codes. */
#include <curl/curl.h>
#include <dirent.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "regproxy/cache.h"
#include "regproxy/cli.h"
#include "regproxy/config.h"
#include "regproxy/error.h"

#define CACHE_USAGE                                                                                \
  "usage: regproxy cache ls|du|verify|gc|rm <digest> [--cache-dir DIR] [--cache-max-size SIZE]\n"  \
  "(with a regproxy running on the directory, through its admin endpoint)"

/* The admin line of the lock file appears once the instance's listeners are
 * bound, shortly after it took the lock: wait this long for it. */
#define OWNER_WAIT_MS 3000
/* Largest admin answer read (a listing of about five million objects). */
#define ADMIN_BODY_MAX ((size_t)1 << 30)

struct obj_list {
  struct rp_object_info *v;
  size_t n, cap;
  bool oom;
};

static bool collect(const struct rp_object_info *info, void *data) {
  struct obj_list *l = data;

  if (l->n == l->cap) {
    size_t ncap = l->cap != 0 ? l->cap * 2 : 64;
    struct rp_object_info *nv = realloc(l->v, ncap * sizeof *nv);
    if (nv == NULL) {
      l->oom = true;
      return false;
    }
    l->v = nv;
    l->cap = ncap;
  }
  l->v[l->n++] = *info;
  return true;
}

/* Newest first; objects come most recently used first, so ties keep that order. */
static int by_access_desc(const void *a, const void *b) {
  const struct rp_object_info *x = a, *y = b;

  if (x->last_access != y->last_access)
    return x->last_access > y->last_access ? -1 : 1;
  return x < y ? -1 : (x > y ? 1 : 0);
}

static void iso8601(int64_t t, char *buf, size_t n) {
  time_t tt = (time_t)t;
  struct tm tm;

  if (gmtime_r(&tt, &tm) == NULL || strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    snprintf(buf, n, "-");
}

/* Files and bytes under blobs/ (before the open removes files without a row). */
static void scan_blobs(const char *dir, uint64_t *files, uint64_t *bytes) {
  static const int algos[] = {256, 512};
  char path[4096];
  struct stat st;

  *files = *bytes = 0;
  for (size_t a = 0; a < 2; a++) {
    for (unsigned i = 0; i < 256; i++) {
      struct dirent *e;
      DIR *d;

      snprintf(path, sizeof path, "%s/blobs/sha%d/%02x", dir, algos[a], i);
      d = opendir(path);
      if (d == NULL)
        continue;
      while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
          continue;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
          (*files)++;
          if (S_ISREG(st.st_mode))
            *bytes += (uint64_t)st.st_size;
        }
      }
      closedir(d);
    }
  }
}

/* ---- output, the same in both modes ---- */

static int print_ls(struct obj_list *l, const char *verb) {
  char dg[160], when[64];

  if (l->oom) {
    free(l->v);
    fprintf(stderr, "regproxy: cache %s: out of memory\n", verb);
    return 1;
  }
  if (l->n > 1)
    qsort(l->v, l->n, sizeof *l->v, by_access_desc);
  for (size_t i = 0; i < l->n; i++) {
    rp_digest_format(&l->v[i].digest, dg, sizeof dg);
    iso8601(l->v[i].last_access, when, sizeof when);
    printf("%s %" PRIu64 " %s %s\n", dg, l->v[i].size,
           l->v[i].media_type[0] != '\0' ? l->v[i].media_type : "-", when);
  }
  free(l->v);
  return 0;
}

static void print_du(uint64_t size, uint64_t objects, uint64_t max_size) {
  printf("%" PRIu64 " bytes in %" PRIu64 " objects (cache_max_size %" PRIu64 " bytes)\n", size,
         objects, max_size);
}

/* why: NULL when the object is intact. */
static void print_verified(const char *dg, const char *why) {
  if (why == NULL)
    printf("ok %s\n", dg);
  else
    printf("BAD %s (%s)\n", dg, why);
}

static int print_verify_summary(uint64_t n, uint64_t bad) {
  printf("%" PRIu64 " object(s) verified, %" PRIu64 " bad%s\n", n, bad,
         bad > 0 ? " (removed)" : "");
  return bad > 0 ? 1 : 0;
}

struct gc_result {
  uint64_t evicted, evicted_bytes, stray_files, stray_bytes, size_bytes, objects, max_size;
};

static void print_gc(const struct gc_result *g) {
  printf("evicted %" PRIu64 " object(s), %" PRIu64 " bytes\n", g->evicted, g->evicted_bytes);
  printf("removed %" PRIu64 " file(s) without an index row, %" PRIu64 " bytes\n", g->stray_files,
         g->stray_bytes);
  printf("freed %" PRIu64 " bytes; %" PRIu64 " bytes in %" PRIu64
         " objects remain (cache_max_size %" PRIu64 " bytes)\n",
         g->evicted_bytes + g->stray_bytes, g->size_bytes, g->objects, g->max_size);
}

/* ---- progress on stderr: a line per step, or one updating line on a tty ---- */

struct progress {
  const char *verb;
  bool tty, shown;
  uint64_t done, total, bytes, total_bytes;
};

static void progress_init(struct progress *p, const char *verb) {
  memset(p, 0, sizeof *p);
  p->verb = verb;
  p->tty = isatty(STDERR_FILENO) == 1;
}

static void human(uint64_t n, char *buf, size_t sz) {
  static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = (double)n;
  int u = -1;

  while (v >= 1024 && u < 4) {
    v /= 1024;
    u++;
  }
  if (u < 0)
    snprintf(buf, sz, "%" PRIu64 " B", n);
  else
    snprintf(buf, sz, "%.1f %s", v, units[u]);
}

/* Before a line on stdout: a tty's progress line is cleared, so that the
 * two do not mix (stdout is flushed first when both are the terminal). */
static void progress_clear(struct progress *p) {
  if (p->tty && p->shown) {
    fputs("\r\033[K", stderr);
    p->shown = false;
  }
}

static void progress_show(struct progress *p) {
  char b[32], tb[32];

  human(p->bytes, b, sizeof b);
  human(p->total_bytes, tb, sizeof tb);
  fflush(stdout);
  if (strcmp(p->verb, "gc") == 0)
    fprintf(stderr, "%sgc: evicted %" PRIu64 " object(s), %s/%s%s", p->tty ? "\r\033[K" : "",
            p->done, b, tb, p->tty ? "" : "\n");
  else
    fprintf(stderr, "%s%s: %" PRIu64 "/%" PRIu64 " objects, %s/%s%s", p->tty ? "\r\033[K" : "",
            p->verb, p->done, p->total, b, tb, p->tty ? "" : "\n");
  fflush(stderr);
  p->shown = true;
}

/* The end: a tty's line is left complete rather than erased. */
static void progress_end(struct progress *p) {
  if (p->tty && p->shown) {
    fputs("\n", stderr);
    p->shown = false;
  }
}

static void rm_failed(const char *arg, const char *why) {
  fprintf(stderr, "regproxy: cache rm: %s: %s\n", arg, why);
}

static void rm_unknown(const char *arg) {
  fprintf(stderr, "regproxy: cache rm: %s is not in the cache\n", arg);
}

/* ---- direct mode: the directory is ours ---- */

static int cmd_ls(struct rp_cache *c) {
  struct obj_list l = {0};

  rp_cache_foreach(c, collect, &l);
  return print_ls(&l, "ls");
}

static int cmd_du(struct rp_cache *c, const struct rp_config *cfg) {
  struct rp_cache_stats st;

  rp_cache_stats(c, &st);
  print_du(st.size_bytes, st.objects, cfg->cache_max_size);
  return 0;
}

static int cmd_verify(struct rp_cache *c) {
  struct obj_list l = {0};
  struct progress pr;
  char dg[160];
  size_t bad = 0;

  rp_cache_foreach(c, collect, &l);
  if (l.oom) {
    free(l.v);
    fprintf(stderr, "regproxy: cache verify: out of memory\n");
    return 1;
  }
  progress_init(&pr, "verify");
  pr.total = l.n;
  for (size_t i = 0; i < l.n; i++)
    pr.total_bytes += l.v[i].size;
  progress_show(&pr);
  for (size_t i = 0; i < l.n; i++) {
    int rc = rp_cache_verify_one(c, &l.v[i].digest);
    rp_digest_format(&l.v[i].digest, dg, sizeof dg);
    progress_clear(&pr);
    print_verified(dg, rc == 0 ? NULL : rp_strerror(rc));
    pr.done++;
    pr.bytes += l.v[i].size;
    if (rc != 0) {
      bad++;
      rc = rp_cache_remove(c, &l.v[i].digest);
      if (rc != 0)
        fprintf(stderr, "regproxy: cache verify: cannot remove %s: %s\n", dg, rp_strerror(rc));
    }
    progress_show(&pr);
  }
  free(l.v);
  progress_end(&pr);
  return print_verify_summary(l.n, bad);
}

static int cmd_gc(struct rp_cache *c, const struct rp_config *cfg, uint64_t files_before,
                  uint64_t bytes_before) {
  struct rp_cache_stats st;
  struct gc_result g;

  memset(&g, 0, sizeof g);
  rp_cache_stats(c, &st);
  g.stray_files = files_before > st.objects ? files_before - st.objects : 0;
  g.stray_bytes = bytes_before > st.size_bytes ? bytes_before - st.size_bytes : 0;
  g.evicted = rp_cache_trim(c, cfg->cache_max_size, &g.evicted_bytes);
  rp_cache_stats(c, &st);
  g.size_bytes = st.size_bytes;
  g.objects = st.objects;
  g.max_size = cfg->cache_max_size;
  print_gc(&g);
  return 0;
}

static int cmd_rm(struct rp_cache *c, const struct rp_digest *d, const char *arg) {
  int rc = rp_cache_remove(c, d);

  if (rc == RP_EINVAL) {
    rm_unknown(arg);
    return 1;
  }
  if (rc != 0) {
    rm_failed(arg, rp_strerror(rc));
    return 1;
  }
  printf("removed %s\n", arg);
  return 0;
}

/* ---- admin mode: a running regproxy holds the directory ---- */

struct admin {
  const char *dir;
  const char *verb;
  long pid;
  const char *url; /* "http://127.0.0.1:2080" */
};

struct body_buf {
  char *p;
  size_t n, cap;
  bool too_big;
};

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *data) {
  struct body_buf *b = data;
  size_t n = size * nmemb;

  if (b->n + n + 1 > ADMIN_BODY_MAX) {
    b->too_big = true;
    return 0;
  }
  if (b->n + n + 1 > b->cap) {
    size_t ncap = b->cap != 0 ? b->cap : 64 * 1024;
    char *np;
    while (ncap < b->n + n + 1)
      ncap *= 2;
    np = realloc(b->p, ncap);
    if (np == NULL)
      return 0;
    b->p = np;
    b->cap = ncap;
  }
  memcpy(b->p + b->n, ptr, n);
  b->n += n;
  b->p[b->n] = '\0';
  return n;
}

static uint64_t u64(const json_t *o, const char *key);

/* A streamed answer (verify, gc with progress, docs/admin.md): NDJSON lines
 * handled as they arrive; the last one is the summary or {"error"}. Any
 * other answer (an error, an older instance) is read whole into body. */
struct stream {
  const struct admin *a;
  CURL *h;
  struct body_buf body;
  bool decided, lines, bad_line;
  struct body_buf line; /* the incomplete line */
  struct progress pr;
  json_t *last;
};

static void stream_verified(struct stream *st, json_t *r) {
  const char *dg = json_string_value(json_object_get(r, "digest"));
  const char *why = json_string_value(json_object_get(r, "error"));
  const char *rm_err = json_string_value(json_object_get(r, "remove_error"));
  bool ok = json_is_true(json_object_get(r, "ok"));

  progress_clear(&st->pr);
  print_verified(dg, ok ? NULL : why != NULL ? why : "bad");
  if (!ok && !json_is_true(json_object_get(r, "removed")))
    fprintf(stderr, "regproxy: cache verify: cannot remove %s: %s\n", dg,
            rm_err != NULL ? rm_err : "unknown error");
}

static void stream_line(struct stream *st, const char *p, size_t n) {
  json_t *j = json_loadb(p, n, 0, NULL);
  json_t *ev;

  if (!json_is_object(j)) {
    st->bad_line = true;
    json_decref(j);
    return;
  }
  ev = json_object_get(j, "evicted");
  if (json_string_value(json_object_get(j, "digest")) != NULL) {
    stream_verified(st, j); /* verify: one object */
  } else if (json_is_string(ev)) {
    /* gc: one object evicted */
  } else if (json_object_get(j, "verified") != NULL || json_object_get(j, "error") != NULL ||
             json_is_integer(ev)) {
    json_decref(st->last); /* the summary */
    st->last = j;
    return;
  } else if (json_object_get(j, "objects") != NULL) {
    /* The first line: the work ahead (gc: the bytes above the bound). */
    uint64_t bytes = u64(j, "bytes"), max = u64(j, "max_size");
    st->pr.total = u64(j, "objects");
    st->pr.total_bytes = strcmp(st->a->verb, "gc") != 0 ? bytes : bytes > max ? bytes - max : 0;
    progress_show(&st->pr);
    json_decref(j);
    return;
  } else {
    json_decref(j); /* a line a newer instance added */
    return;
  }
  st->pr.done++;
  st->pr.bytes += u64(j, "size");
  progress_show(&st->pr);
  json_decref(j);
}

static size_t on_stream_body(char *ptr, size_t size, size_t nmemb, void *data) {
  struct stream *st = data;
  size_t n = size * nmemb, start = 0;

  if (!st->decided) {
    long code = 0;
    char *ctype = NULL;
    curl_easy_getinfo(st->h, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_getinfo(st->h, CURLINFO_CONTENT_TYPE, &ctype);
    st->decided = true;
    st->lines = code == 200 && ctype != NULL &&
                strncmp(ctype, "application/x-ndjson", strlen("application/x-ndjson")) == 0;
  }
  if (!st->lines)
    return on_body(ptr, size, nmemb, &st->body);
  for (size_t i = 0; i < n; i++) {
    if (ptr[i] != '\n')
      continue;
    if (st->line.n > 0) {
      if (on_body(ptr + start, 1, i - start, &st->line) != i - start)
        return 0;
      stream_line(st, st->line.p, st->line.n);
      st->line.n = 0;
    } else {
      stream_line(st, ptr + start, i - start);
    }
    start = i + 1;
  }
  if (start < n && on_body(ptr + start, 1, n - start, &st->line) != n - start)
    return 0;
  return n;
}

/* The message of an error answer: its "error" member, else its first line. */
static void answer_reason(const struct body_buf *b, const json_t *j, char *out, size_t outsz) {
  const char *e = json_string_value(json_object_get(j, "error"));
  size_t n;

  if (e != NULL) {
    snprintf(out, outsz, "%s", e);
    return;
  }
  n = b->p != NULL ? strcspn(b->p, "\r\n") : 0;
  snprintf(out, outsz, "%.*s", (int)(n < 200 ? n : 200), n > 0 ? b->p : "(no body)");
}

/* One request to the instance. Returns 0 with *status and *json (NULL when
 * the body is not JSON; the caller frees it), or 1 after saying why on
 * stderr. Verification may run for long: it has no overall time limit. */
static int admin_call(const struct admin *a, const char *method, const char *path, long *status,
                      json_t **json, char *reason, size_t reasonsz, struct stream *st) {
  char url[512], errbuf[CURL_ERROR_SIZE] = "";
  struct curl_slist *hdrs = NULL;
  struct body_buf local = {0}, *bp = st != NULL ? &st->body : &local;
  struct body_buf b;
  CURL *h = curl_easy_init();
  CURLcode cc;
  int rc = 1;

  *json = NULL;
  *status = 0;
  snprintf(url, sizeof url, "%s%s", a->url, path);
  hdrs = curl_slist_append(NULL, "X-Regproxy-Cli: 1");
  if (hdrs != NULL && st != NULL) {
    struct curl_slist *more = curl_slist_append(hdrs, "Accept: application/x-ndjson");
    if (more == NULL) {
      curl_slist_free_all(hdrs);
      hdrs = NULL;
    }
  }
  if (h == NULL || hdrs == NULL) {
    fprintf(stderr, "regproxy: cache %s: out of memory\n", a->verb);
    goto out;
  }
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  if (strcmp(method, "POST") == 0) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, 0L);
  }
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
  /* Straight to the instance: never through $HTTP_PROXY (which is likely
   * the instance itself). */
  curl_easy_setopt(h, CURLOPT_PROXY, "");
  curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
  /* From loopback, which the default admin_allow admits, also when the
   * instance listens on a LAN address only (the kernel would otherwise pick
   * that address as the source). */
  curl_easy_setopt(h, CURLOPT_INTERFACE,
                   strncmp(a->url, "http://[", 8) == 0 ? "host!::1" : "host!127.0.0.1");
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  if (strcmp(a->verb, "verify") != 0)
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 120000L);
  if (st != NULL) {
    st->h = h;
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_stream_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, st);
  } else {
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, bp);
  }
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
  cc = curl_easy_perform(h);
  if (st != NULL)
    progress_end(&st->pr);
  b = *bp;
  if (cc != CURLE_OK) {
    if (b.too_big || (st != NULL && st->line.too_big))
      fprintf(stderr, "regproxy: cache %s: the answer of %s is larger than %zu bytes\n", a->verb,
              url, ADMIN_BODY_MAX);
    else
      fprintf(stderr,
              "regproxy: cache directory %s is in use by a running regproxy (PID %ld), but its "
              "admin endpoint %s does not answer: %s\n",
              a->dir, a->pid, a->url, errbuf[0] != '\0' ? errbuf : curl_easy_strerror(cc));
    goto out;
  }
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
  if (st != NULL && st->lines) {
    /* Streamed: the summary line stands for the whole answer. A cut
     * stream ends without one (or with half a line): no JSON. */
    if (st->line.n == 0 && !st->bad_line) {
      *json = st->last;
      st->last = NULL;
    }
    snprintf(reason, reasonsz, "%s", "(a cut or malformed progress stream)");
    rc = 0;
    goto out;
  }
  if (b.p != NULL)
    *json = json_loadb(b.p, b.n, 0, NULL);
  answer_reason(&b, *json, reason, reasonsz);
  rc = 0;
out:
  free(bp->p);
  bp->p = NULL;
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(h);
  return rc;
}

static int unexpected(const struct admin *a, const char *method, const char *path, long status,
                      const char *reason) {
  fprintf(stderr, "regproxy: cache %s: %s %s%s (regproxy PID %ld) answered %ld: %s\n", a->verb,
          method, a->url, path, a->pid, status, reason);
  return 1;
}

static uint64_t u64(const json_t *o, const char *key) {
  json_int_t v = json_integer_value(json_object_get(o, key));
  return v > 0 ? (uint64_t)v : 0;
}

static int bad_answer(const struct admin *a) {
  fprintf(stderr, "regproxy: cache %s: unexpected answer from %s (regproxy PID %ld)\n", a->verb,
          a->url, a->pid);
  return 1;
}

static int admin_ls(const struct admin *a, json_t *j) {
  json_t *arr = json_object_get(j, "objects");
  struct obj_list l = {0};
  size_t i;
  json_t *o;

  if (!json_is_array(arr))
    return bad_answer(a);
  json_array_foreach(arr, i, o) {
    const char *dg = json_string_value(json_object_get(o, "digest"));
    const char *mt = json_string_value(json_object_get(o, "media_type"));
    struct rp_object_info info;

    memset(&info, 0, sizeof info);
    if (dg == NULL || rp_digest_parse(dg, strlen(dg), &info.digest) != 0) {
      free(l.v);
      return bad_answer(a);
    }
    info.size = u64(o, "size");
    snprintf(info.media_type, sizeof info.media_type, "%s", mt != NULL ? mt : "");
    info.last_access = json_integer_value(json_object_get(o, "last_access"));
    info.is_manifest = json_is_true(json_object_get(o, "manifest"));
    if (!collect(&info, &l))
      break;
  }
  return print_ls(&l, "ls");
}

static int admin_verify(const struct admin *a, json_t *j, bool streamed) {
  json_t *arr = json_object_get(j, "results");
  size_t i;
  json_t *r;

  if (streamed)
    return json_object_get(j, "verified") == NULL
               ? bad_answer(a)
               : print_verify_summary(u64(j, "verified"), u64(j, "bad"));
  if (!json_is_array(arr))
    return bad_answer(a);
  json_array_foreach(arr, i, r) {
    const char *dg = json_string_value(json_object_get(r, "digest"));
    const char *why = json_string_value(json_object_get(r, "error"));
    const char *rm_err = json_string_value(json_object_get(r, "remove_error"));
    bool ok = json_is_true(json_object_get(r, "ok"));

    if (dg == NULL)
      continue;
    print_verified(dg, ok ? NULL : why != NULL ? why : "bad");
    if (!ok && !json_is_true(json_object_get(r, "removed")))
      fprintf(stderr, "regproxy: cache verify: cannot remove %s: %s\n", dg,
              rm_err != NULL ? rm_err : "unknown error");
  }
  return print_verify_summary(u64(j, "verified"), u64(j, "bad"));
}

static int admin_gc(const struct admin *a, json_t *j) {
  struct gc_result g;

  if (!json_is_object(j) || json_object_get(j, "evicted") == NULL)
    return bad_answer(a);
  g.evicted = u64(j, "evicted");
  g.evicted_bytes = u64(j, "evicted_bytes");
  g.stray_files = u64(j, "stray_files");
  g.stray_bytes = u64(j, "stray_bytes");
  g.size_bytes = u64(j, "size_bytes");
  g.objects = u64(j, "objects");
  g.max_size = u64(j, "max_size");
  print_gc(&g);
  return 0;
}

/* The lock is held: find the holder's admin URL (waiting a little for a
 * holder that is still starting) and ask it. */
static int via_admin(const struct rp_config *cfg, const char *verb, const char *arg,
                     long pid_hint) {
  struct rp_cache_owner own;
  struct admin a;
  char path[256], reason[256];
  const char *method = "GET";
  struct stream st;
  bool streamable;
  long status = 0;
  json_t *j = NULL;
  int rc = 1;

  memset(&st, 0, sizeof st);
  for (int waited = 0;; waited += 100) {
    if (rp_cache_owner_read(cfg->cache_dir, &own) != 0)
      memset(&own, 0, sizeof own);
    if (own.admin[0] != '\0' || waited >= OWNER_WAIT_MS)
      break;
    uv_sleep(100);
  }
  a.dir = cfg->cache_dir;
  a.verb = verb;
  a.pid = own.pid > 0 ? own.pid : pid_hint;
  a.url = own.admin;
  if (own.admin[0] == '\0') {
    fprintf(stderr,
            "regproxy: cache directory %s is in use by a running regproxy (PID %ld) that records "
            "no admin endpoint in %s/lock (it has no --listen address, or is older than this "
            "command); stop it to work on the directory directly\n",
            a.dir, a.pid, a.dir);
    return 1;
  }
  if (strcmp(verb, "ls") == 0) {
    snprintf(path, sizeof path, "/cache/objects");
  } else if (strcmp(verb, "du") == 0) {
    snprintf(path, sizeof path, "/cache/du");
  } else if (strcmp(verb, "verify") == 0) {
    method = "POST";
    snprintf(path, sizeof path, "/cache/verify");
  } else if (strcmp(verb, "gc") == 0) {
    method = "POST";
    /* Without an explicit bound the instance trims to its own. */
    if (cfg->cache_max_size_source != RP_SRC_DEFAULT)
      snprintf(path, sizeof path, "/cache/gc?max_size=%" PRIu64, cfg->cache_max_size);
    else
      snprintf(path, sizeof path, "/cache/gc");
  } else {
    method = "DELETE";
    snprintf(path, sizeof path, "/cache/objects/%s", arg); /* a validated digest */
  }
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "regproxy: cache %s: cannot initialise libcurl\n", verb);
    return 1;
  }
  /* verify and gc ask for their progress as it happens. */
  st.a = &a;
  progress_init(&st.pr, verb);
  streamable = strcmp(verb, "verify") == 0 || strcmp(verb, "gc") == 0;
  if (admin_call(&a, method, path, &status, &j, reason, sizeof reason, streamable ? &st : NULL) !=
      0)
    goto out;
  if (st.lines) {
    const char *e = json_string_value(json_object_get(j, "error"));
    if (j == NULL) {
      rc = bad_answer(&a);
    } else if (e != NULL) {
      fprintf(stderr, "regproxy: cache %s: %s (regproxy PID %ld)\n", verb, e, a.pid);
    } else if (strcmp(verb, "verify") == 0) {
      rc = admin_verify(&a, j, true);
    } else {
      rc = admin_gc(&a, j);
    }
    goto out;
  }
  if (strcmp(verb, "rm") == 0) {
    if (status == 200) {
      printf("removed %s\n", arg);
      rc = 0;
    } else if (status == 404) {
      rm_unknown(arg);
    } else if (status == 409) {
      rm_failed(arg, reason);
    } else {
      unexpected(&a, method, path, status, reason);
    }
    goto out;
  }
  if (status != 200) {
    rc = unexpected(&a, method, path, status, reason);
    goto out;
  }
  if (strcmp(verb, "ls") == 0)
    rc = admin_ls(&a, j);
  else if (strcmp(verb, "du") == 0)
    rc = json_object_get(j, "size_bytes") == NULL
             ? bad_answer(&a)
             : (print_du(u64(j, "size_bytes"), u64(j, "objects"), u64(j, "max_size")), 0);
  else if (strcmp(verb, "verify") == 0)
    rc = admin_verify(&a, j, false);
  else
    rc = admin_gc(&a, j);
out:
  json_decref(j);
  json_decref(st.last);
  free(st.line.p);
  curl_global_cleanup();
  return rc;
}

/* ---- the command ---- */

/* The directory could not be opened: locked by a running instance (ask it),
 * or unusable. */
static int open_failed(const struct rp_config *cfg, const char *verb, const char *arg, int rc,
                       char *err) {
  const char *pid = err != NULL ? strstr(err, "in use by PID ") : NULL;

  if (pid != NULL)
    return via_admin(cfg, verb, arg, strtol(pid + strlen("in use by PID "), NULL, 10));
  fprintf(stderr, "regproxy: %s\n", err != NULL ? err : rp_strerror(rc));
  return err != NULL && strstr(err, "in use by") != NULL ? 1 : (rc == RP_ECONFIG ? 2 : 1);
}

int rp_cli_cache(struct rp_config *cfg) {
  static const char *const verbs[] = {"ls", "du", "verify", "gc", "rm"};
  const char *verb = cfg->args.n >= 2 ? cfg->args.v[1] : NULL;
  size_t want_args = 2;
  struct rp_cache_opts co;
  struct rp_cache *c = NULL;
  struct rp_digest d;
  uint64_t files_before = 0, bytes_before = 0;
  bool known = false;
  uv_loop_t loop;
  char *err = NULL;
  int rc;

  if (verb == NULL) {
    fprintf(stderr, "regproxy: cache: missing verb\n" CACHE_USAGE "\n");
    return 2;
  }
  for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
    known = known || strcmp(verb, verbs[i]) == 0;
  if (!known) {
    fprintf(stderr, "regproxy: cache: unknown verb '%s'\n" CACHE_USAGE "\n", verb);
    return 2;
  }
  if (strcmp(verb, "rm") == 0) {
    want_args = 3;
    if (cfg->args.n < 3) {
      fprintf(stderr, "regproxy: cache rm: missing digest\n" CACHE_USAGE "\n");
      return 2;
    }
    if (rp_digest_parse(cfg->args.v[2], strlen(cfg->args.v[2]), &d) != 0) {
      fprintf(stderr, "regproxy: cache rm: '%s' is not a sha256/sha512 digest\n" CACHE_USAGE "\n",
              cfg->args.v[2]);
      return 2;
    }
  }
  if (cfg->args.n > want_args) {
    fprintf(stderr, "regproxy: cache %s: unexpected argument '%s'\n" CACHE_USAGE "\n", verb,
            cfg->args.v[want_args]);
    return 2;
  }
  if (strcmp(verb, "gc") == 0)
    scan_blobs(cfg->cache_dir, &files_before, &bytes_before);
  rc = uv_loop_init(&loop);
  if (rc != 0) {
    fprintf(stderr, "regproxy: cache: %s\n", uv_strerror(rc));
    return 1;
  }
  memset(&co, 0, sizeof co);
  co.dir = cfg->cache_dir;
  co.max_size = 0; /* nothing is evicted at open; gc trims explicitly */
  co.orphan_fill_max = cfg->orphan_fill_max;
  rc = rp_cache_open(&loop, &co, &c, &err);
  if (rc != 0) {
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    rc = open_failed(cfg, verb, cfg->args.n >= 3 ? cfg->args.v[2] : NULL, rc, err);
    free(err);
    goto flush;
  }
  if (strcmp(verb, "ls") == 0)
    rc = cmd_ls(c);
  else if (strcmp(verb, "du") == 0)
    rc = cmd_du(c, cfg);
  else if (strcmp(verb, "verify") == 0)
    rc = cmd_verify(c);
  else if (strcmp(verb, "gc") == 0)
    rc = cmd_gc(c, cfg, files_before, bytes_before);
  else
    rc = cmd_rm(c, &d, cfg->args.v[2]);
  /* Queued index writes and file removals run while the cache closes. */
  rp_cache_close(c);
  uv_run(&loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop) != 0)
    fprintf(stderr, "regproxy: cache: event loop did not close cleanly\n");
flush:
  if (fflush(stdout) != 0) {
    fprintf(stderr, "regproxy: cannot write to stdout\n");
    rc = 1;
  }
  return rc;
}
