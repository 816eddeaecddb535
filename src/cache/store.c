/* The cache directory: digests, lock, layout, start-up clean-up, eviction,
 * deferred work and the life of struct rp_cache. Fills are in fill.c,
 * readers in reader.c, the metadata index in index.c. */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache/internal.h"
#include "regproxy/error.h"
#include "regproxy/log.h"

#define CHUNK_POOL_KEEP 64

struct rp__cache_faults rp__cache_faults;

/* ---- digests ---- */

static bool is_lower_hex(const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
      return false;
  }
  return true;
}

int rp_digest_parse(const char *s, size_t n, struct rp_digest *out) {
  size_t hexlen;
  int algo;

  if (s == NULL || out == NULL)
    return RP_EPARSE;
  if (n > 7 && memcmp(s, "sha256:", 7) == 0) {
    algo = 256;
    hexlen = 64;
  } else if (n > 7 && memcmp(s, "sha512:", 7) == 0) {
    algo = 512;
    hexlen = 128;
  } else {
    return RP_EPARSE;
  }
  if (n - 7 != hexlen || !is_lower_hex(s + 7, hexlen))
    return RP_EPARSE;
  out->algo = algo;
  memcpy(out->hex, s + 7, hexlen);
  out->hex[hexlen] = '\0';
  return 0;
}

void rp_digest_format(const struct rp_digest *d, char *buf, size_t bufsz) {
  if (bufsz == 0)
    return;
  snprintf(buf, bufsz, "sha%d:%s", d->algo, d->hex);
}

void rp__digest_key(const struct rp_digest *d, char *buf, size_t bufsz) {
  rp_digest_format(d, buf, bufsz);
}

int64_t rp__now(void) {
  return (int64_t)time(NULL);
}

/* ---- chunk pool ---- */

char *rp__chunk_alloc(struct rp_cache *c) {
  char *p = c->chunk_pool;

  if (p != NULL) {
    memcpy(&c->chunk_pool, p, sizeof(char *));
    c->chunk_pool_n--;
    return p;
  }
  return malloc(RP_CACHE_CHUNK);
}

void rp__chunk_free(struct rp_cache *c, char *p) {
  if (p == NULL)
    return;
  if (c->chunk_pool_n >= CHUNK_POOL_KEEP) {
    free(p);
    return;
  }
  memcpy(p, &c->chunk_pool, sizeof(char *));
  c->chunk_pool = p;
  c->chunk_pool_n++;
}

static void chunk_pool_drain(struct rp_cache *c) {
  while (c->chunk_pool != NULL) {
    char *p = c->chunk_pool;
    memcpy(&c->chunk_pool, p, sizeof(char *));
    free(p);
  }
  c->chunk_pool_n = 0;
}

/* ---- deferred work ---- */

static void on_idle(uv_idle_t *h) {
  struct rp_cache *c = h->data;
  struct rp__task *list = c->tasks_head;

  /* Run what was queued before this turn; what they queue runs next turn. */
  c->tasks_head = c->tasks_tail = NULL;
  while (list != NULL) {
    struct rp__task *t = list;
    list = t->next;
    t->next = NULL;
    t->queued = false;
    t->run(t);
  }
  if (c->tasks_head == NULL)
    uv_idle_stop(h);
}

void rp__task_post(struct rp_cache *c, struct rp__task *t) {
  if (t->queued)
    return;
  t->queued = true;
  t->next = NULL;
  if (c->tasks_tail != NULL)
    c->tasks_tail->next = t;
  else
    c->tasks_head = t;
  c->tasks_tail = t;
  if (!uv_is_active((uv_handle_t *)&c->idle))
    uv_idle_start(&c->idle, on_idle);
}

/* ---- paths and layout ---- */

char *rp__blob_path(const struct rp_cache *c, const struct rp_digest *d) {
  char *p = NULL;

  if (asprintf(&p, "%s/blobs/sha%d/%.2s/%s", c->dir, d->algo, d->hex, d->hex) < 0)
    return NULL;
  return p;
}

static void set_err(char **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(char **err, const char *fmt, ...) {
  va_list ap;

  if (err == NULL || *err != NULL)
    return;
  va_start(ap, fmt);
  if (vasprintf(err, fmt, ap) < 0)
    *err = NULL;
  va_end(ap);
}

static int mkdir_0700(const char *path) {
  if (mkdir(path, 0700) == 0 || errno == EEXIST)
    return 0;
  return -errno;
}

/* mkdir -p; every directory it creates is 0700. */
static int make_dir_path(const char *dir, char **err) {
  char *p = strdup(dir);
  int rc = RP_ENOMEM;

  if (p == NULL)
    goto out;
  for (char *s = p + 1; *s != '\0'; s++) {
    if (*s != '/')
      continue;
    *s = '\0';
    rc = mkdir_0700(p);
    *s = '/';
    if (rc != 0)
      break;
  }
  rc = mkdir_0700(p);
  if (rc != 0) {
    set_err(err, "cache directory %s: cannot create: %s", dir, strerror(-rc));
    rc = RP_ECONFIG;
  }
out:
  free(p);
  return rc;
}

static int make_layout(struct rp_cache *c, char **err) {
  static const int algos[] = {256, 512};
  char path[4096];
  int rc;

  /* The <2 hex> directories are made when the first object lands in them. */
  snprintf(path, sizeof path, "%s/blobs", c->dir);
  rc = mkdir_0700(path);
  if (rc != 0)
    goto fail;
  for (size_t a = 0; a < 2; a++) {
    snprintf(path, sizeof path, "%s/blobs/sha%d", c->dir, algos[a]);
    rc = mkdir_0700(path);
    if (rc != 0)
      goto fail;
  }
  snprintf(path, sizeof path, "%s/tmp", c->dir);
  rc = mkdir_0700(path);
  if (rc != 0)
    goto fail;
  return 0;
fail:
  set_err(err, "cache directory %s: cannot create %s: %s", c->dir, path, strerror(-rc));
  return RP_ECONFIG;
}

/* Partial fills of an earlier run: never published, so never trusted. */
static void clean_tmp(struct rp_cache *c) {
  char path[4096];
  struct dirent *e;
  unsigned removed = 0;
  DIR *d;

  snprintf(path, sizeof path, "%s/tmp", c->dir);
  d = opendir(path);
  if (d == NULL) {
    rp_log_warn("cache: cannot list %s: %s", path, strerror(errno));
    return;
  }
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    if (unlinkat(dirfd(d), e->d_name, 0) == 0 || unlinkat(dirfd(d), e->d_name, AT_REMOVEDIR) == 0)
      removed++;
    else
      rp_log_warn("cache: cannot remove %s/%s: %s", path, e->d_name, strerror(errno));
  }
  closedir(d);
  if (removed > 0)
    rp_log_info("cache: removed %u leftover temp file(s) from %s", removed, path);
}

/* ---- the lock ---- */

static int take_lock(struct rp_cache *c, char **err) {
  char path[4096];
  char buf[32];
  ssize_t n;
  long pid;
  int fd;
  int rc;

  snprintf(path, sizeof path, "%s/lock", c->dir);
  fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    set_err(err, "cache directory %s: cannot open %s: %s", c->dir, path, strerror(errno));
    return RP_ECONFIG;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    rc = errno;
    if (rc == EWOULDBLOCK) {
      n = pread(fd, buf, sizeof buf - 1, 0);
      buf[n > 0 ? n : 0] = '\0';
      pid = strtol(buf, NULL, 10);
      if (pid > 0)
        set_err(err, "cache directory %s is in use by PID %ld", c->dir, pid);
      else
        set_err(err, "cache directory %s is in use by another process", c->dir);
    } else {
      set_err(err, "cache directory %s: cannot lock %s: %s", c->dir, path, strerror(rc));
    }
    close(fd);
    return RP_ECONFIG;
  }
  n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
    set_err(err, "cache directory %s: cannot write %s: %s", c->dir, path, strerror(errno));
    close(fd);
    return RP_ECONFIG;
  }
  c->lock_fd = fd;
  return 0;
}

/* The admin URL is written by us and read by another process: one line of
 * printable ASCII without spaces, so it can be neither a second line nor
 * part of a command. */
static bool url_ok(const char *u, size_t n) {
  if (n == 0 || n >= sizeof(((struct rp_cache_owner *)0)->admin))
    return false;
  if (strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0)
    return false;
  for (size_t i = 0; i < n; i++)
    if (u[i] <= ' ' || u[i] >= 0x7f)
      return false;
  return true;
}

int rp_cache_set_owner(struct rp_cache *c, const char *admin_url) {
  char buf[512];
  ssize_t w;
  int n;

  if (c == NULL || c->lock_fd < 0 || admin_url == NULL || !url_ok(admin_url, strlen(admin_url)))
    return RP_EINVAL;
  n = snprintf(buf, sizeof buf, "%ld\nadmin=%s\n", (long)getpid(), admin_url);
  if (n < 0 || (size_t)n >= sizeof buf)
    return RP_EINVAL;
  /* The PID line keeps its bytes, so a concurrent reader sees it whole;
   * the file only grows, the truncate is for a shorter URL than before. */
  w = pwrite(c->lock_fd, buf, (size_t)n, 0);
  if (w < 0)
    return -errno;
  if (w != n)
    return -EIO;
  if (ftruncate(c->lock_fd, n) != 0)
    return -errno;
  return 0;
}

int rp_cache_owner_read(const char *dir, struct rp_cache_owner *out) {
  char path[4096];
  char buf[1024];
  char *line, *save = NULL;
  ssize_t n;
  int fd;

  memset(out, 0, sizeof *out);
  if (dir == NULL)
    return RP_EINVAL;
  snprintf(path, sizeof path, "%s/lock", dir);
  fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0)
    return -errno;
  n = pread(fd, buf, sizeof buf - 1, 0);
  if (n < 0) {
    n = -errno;
    close(fd);
    return (int)n;
  }
  close(fd);
  buf[n] = '\0';
  line = strtok_r(buf, "\n", &save);
  if (line != NULL) {
    char *end = NULL;
    long pid = strtol(line, &end, 10);
    if (end != line && *end == '\0' && pid > 0)
      out->pid = pid;
    while ((line = strtok_r(NULL, "\n", &save)) != NULL) {
      if (strncmp(line, "admin=", 6) == 0 && url_ok(line + 6, strlen(line + 6)))
        snprintf(out->admin, sizeof out->admin, "%s", line + 6);
    }
  }
  return 0;
}

/* ---- open / close ---- */

/* A running rp_cache_verify_start: closing the cache cancels it. */
struct rp__verify {
  uv_work_t work;
  struct rp__verify *prev, *next; /* on c->verifies */
  atomic_bool cancel;             /* the cache is closing: stop hashing */
  struct rp_cache *c;
  struct rp__obj *obj; /* pinned until the hash is done */
  struct rp_digest digest;
  uint64_t size;
  char *path;
  int result;
  rp_cache_verify_cb done;
  void *data;
};

static void cache_free(struct rp_cache *c) {
  if (c == NULL)
    return;
  rp__index_free(c);
  rp__objs_free(c);
  rp__htab_free(&c->fills);
  chunk_pool_drain(c);
  if (c->lock_fd >= 0)
    close(c->lock_fd); /* releases the flock */
  free(c->dir);
  free(c);
}

int rp_cache_open(uv_loop_t *loop, const struct rp_cache_opts *opts, struct rp_cache **out,
                  char **err) {
  struct rp_cache *c = NULL;
  size_t len;
  int rc = RP_EINVAL;

  *out = NULL;
  if (loop == NULL || opts == NULL || opts->dir == NULL || opts->dir[0] == '\0') {
    set_err(err, "cache directory not set");
    goto out;
  }
  rc = RP_ENOMEM;
  c = calloc(1, sizeof *c);
  if (c == NULL)
    goto out;
  c->lock_fd = -1;
  c->loop = loop;
  c->max_size = opts->max_size;
  c->orphan_fill_max = opts->orphan_fill_max;
  c->defer_file_check = opts->defer_file_check;
  c->opened_at = rp__now();
  c->dir = strdup(opts->dir);
  if (c->dir == NULL)
    goto out;
  len = strlen(c->dir);
  while (len > 1 && c->dir[len - 1] == '/')
    c->dir[--len] = '\0';
  c->tags.max = RP_CACHE_TAGS_MAX;
  c->pubs.max = RP_CACHE_PUBLIC_MAX;
  if (rp__htab_init(&c->objs, 1024) != 0 || rp__htab_init(&c->repos, 1024) != 0 ||
      rp__htab_init(&c->tags.t, 256) != 0 || rp__htab_init(&c->pubs.t, 256) != 0 ||
      rp__htab_init(&c->fills, 64) != 0)
    goto out;
  rc = make_dir_path(c->dir, err);
  if (rc != 0)
    goto out;
  rc = take_lock(c, err);
  if (rc != 0)
    goto out;
  rc = make_layout(c, err);
  if (rc != 0)
    goto out;
  clean_tmp(c);
  rc = rp__index_open(c, err);
  if (rc != 0)
    goto out;
  rc = uv_idle_init(loop, &c->idle);
  if (rc != 0) {
    set_err(err, "cache: %s", uv_strerror(rc));
    goto out;
  }
  c->idle.data = c;
  rp__cache_evict(c);
  rp__index_scan_start(c);
  *out = c;
  c = NULL;
  rc = 0;
out:
  if (rc == RP_ENOMEM)
    set_err(err, "cache: out of memory");
  cache_free(c);
  return rc;
}

static void on_idle_closed(uv_handle_t *h) {
  cache_free(h->data);
}

static void on_index_down(struct rp_cache *c) {
  uv_close((uv_handle_t *)&c->idle, on_idle_closed);
}

void rp__cache_maybe_finalize(struct rp_cache *c) {
  if (!c->closing || c->finalizing || c->alive > 0)
    return;
  c->finalizing = true;
  rp__index_shutdown(c, on_index_down);
}

void rp_cache_close(struct rp_cache *c) {
  if (c == NULL || c->closing)
    return;
  c->closing = true;
  rp__fills_close(c);
  /* A verification of a large object would hold the close up for as long
   * as it hashes: stop it (done reports UV_ECANCELED). */
  for (struct rp__verify *j = c->verifies; j != NULL; j = j->next) {
    atomic_store_explicit(&j->cancel, true, memory_order_relaxed);
    uv_cancel((uv_req_t *)&j->work);
  }
  rp__cache_maybe_finalize(c);
}

/* ---- eviction ---- */

static void evict_one(struct rp_cache *c, struct rp__obj *o) {
  char key[160];
  char *path = rp__blob_path(c, &o->digest);
  struct rp__idx_op *op = NULL;

  if (path != NULL)
    op = rp__idx_op_new(RP_IDX_EVICT, NULL, path, NULL, NULL, NULL, NULL);
  free(path);
  if (op == NULL)
    return; /* kept; tried again at the next publish */
  op->digest = o->digest;
  rp__digest_key(&o->digest, key, sizeof key);
  rp_log_debug("cache: evicting %s (%llu bytes)", key, (unsigned long long)o->size);
  rp__obj_remove(c, o);
  c->evictions++;
  rp__index_submit(c, op);
}

static void obj_info(const struct rp__obj *o, struct rp_object_info *info) {
  memset(info, 0, sizeof *info);
  info->digest = o->digest;
  info->size = o->size;
  snprintf(info->media_type, sizeof info->media_type, "%s",
           o->media_type != NULL ? o->media_type : "");
  info->last_access = o->last_access;
  info->is_manifest = o->is_manifest;
}

/* each (may be NULL) hears of every object evicted, after the fact. */
static void evict_down_to(struct rp_cache *c, uint64_t limit, rp_cache_foreach_cb each,
                          void *data) {
  struct rp__obj *o = c->lru_tail;
  struct rp_object_info info;

  while (c->size_bytes > limit && o != NULL) {
    struct rp__obj *prev = o->prev;
    if (o->pins == 0) {
      uint64_t before = c->nobjects;
      if (each != NULL)
        obj_info(o, &info); /* o is gone once evicted */
      evict_one(c, o);
      if (each != NULL && c->nobjects < before)
        each(&info, data);
    }
    o = prev;
  }
}

void rp__cache_evict(struct rp_cache *c) {
  if (c->max_size != 0)
    evict_down_to(c, c->max_size, NULL, NULL);
}

void rp_cache_stats(const struct rp_cache *c, struct rp_cache_stats *out) {
  memset(out, 0, sizeof *out);
  if (c == NULL)
    return;
  out->size_bytes = c->size_bytes;
  out->max_size = c->max_size;
  out->objects = c->nobjects;
  out->evictions = c->evictions;
  out->digest_mismatches = c->mismatches;
  out->fills_in_flight = c->fills_running;
}

/* ---- direct maintenance ---- */

void rp_cache_foreach(struct rp_cache *c, rp_cache_foreach_cb cb, void *data) {
  struct rp_object_info info;

  if (c == NULL || cb == NULL)
    return;
  for (struct rp__obj *o = c->lru_head; o != NULL; o = o->next) {
    obj_info(o, &info);
    if (!cb(&info, data))
      break;
  }
}

int rp_cache_remove(struct rp_cache *c, const struct rp_digest *d) {
  struct rp__obj *o;
  struct rp__idx_op *op;
  char *path;

  if (c == NULL || d == NULL)
    return RP_EINVAL;
  o = rp__obj_find(c, d);
  if (o == NULL)
    return RP_EINVAL;
  if (o->pins > 0)
    return RP_EDENIED;
  path = rp__blob_path(c, d);
  if (path == NULL)
    return RP_ENOMEM;
  op = rp__idx_op_new(RP_IDX_EVICT, NULL, path, NULL, NULL, NULL, NULL);
  free(path);
  if (op == NULL)
    return RP_ENOMEM;
  op->digest = *d;
  rp__obj_remove(c, o);
  rp__index_submit(c, op);
  return 0;
}

/* Does the file at path hold exactly size bytes hashing to d? Touches no
 * cache state, so it runs on any thread. 0, RP_EDIGEST, RP_ENOMEM, a
 * negative errno, or UV_ECANCELED once *cancel (may be NULL) is set. */
static int hash_file(const char *path, const struct rp_digest *d, uint64_t size,
                     const atomic_bool *cancel) {
  unsigned char md[EVP_MAX_MD_SIZE];
  char hex[2 * EVP_MAX_MD_SIZE + 1];
  unsigned mdlen = 0;
  uint64_t total = 0;
  EVP_MD_CTX *ctx = NULL;
  char *buf = NULL;
  int fd = -1;
  int rc = RP_ENOMEM;

  buf = malloc(RP_CACHE_CHUNK);
  ctx = EVP_MD_CTX_new();
  if (buf == NULL || ctx == NULL)
    goto out;
  fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    rc = -errno;
    goto out;
  }
  if (EVP_DigestInit_ex(ctx, d->algo == 512 ? EVP_sha512() : EVP_sha256(), NULL) != 1)
    goto out;
  for (;;) {
    ssize_t n;
    if (cancel != NULL && atomic_load_explicit(cancel, memory_order_relaxed)) {
      rc = UV_ECANCELED;
      goto out;
    }
    n = read(fd, buf, RP_CACHE_CHUNK);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = -errno;
      goto out;
    }
    if (n == 0)
      break;
    total += (uint64_t)n;
    if (EVP_DigestUpdate(ctx, buf, (size_t)n) != 1)
      goto out;
  }
  if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1)
    goto out;
  for (unsigned i = 0; i < mdlen; i++)
    snprintf(hex + 2 * i, 3, "%02x", md[i]);
  hex[2 * mdlen] = '\0';
  rc = total == size && strcmp(hex, d->hex) == 0 ? 0 : RP_EDIGEST;
out:
  if (fd >= 0)
    close(fd);
  EVP_MD_CTX_free(ctx);
  free(buf);
  return rc;
}

int rp_cache_verify_one(struct rp_cache *c, const struct rp_digest *d) {
  struct rp__obj *o;
  char *path;
  int rc;

  if (c == NULL || d == NULL || (o = rp__obj_find(c, d)) == NULL)
    return RP_EINVAL;
  path = rp__blob_path(c, d);
  if (path == NULL)
    return RP_ENOMEM;
  rc = hash_file(path, d, o->size, NULL);
  free(path);
  if (rc == RP_EDIGEST)
    c->mismatches++;
  return rc;
}

uint64_t rp_cache_evict_to(struct rp_cache *c, uint64_t size, uint64_t *freed) {
  return rp_cache_evict_each(c, size, freed, NULL, NULL);
}

uint64_t rp_cache_evict_each(struct rp_cache *c, uint64_t size, uint64_t *freed,
                             rp_cache_foreach_cb each, void *data) {
  uint64_t before_n, before_b;

  if (freed != NULL)
    *freed = 0;
  if (c == NULL || size == 0)
    return 0;
  before_n = c->nobjects;
  before_b = c->size_bytes;
  evict_down_to(c, size, each, data);
  if (freed != NULL)
    *freed = before_b - c->size_bytes;
  return before_n - c->nobjects;
}

uint64_t rp_cache_trim(struct rp_cache *c, uint64_t max_size, uint64_t *freed) {
  if (freed != NULL)
    *freed = 0;
  if (c == NULL)
    return 0;
  c->max_size = max_size;
  return rp_cache_evict_to(c, max_size, freed);
}

/* ---- maintenance while serving ---- */

static void on_verify_work(uv_work_t *w) {
  struct rp__verify *j = w->data;

  j->result = hash_file(j->path, &j->digest, j->size, &j->cancel);
}

static void on_verify_done(uv_work_t *w, int status) {
  struct rp__verify *j = w->data;
  struct rp_cache *c = j->c;
  int rc = status != 0 ? status : j->result;

  if (rc == RP_EDIGEST) {
    c->mismatches++;
  }
  if (j->prev != NULL)
    j->prev->next = j->next;
  else
    c->verifies = j->next;
  if (j->next != NULL)
    j->next->prev = j->prev;
  /* Unpinned first, so that done may remove the object. */
  rp__obj_unpin(c, j->obj);
  j->done(c, &j->digest, rc, j->data);
  free(j->path);
  free(j);
  c->alive--;
  rp__cache_maybe_finalize(c);
}

int rp_cache_verify_start(struct rp_cache *c, const struct rp_digest *d, rp_cache_verify_cb done,
                          void *data) {
  struct rp__verify *j = NULL;
  struct rp__obj *o;
  int rc;

  if (c == NULL || d == NULL || done == NULL || c->closing || (o = rp__obj_find(c, d)) == NULL)
    return RP_EINVAL;
  j = calloc(1, sizeof *j);
  if (j == NULL)
    return RP_ENOMEM;
  j->path = rp__blob_path(c, d);
  if (j->path == NULL) {
    free(j);
    return RP_ENOMEM;
  }
  j->c = c;
  j->obj = o;
  j->digest = *d;
  j->size = o->size;
  j->done = done;
  j->data = data;
  j->work.data = j;
  atomic_init(&j->cancel, false);
  rc = uv_queue_work(c->loop, &j->work, on_verify_work, on_verify_done);
  if (rc != 0) {
    free(j->path);
    free(j);
    return rc;
  }
  j->next = c->verifies;
  if (c->verifies != NULL)
    c->verifies->prev = j;
  c->verifies = j;
  o->pins++;
  c->alive++;
  return 0;
}

struct flush_req {
  struct rp_cache *c;
  rp_cache_flush_cb done;
  void *data;
};

static void on_flushed(struct rp__idx_op *op) {
  struct flush_req *fr = op->arg;

  fr->done(fr->c, op->result, fr->data);
  free(fr);
}

int rp_cache_flush(struct rp_cache *c, rp_cache_flush_cb done, void *data) {
  struct rp__idx_op *op;
  struct flush_req *fr;

  if (c == NULL || done == NULL || c->closing)
    return RP_EINVAL;
  fr = malloc(sizeof *fr);
  op = rp__idx_op_new(RP_IDX_BARRIER, NULL, NULL, NULL, NULL, NULL, NULL);
  if (fr == NULL || op == NULL) {
    free(fr);
    free(op);
    return RP_ENOMEM;
  }
  fr->c = c;
  fr->done = done;
  fr->data = data;
  op->done = on_flushed;
  op->arg = fr;
  rp__index_submit(c, op);
  return 0;
}
