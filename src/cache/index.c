/* The metadata index: objects (size, media type, last access), the
 * repositories each digest belongs to, and tag memory. The loop answers from
 * the in-memory tables loaded at open; changes go to SQLite (WAL) from the
 * thread pool, one worker at a time, in the order they were made, batched
 * into one transaction per worker run. Publishing (rename into place, fsync
 * the directory) and eviction (unlink) run in the same ordered worker, so a
 * digest evicted and filled again can never lose its new file to the old
 * unlink. */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "cache/internal.h"
#include "regproxy/error.h"
#include "regproxy/log.h"

#define RP__STR2(x) #x
#define RP__STR(x)  RP__STR2(x)

enum {
  ST_PUT,
  ST_TOUCH,
  ST_DEL,
  ST_DEL_REPOS,
  ST_DEL_TAGS,
  ST_REPO,
  ST_TAG,
  ST_TAG_DEL,
  ST_PUB,
  ST_PUB_DEL,
  ST_LAST
};

static const char *const stmt_sql[ST_LAST] = {
    [ST_PUT] = "INSERT OR REPLACE INTO objects(digest, size, media_type, is_manifest, last_access) "
               "VALUES (?1, ?2, ?3, ?4, ?5)",
    [ST_TOUCH] = "UPDATE objects SET last_access = ?2 WHERE digest = ?1",
    [ST_DEL] = "DELETE FROM objects WHERE digest = ?1",
    [ST_DEL_REPOS] = "DELETE FROM object_repos WHERE digest = ?1",
    [ST_DEL_TAGS] = "DELETE FROM tags WHERE digest = ?1",
    [ST_REPO] = "INSERT OR IGNORE INTO object_repos(digest, registry, repository) "
                "VALUES (?1, ?2, ?3)",
    [ST_TAG] = "INSERT OR REPLACE INTO tags(registry, repository, tag, accept_key, digest, "
               "media_type, size, checked) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [ST_TAG_DEL] = "DELETE FROM tags WHERE registry = ?1 AND repository = ?2 AND tag = ?3 AND "
                   "accept_key = ?4",
    [ST_PUB] = "INSERT OR REPLACE INTO public_repos(registry, repository, public, checked) "
               "VALUES (?1, ?2, ?3, ?4)",
    [ST_PUB_DEL] = "DELETE FROM public_repos WHERE registry = ?1 AND repository = ?2",
};

static const char schema_sql[] =
    "PRAGMA journal_mode = WAL;"
    "PRAGMA synchronous = NORMAL;"
    "CREATE TABLE IF NOT EXISTS objects ("
    "  digest TEXT PRIMARY KEY NOT NULL,"
    "  size INTEGER NOT NULL,"
    "  media_type TEXT NOT NULL DEFAULT '',"
    "  is_manifest INTEGER NOT NULL DEFAULT 0,"
    "  last_access INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS object_repos ("
    "  digest TEXT NOT NULL,"
    "  registry TEXT NOT NULL,"
    "  repository TEXT NOT NULL,"
    "  PRIMARY KEY (digest, registry, repository)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS tags ("
    "  registry TEXT NOT NULL,"
    "  repository TEXT NOT NULL,"
    "  tag TEXT NOT NULL,"
    "  accept_key TEXT NOT NULL,"
    "  digest TEXT NOT NULL,"
    "  media_type TEXT NOT NULL DEFAULT '',"
    "  size INTEGER NOT NULL DEFAULT 0,"
    "  checked INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY (registry, repository, tag, accept_key)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS tags_digest ON tags(digest);"
    "CREATE TABLE IF NOT EXISTS public_repos ("
    "  registry TEXT NOT NULL,"
    "  repository TEXT NOT NULL,"
    "  public INTEGER NOT NULL,"
    "  checked INTEGER NOT NULL,"
    "  PRIMARY KEY (registry, repository)) WITHOUT ROWID;";

/* At open: what refers to no object any more goes, and the bounded tables
 * keep their most recent rows (an index written by an older version, or a
 * crash between an object's row and its references). */
static const char prune_sql[] =
    "DELETE FROM object_repos WHERE digest NOT IN (SELECT digest FROM objects);"
    "DELETE FROM tags WHERE digest NOT IN (SELECT digest FROM objects);"
    "DELETE FROM tags WHERE (registry, repository, tag, accept_key) NOT IN "
    "  (SELECT registry, repository, tag, accept_key FROM tags ORDER BY checked DESC "
    "LIMIT " RP__STR(
        RP_CACHE_TAGS_MAX) ");"
                           "DELETE FROM public_repos WHERE (registry, repository) NOT IN "
                           "  (SELECT registry, repository FROM public_repos ORDER BY checked DESC "
                           "LIMIT " RP__STR(RP_CACHE_PUBLIC_MAX) ");";

struct rp__index {
  struct rp_cache *c;
  sqlite3 *db;
  sqlite3_stmt *st[ST_LAST];
  struct rp__idx_op *pend_head, *pend_tail;
  struct rp__idx_op *batch; /* owned by the worker while busy */
  uv_work_t work;
  bool busy;
  bool held; /* until the loop's first turn after the open */
  bool shutting;
  bool close_after; /* this batch closes the database */
  bool closed;
  void (*shutdown_done)(struct rp_cache *c);
  int batch_err;
  char errmsg[256];
};

/* ---- hash tables ---- */

uint64_t rp__hash(const void *p, size_t n) {
  const unsigned char *s = p;
  uint64_t h = 14695981039346656037ULL; /* FNV-1a */

  for (size_t i = 0; i < n; i++) {
    h ^= s[i];
    h *= 1099511628211ULL;
  }
  return h;
}

int rp__htab_init(struct rp__htab *t, size_t nb) {
  t->nb = 16;
  while (t->nb < nb)
    t->nb *= 2;
  t->n = 0;
  t->b = calloc(t->nb, sizeof(struct rp__hnode *));
  return t->b != NULL ? 0 : RP_ENOMEM;
}

void rp__htab_free(struct rp__htab *t) {
  free(t->b);
  t->b = NULL;
  t->nb = t->n = 0;
}

static void htab_grow(struct rp__htab *t) {
  size_t nb = t->nb * 2;
  struct rp__hnode **b = calloc(nb, sizeof(struct rp__hnode *));

  if (b == NULL)
    return;
  for (size_t i = 0; i < t->nb; i++) {
    struct rp__hnode *n = t->b[i], *next;
    for (; n != NULL; n = next) {
      next = n->next;
      n->next = b[n->hash & (nb - 1)];
      b[n->hash & (nb - 1)] = n;
    }
  }
  free(t->b);
  t->b = b;
  t->nb = nb;
}

void rp__htab_insert(struct rp__htab *t, struct rp__hnode *n) {
  struct rp__hnode **b;

  if (t->n >= t->nb)
    htab_grow(t);
  b = &t->b[n->hash & (t->nb - 1)];
  n->next = *b;
  *b = n;
  t->n++;
}

void rp__htab_remove(struct rp__htab *t, struct rp__hnode *n) {
  struct rp__hnode **pp = &t->b[n->hash & (t->nb - 1)];

  while (*pp != NULL && *pp != n)
    pp = &(*pp)->next;
  if (*pp == NULL)
    return;
  *pp = n->next;
  n->next = NULL;
  t->n--;
}

/* ---- objects in memory ---- */

static uint64_t digest_hash(const struct rp_digest *d) {
  return rp__hash(d->hex, (size_t)d->algo / 4) ^ (uint64_t)d->algo;
}

struct rp__obj *rp__obj_find(const struct rp_cache *c, const struct rp_digest *d) {
  uint64_t h = digest_hash(d);

  for (struct rp__hnode *n = rp__htab_first(&c->objs, h); n != NULL; n = n->next) {
    struct rp__obj *o = (struct rp__obj *)n;
    if (n->hash == h && o->digest.algo == d->algo && strcmp(o->digest.hex, d->hex) == 0)
      return o;
  }
  return NULL;
}

static void lru_unlink(struct rp_cache *c, struct rp__obj *o) {
  if (o->prev != NULL)
    o->prev->next = o->next;
  else
    c->lru_head = o->next;
  if (o->next != NULL)
    o->next->prev = o->prev;
  else
    c->lru_tail = o->prev;
  o->prev = o->next = NULL;
}

static void lru_push_front(struct rp_cache *c, struct rp__obj *o) {
  o->prev = NULL;
  o->next = c->lru_head;
  if (c->lru_head != NULL)
    c->lru_head->prev = o;
  c->lru_head = o;
  if (c->lru_tail == NULL)
    c->lru_tail = o;
}

static void account(struct rp_cache *c, int64_t dsize, int64_t dobjs) {
  c->size_bytes += (uint64_t)dsize;
  c->nobjects += (uint64_t)dobjs;
}

/* A new object for d in the table and the totals (not yet in the LRU). */
static struct rp__obj *obj_new(struct rp_cache *c, const struct rp_digest *d, uint64_t size) {
  struct rp__obj *o = calloc(1, sizeof *o);

  if (o == NULL)
    return NULL;
  o->digest = *d;
  o->hn.hash = digest_hash(d);
  rp__htab_insert(&c->objs, &o->hn);
  account(c, (int64_t)size, 1);
  o->size = size;
  return o;
}

/* A copy of a non-empty media type in *out (NULL for none): 0, or RP_ENOMEM. */
static int media_type_dup(const char *media_type, char **out) {
  *out = NULL;
  if (media_type == NULL || media_type[0] == '\0')
    return 0;
  *out = strdup(media_type);
  return *out != NULL ? 0 : RP_ENOMEM;
}

struct rp__obj *rp__obj_put(struct rp_cache *c, const struct rp_digest *d, uint64_t size,
                            bool is_manifest, const char *media_type, int64_t last_access) {
  struct rp__obj *o = rp__obj_find(c, d);
  char *mt;

  if (media_type_dup(media_type, &mt) != 0)
    return NULL;
  if (o != NULL) {
    account(c, (int64_t)size - (int64_t)o->size, 0);
    free(o->media_type);
    lru_unlink(c, o);
  } else {
    o = obj_new(c, d, size);
    if (o == NULL) {
      free(mt);
      return NULL;
    }
  }
  o->size = size;
  o->media_type = mt;
  o->is_manifest = is_manifest;
  o->unchecked = false;
  o->last_access = last_access;
  lru_push_front(c, o);
  return o;
}

void rp__obj_remove(struct rp_cache *c, struct rp__obj *o) {
  rp__members_drop(c, o);
  if (o->is_manifest)
    rp__tags_drop_digest(c, &o->digest);
  rp__htab_remove(&c->objs, &o->hn);
  lru_unlink(c, o);
  account(c, -(int64_t)o->size, -1);
  free(o->media_type);
  free(o);
}

void rp__obj_touch(struct rp_cache *c, struct rp__obj *o) {
  int64_t now = rp__now();
  struct rp__idx_op *op;

  if (c->lru_head != o) {
    lru_unlink(c, o);
    lru_push_front(c, o);
  }
  if (o->last_access == now)
    return;
  o->last_access = now;
  op = rp__idx_op_new(RP_IDX_TOUCH, NULL, NULL, NULL, NULL, NULL, NULL);
  if (op == NULL)
    return; /* only the LRU order after a restart suffers */
  op->digest = o->digest;
  op->time = now;
  rp__index_submit(c, op);
}

void rp__obj_unpin(struct rp_cache *c, struct rp__obj *o) {
  if (o->pins > 0)
    o->pins--;
  if (o->pins == 0 && c->max_size != 0 && c->size_bytes > c->max_size)
    rp__cache_evict(c);
}

void rp__objs_free(struct rp_cache *c) {
  struct rp__obj *o = c->lru_head, *next;

  for (; o != NULL; o = next) {
    next = o->next;
    free(o->media_type);
    free(o);
  }
  c->lru_head = c->lru_tail = NULL;
  rp__htab_free(&c->objs);
}

bool rp_cache_has(struct rp_cache *c, const struct rp_digest *d, struct rp_object_info *out) {
  struct rp__obj *o;

  if (c == NULL || d == NULL)
    return false;
  o = rp__obj_find(c, d);
  if (o == NULL)
    return false;
  if (out != NULL) {
    memset(out, 0, sizeof *out);
    out->digest = o->digest;
    out->size = o->size;
    if (o->media_type != NULL)
      snprintf(out->media_type, sizeof out->media_type, "%s", o->media_type);
    out->last_access = o->last_access;
    out->is_manifest = o->is_manifest;
  }
  return true;
}

/* ---- ops ---- */

struct rp__idx_op *rp__idx_op_new(enum rp__idx_kind kind, const char *from, const char *to,
                                  const char *registry, const char *repository, const char *tag,
                                  const char *accept_key) {
  const char *src[6] = {from, to, registry, repository, tag, accept_key};
  const char **dst[6];
  struct rp__idx_op *op;
  size_t extra = 0;
  char *p;

  for (size_t i = 0; i < 6; i++)
    extra += src[i] != NULL ? strlen(src[i]) + 1 : 0;
  op = calloc(1, sizeof *op + extra);
  if (op == NULL)
    return NULL;
  op->kind = kind;
  dst[0] = &op->from;
  dst[1] = &op->to;
  dst[2] = &op->registry;
  dst[3] = &op->repository;
  dst[4] = &op->tag;
  dst[5] = &op->accept_key;
  p = (char *)(op + 1);
  for (size_t i = 0; i < 6; i++) {
    if (src[i] == NULL)
      continue;
    size_t l = strlen(src[i]) + 1;
    memcpy(p, src[i], l);
    *dst[i] = p;
    p += l;
  }
  return op;
}

/* ---- the worker (thread pool) ---- */

static void note_err(struct rp__index *ix, const char *what) {
  if (ix->batch_err != 0)
    return;
  ix->batch_err = -1;
  snprintf(ix->errmsg, sizeof ix->errmsg, "%s: %s", what, sqlite3_errmsg(ix->db));
}

static void step(struct rp__index *ix, sqlite3_stmt *st, const char *what) {
  if (sqlite3_step(st) != SQLITE_DONE)
    note_err(ix, what);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
}

static int fsync_parent(const char *path) {
  char *copy = strdup(path);
  int fd = -1;
  int rc = -ENOMEM;

  if (copy == NULL)
    goto out;
  fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || fsync(fd) != 0) {
    rc = -errno;
    goto out;
  }
  rc = 0;
out:
  if (fd >= 0)
    close(fd);
  free(copy);
  return rc;
}

/* rename(2), making the <2 hex> directory (durably) when it is missing. */
static int rename_into_place(const char *from, const char *to) {
  char *copy;
  const char *dir;
  int rc;

  if (rename(from, to) == 0)
    return 0;
  if (errno != ENOENT)
    return -errno;
  copy = strdup(to);
  if (copy == NULL)
    return -ENOMEM;
  dir = dirname(copy);
  rc = 0;
  if (mkdir(dir, 0700) != 0 && errno != EEXIST)
    rc = -errno;
  if (rc == 0)
    rc = fsync_parent(dir);
  if (rc == 0 && rename(from, to) != 0)
    rc = -errno;
  free(copy);
  return rc;
}

static void run_check(struct rp__index *ix, struct rp__idx_op *op);

static void run_op(struct rp__index *ix, struct rp__idx_op *op) {
  char dkey[160];
  sqlite3_stmt *st;

  rp__digest_key(&op->digest, dkey, sizeof dkey);
  switch (op->kind) {
  case RP_IDX_PUBLISH:
    op->result = rename_into_place(op->from, op->to);
    if (op->result != 0)
      return;
    op->result = fsync_parent(op->to);
    if (op->result != 0) {
      (void)unlink(op->to); /* not durable: do not keep it */
      return;
    }
    st = ix->st[ST_PUT];
    sqlite3_bind_text(st, 1, dkey, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)op->size);
    sqlite3_bind_text(st, 3, op->media_type, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 4, op->is_manifest ? 1 : 0);
    sqlite3_bind_int64(st, 5, op->time);
    step(ix, st, "insert object");
    break;
  case RP_IDX_TOUCH:
    st = ix->st[ST_TOUCH];
    sqlite3_bind_text(st, 1, dkey, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, op->time);
    step(ix, st, "touch object");
    break;
  case RP_IDX_EVICT:
    /* Row first: a crash in between leaves a file without a row, which the
     * next open removes. */
    st = ix->st[ST_DEL];
    sqlite3_bind_text(st, 1, dkey, -1, SQLITE_STATIC);
    step(ix, st, "delete object");
    st = ix->st[ST_DEL_REPOS];
    sqlite3_bind_text(st, 1, dkey, -1, SQLITE_STATIC);
    step(ix, st, "delete object repositories");
    st = ix->st[ST_DEL_TAGS];
    sqlite3_bind_text(st, 1, dkey, -1, SQLITE_STATIC);
    step(ix, st, "delete object tags");
    if (unlink(op->to) != 0 && errno != ENOENT)
      op->result = -errno;
    break;
  case RP_IDX_REPO:
    st = ix->st[ST_REPO];
    sqlite3_bind_text(st, 1, dkey, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, op->registry, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, op->repository, -1, SQLITE_STATIC);
    step(ix, st, "insert repository");
    break;
  case RP_IDX_TAG:
    st = ix->st[ST_TAG];
    sqlite3_bind_text(st, 1, op->registry, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, op->repository, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, op->tag, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, op->accept_key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, dkey, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, op->media_type, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, (sqlite3_int64)op->size);
    sqlite3_bind_int64(st, 8, op->time);
    step(ix, st, "insert tag");
    break;
  case RP_IDX_TAG_DEL:
    st = ix->st[ST_TAG_DEL];
    sqlite3_bind_text(st, 1, op->registry, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, op->repository, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, op->tag, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, op->accept_key, -1, SQLITE_STATIC);
    step(ix, st, "delete tag");
    break;
  case RP_IDX_PUBLIC:
    st = ix->st[ST_PUB];
    sqlite3_bind_text(st, 1, op->registry, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, op->repository, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, op->is_manifest ? 1 : 0);
    sqlite3_bind_int64(st, 4, op->time);
    step(ix, st, "insert public repository");
    break;
  case RP_IDX_PUBLIC_DEL:
    st = ix->st[ST_PUB_DEL];
    sqlite3_bind_text(st, 1, op->registry, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, op->repository, -1, SQLITE_STATIC);
    step(ix, st, "delete public repository");
    break;
  case RP_IDX_CHECK: run_check(ix, op); break;
  default: break;
  }
}

static void db_close(struct rp__index *ix) {
  for (size_t i = 0; i < ST_LAST; i++) {
    sqlite3_finalize(ix->st[i]);
    ix->st[i] = NULL;
  }
  if (ix->db != NULL && sqlite3_close(ix->db) != SQLITE_OK)
    snprintf(ix->errmsg, sizeof ix->errmsg, "close: %s", sqlite3_errmsg(ix->db));
  ix->db = NULL;
}

static void on_work(uv_work_t *w) {
  struct rp__index *ix = w->data;

  ix->batch_err = 0;
  ix->errmsg[0] = '\0';
  if (ix->batch != NULL && ix->db != NULL) {
    if (sqlite3_exec(ix->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
      note_err(ix, "begin");
    for (struct rp__idx_op *op = ix->batch; op != NULL; op = op->next)
      run_op(ix, op);
    if (sqlite3_exec(ix->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
      note_err(ix, "commit");
      sqlite3_exec(ix->db, "ROLLBACK", NULL, NULL, NULL);
    }
  }
  if (ix->close_after)
    db_close(ix);
}

static void start_batch(struct rp__index *ix);

static void on_after_work(uv_work_t *w, int status) {
  struct rp__index *ix = w->data;
  struct rp__idx_op *op = ix->batch, *next;
  bool closed = ix->close_after;

  ix->batch = NULL;
  ix->busy = false;
  if (ix->errmsg[0] != '\0')
    rp_log_warn("cache index: %s", ix->errmsg);
  for (; op != NULL; op = next) {
    next = op->next;
    if (status != 0 && op->result == 0)
      op->result = status;
    if (op->done != NULL)
      op->done(op);
    free(op);
  }
  if (closed) {
    ix->closed = true;
    ix->shutdown_done(ix->c);
    return;
  }
  start_batch(ix);
}

static void start_batch(struct rp__index *ix) {
  struct rp__idx_op *last = NULL;
  size_t n = 0;
  int rc;

  if (ix->busy || ix->held || ix->closed || (ix->pend_head == NULL && !ix->shutting))
    return;
  ix->batch = ix->pend_head;
  for (struct rp__idx_op *op = ix->pend_head; op != NULL && n < RP_INDEX_BATCH_MAX; op = op->next) {
    last = op;
    n++;
  }
  if (last != NULL) {
    ix->pend_head = last->next;
    last->next = NULL;
    if (ix->pend_head == NULL)
      ix->pend_tail = NULL;
  }
  ix->close_after = ix->shutting && ix->pend_head == NULL;
  ix->busy = true;
  ix->work.data = ix;
  rc = uv_queue_work(ix->c->loop, &ix->work, on_work, on_after_work);
  if (rc != 0) {
    /* Only a bad argument makes uv_queue_work fail; run it here rather than
     * lose the changes. */
    on_work(&ix->work);
    on_after_work(&ix->work, 0);
  }
}

void rp__index_submit(struct rp_cache *c, struct rp__idx_op *op) {
  struct rp__index *ix = c->idx;

  op->next = NULL;
  if (ix == NULL || ix->closed || ix->close_after) {
    op->result = UV_ECANCELED;
    if (op->done != NULL)
      op->done(op);
    free(op);
    return;
  }
  if (ix->pend_tail != NULL)
    ix->pend_tail->next = op;
  else
    ix->pend_head = op;
  ix->pend_tail = op;
  start_batch(ix);
}

void rp__index_shutdown(struct rp_cache *c, void (*done)(struct rp_cache *c)) {
  struct rp__index *ix = c->idx;

  ix->shutting = true;
  ix->shutdown_done = done;
  start_batch(ix);
}

void rp__index_free(struct rp_cache *c) {
  struct rp__index *ix = c->idx;
  struct rp__idx_op *op, *next;

  rp__meta_free(c);
  if (ix == NULL)
    return;
  db_close(ix);
  for (op = ix->pend_head; op != NULL; op = next) {
    next = op->next;
    free(op);
  }
  free(ix);
  c->idx = NULL;
}

/* ---- open: schema, load, reconcile with the files ---- */

static int exec_sql(struct rp__index *ix, const char *sql, char **err, const char *path) {
  char *msg = NULL;
  int rc = sqlite3_exec(ix->db, sql, NULL, NULL, &msg);

  if (rc != SQLITE_OK) {
    if (err != NULL && *err == NULL &&
        asprintf(err, "cache index %s: %s", path, msg != NULL ? msg : sqlite3_errstr(rc)) < 0)
      *err = NULL;
    sqlite3_free(msg);
    return rc;
  }
  return 0;
}

/* ---- open: schema, load, check against the files ---- */

static bool db_damaged(int ec) {
  ec &= 0xff;
  return ec == SQLITE_CORRUPT || ec == SQLITE_NOTADB;
}

struct lru_key {
  int64_t last_access;
  struct rp__obj *o;
};

static int by_last_access(const void *a, const void *b) {
  const struct lru_key *x = a, *y = b;

  if (x->last_access != y->last_access)
    return x->last_access < y->last_access ? -1 : 1;
  return 0;
}

/* The LRU order from last_access (oldest at the tail), sorted here rather
 * than by an ORDER BY, which made SQLite sort every row at start. The keys
 * are copied out so that the sort does not chase object pointers. */
static int lru_rebuild(struct rp_cache *c) {
  struct lru_key *v;
  size_t n = 0;

  if (c->nobjects < 2)
    return 0;
  v = malloc((size_t)c->nobjects * sizeof *v);
  if (v == NULL)
    return RP_ENOMEM;
  for (struct rp__obj *o = c->lru_tail; o != NULL; o = o->prev) {
    v[n].last_access = o->last_access;
    v[n++].o = o;
  }
  qsort(v, n, sizeof *v, by_last_access);
  c->lru_head = c->lru_tail = NULL;
  for (size_t i = 0; i < n; i++)
    lru_push_front(c, v[i].o);
  free(v);
  return 0;
}

/* A row of objects (digests are its primary key: no lookup for an
 * existing entry). */
static struct rp__obj *obj_load(struct rp_cache *c, const struct rp_digest *d, uint64_t size,
                                bool is_manifest, const char *media_type, int64_t last_access) {
  struct rp__obj *o;
  char *mt;

  if (media_type_dup(media_type, &mt) != 0)
    return NULL;
  o = obj_new(c, d, size);
  if (o == NULL) {
    free(mt);
    return NULL;
  }
  o->media_type = mt;
  o->is_manifest = is_manifest;
  o->last_access = last_access;
  o->unchecked = true;
  lru_push_front(c, o);
  return o;
}

/* Every row of objects into memory; each is unchecked until its file was
 * seen (scan below). Rows whose digest does not parse are deleted. */
static int load_objects(struct rp_cache *c) {
  struct rp__index *ix = c->idx;
  sqlite3_stmt *sel = NULL;
  char **drop = NULL;
  size_t ndrop = 0, capdrop = 0;
  int rc = RP_ENOMEM;

  if (sqlite3_prepare_v2(ix->db,
                         "SELECT digest, size, media_type, is_manifest, last_access FROM objects",
                         -1, &sel, NULL) != SQLITE_OK) {
    rc = RP_ECONFIG;
    goto out;
  }
  for (;;) {
    int s = sqlite3_step(sel);
    const char *dtext;
    struct rp_digest d;
    struct rp__obj *o;

    if (s == SQLITE_DONE)
      break;
    if (s != SQLITE_ROW) {
      rc = RP_ECONFIG;
      goto out;
    }
    dtext = (const char *)sqlite3_column_text(sel, 0);
    if (dtext != NULL && rp_digest_parse(dtext, strlen(dtext), &d) == 0) {
      const char *mt = (const char *)sqlite3_column_text(sel, 2);
      o = obj_load(c, &d, (uint64_t)sqlite3_column_int64(sel, 1), sqlite3_column_int(sel, 3) != 0,
                   mt, sqlite3_column_int64(sel, 4));
      if (o == NULL)
        goto out;
      continue;
    }
    if (ndrop == capdrop) {
      size_t ncap = capdrop != 0 ? capdrop * 2 : 16;
      char **nd = realloc(drop, ncap * sizeof *nd);
      if (nd == NULL)
        goto out;
      drop = nd;
      capdrop = ncap;
    }
    drop[ndrop] = strdup(dtext != NULL ? dtext : "");
    if (drop[ndrop] == NULL)
      goto out;
    ndrop++;
  }
  sqlite3_finalize(sel);
  sel = NULL;
  if (ndrop > 0) {
    sqlite3_stmt *del = ix->st[ST_DEL];
    sqlite3_exec(ix->db, "BEGIN", NULL, NULL, NULL);
    for (size_t i = 0; i < ndrop; i++) {
      sqlite3_bind_text(del, 1, drop[i], -1, SQLITE_STATIC);
      (void)sqlite3_step(del);
      sqlite3_reset(del);
      sqlite3_clear_bindings(del);
    }
    sqlite3_exec(ix->db, "COMMIT", NULL, NULL, NULL);
    rp_log_info("cache: dropped %zu index row(s) with a malformed digest", ndrop);
  }
  rc = lru_rebuild(c);
out:
  sqlite3_finalize(sel);
  for (size_t i = 0; i < ndrop; i++)
    free(drop[i]);
  free(drop);
  return rc;
}

/* A digest column of object_repos or tags as a lookup key, without checking
 * its hex digits: it is only used to find an object, and every object's
 * digest was checked when its row was loaded, so a malformed one finds
 * nothing (20,000 digit checks less for 10,000 objects at start). */
static bool digest_key_of(const char *s, struct rp_digest *d) {
  size_t n = s != NULL ? strlen(s) : 0;

  if (n == 7 + 64 && memcmp(s, "sha256:", 7) == 0)
    d->algo = 256;
  else if (n == 7 + 128 && memcmp(s, "sha512:", 7) == 0)
    d->algo = 512;
  else
    return false;
  memcpy(d->hex, s + 7, n - 7);
  d->hex[n - 7] = '\0';
  return true;
}

/* Memberships, tag memory and public answers. Rows that refer to no object
 * are skipped here (the check op deletes them from the file later). */
static int load_meta(struct rp_cache *c) {
  struct rp__index *ix = c->idx;
  sqlite3_stmt *sel = NULL;
  int rc = RP_ECONFIG;
  int s;

  if (sqlite3_prepare_v2(ix->db, "SELECT digest, registry, repository FROM object_repos", -1, &sel,
                         NULL) != SQLITE_OK)
    goto out;
  while ((s = sqlite3_step(sel)) == SQLITE_ROW) {
    const char *dk = (const char *)sqlite3_column_text(sel, 0);
    const char *reg = (const char *)sqlite3_column_text(sel, 1);
    const char *repo = (const char *)sqlite3_column_text(sel, 2);
    struct rp_digest d;
    struct rp__obj *o;
    if (reg != NULL && repo != NULL && digest_key_of(dk, &d) && (o = rp__obj_find(c, &d)) != NULL)
      (void)rp__repo_add(c, o, reg, repo);
  }
  if (s != SQLITE_DONE)
    goto out;
  sqlite3_finalize(sel);
  sel = NULL;
  /* Oldest first: each one set moves to the front, so the order survives. */
  if (sqlite3_prepare_v2(ix->db,
                         "SELECT registry, repository, tag, accept_key, digest, media_type, size, "
                         "checked FROM tags ORDER BY checked ASC",
                         -1, &sel, NULL) != SQLITE_OK)
    goto out;
  while ((s = sqlite3_step(sel)) == SQLITE_ROW) {
    const char *parts[4];
    const char *dk = (const char *)sqlite3_column_text(sel, 4);
    const char *mt = (const char *)sqlite3_column_text(sel, 5);
    struct rp_tag_entry e;

    memset(&e, 0, sizeof e);
    for (int i = 0; i < 4; i++)
      parts[i] = rp__nz((const char *)sqlite3_column_text(sel, i));
    if (!digest_key_of(dk, &e.digest) || rp__obj_find(c, &e.digest) == NULL)
      continue;
    snprintf(e.media_type, sizeof e.media_type, "%s", rp__nz(mt));
    e.size = (uint64_t)sqlite3_column_int64(sel, 6);
    e.checked = sqlite3_column_int64(sel, 7);
    if (!rp__tag_load(c, parts, &e)) {
      rc = RP_ENOMEM;
      goto out;
    }
  }
  if (s != SQLITE_DONE)
    goto out;
  sqlite3_finalize(sel);
  sel = NULL;
  if (sqlite3_prepare_v2(ix->db,
                         "SELECT registry, repository, public, checked FROM public_repos "
                         "ORDER BY checked ASC",
                         -1, &sel, NULL) != SQLITE_OK)
    goto out;
  while ((s = sqlite3_step(sel)) == SQLITE_ROW) {
    const char *parts[2];
    for (int i = 0; i < 2; i++)
      parts[i] = rp__nz((const char *)sqlite3_column_text(sel, i));
    if (!rp__pub_load(c, parts, sqlite3_column_int(sel, 2) != 0, sqlite3_column_int64(sel, 3))) {
      rc = RP_ENOMEM;
      goto out;
    }
  }
  if (s != SQLITE_DONE)
    goto out;
  rp__meta_trim(c);
  rc = 0;
out:
  sqlite3_finalize(sel);
  return rc;
}

/* ---- the files against the index ----
 * A row whose file is missing or has another size is dropped (and such a
 * file removed); a file with no row was never verified by this cache (or its
 * row was lost in a crash) and is removed. At open for `regproxy cache` and
 * after a damaged index; for a server on the thread pool once it is ready:
 * the directories are listed and every file stat'ed there, and the result is
 * applied on the loop, against what is in memory by then. */

struct scan_ent {
  uint64_t size;
  int64_t mtime;
  bool regular;
  short algo;  /* 256 or 512 */
  char sub[3]; /* the <2 hex> directory */
  char name[];
};

struct scan {
  uv_work_t work;
  struct rp_cache *c;
  char *dir;
  struct scan_ent **v;
  size_t n, cap;
  bool oom;
};

static void scan_collect(struct scan *s) {
  static const int algos[] = {256, 512};
  char path[4096];

  for (size_t a = 0; a < 2; a++) {
    for (unsigned i = 0; i < 256; i++) {
      struct dirent *e;
      DIR *dir;

      snprintf(path, sizeof path, "%s/blobs/sha%d/%02x", s->dir, algos[a], i);
      dir = opendir(path);
      if (dir == NULL)
        continue;
      while ((e = readdir(dir)) != NULL) {
        struct scan_ent *se;
        struct stat st;
        size_t len;

        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
          continue;
        if (s->n == s->cap) {
          size_t ncap = s->cap != 0 ? s->cap * 2 : 1024;
          struct scan_ent **nv = realloc(s->v, ncap * sizeof *nv);
          if (nv == NULL) {
            s->oom = true;
            break;
          }
          s->v = nv;
          s->cap = ncap;
        }
        len = strlen(e->d_name);
        se = calloc(1, sizeof *se + len + 1);
        if (se == NULL) {
          s->oom = true;
          break;
        }
        memcpy(se->name, e->d_name, len + 1);
        se->algo = (short)algos[a];
        snprintf(se->sub, sizeof se->sub, "%02x", i);
        if (fstatat(dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
          se->regular = S_ISREG(st.st_mode);
          se->size = (uint64_t)st.st_size;
          se->mtime = (int64_t)st.st_mtime;
        }
        s->v[s->n++] = se;
      }
      closedir(dir);
    }
  }
}

/* Remove a file (and any row of its digest). Synchronously at open, else
 * through the ordered index writer, behind any publish queued before. */
static void scan_remove(struct rp_cache *c, bool now, const char *path, const struct rp_digest *d) {
  struct rp__index *ix = c->idx;
  struct rp__idx_op *op;

  if (now) {
    if (d != NULL) {
      char dkey[160];
      sqlite3_stmt *del = ix->st[ST_DEL];
      rp__digest_key(d, dkey, sizeof dkey);
      sqlite3_bind_text(del, 1, dkey, -1, SQLITE_STATIC);
      (void)sqlite3_step(del);
      sqlite3_reset(del);
      sqlite3_clear_bindings(del);
    }
    if (path != NULL && unlink(path) != 0 && errno != ENOENT)
      rp_log_warn("cache: cannot remove %s: %s", path, strerror(errno));
    return;
  }
  op = rp__idx_op_new(RP_IDX_EVICT, NULL, path, NULL, NULL, NULL, NULL);
  if (op == NULL)
    return; /* found again at the next start */
  if (d != NULL)
    op->digest = *d;
  rp__index_submit(c, op);
}

static void scan_apply(struct scan *s, bool now) {
  struct rp_cache *c = s->c;
  char path[4096], name[160];
  unsigned files = 0, rows = 0;

  for (size_t i = 0; i < s->n; i++) {
    struct scan_ent *se = s->v[i];
    struct rp_digest d;
    struct rp__obj *o = NULL;
    bool parsed;
    int n = snprintf(name, sizeof name, "sha%d:%s", se->algo, se->name);

    parsed = n > 0 && (size_t)n < sizeof name && rp_digest_parse(name, (size_t)n, &d) == 0 &&
             strncmp(d.hex, se->sub, 2) == 0;
    if (parsed)
      o = rp__obj_find(c, &d);
    if (o != NULL) {
      if (o->unchecked && se->regular && se->size == o->size)
        o->unchecked = false;
      continue; /* else: handled with the unchecked objects below */
    }
    /* Written by this run (published after the listing began, or being
     * published now): not a stray. */
    if (!now && se->mtime >= c->opened_at)
      continue;
    if (parsed) {
      struct rp_fill *f = rp_fill_find(c, &d);
      if (f != NULL) {
        rp_fill_unref(f);
        continue;
      }
    }
    snprintf(path, sizeof path, "%s/blobs/sha%d/%s/%s", c->dir, se->algo, se->sub, se->name);
    scan_remove(c, now, path, NULL);
    files++;
  }
  for (struct rp__obj *o = c->lru_head, *next; o != NULL; o = next) {
    struct stat st;
    char *p;

    next = o->next;
    if (!o->unchecked)
      continue;
    o->unchecked = false;
    if (o->pins > 0)
      continue; /* being read: left for the next start */
    p = rp__blob_path(c, &o->digest);
    if (p == NULL)
      continue;
    /* Only a few, in a damaged directory: looked at once more from here. */
    if (!now && lstat(p, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == o->size) {
      free(p);
      continue;
    }
    scan_remove(c, now, p, &o->digest);
    free(p);
    rp__obj_remove(c, o);
    rows++;
  }
  if (rows > 0)
    rp_log_info("cache: dropped %u index row(s) without their file", rows);
  if (files > 0)
    rp_log_info("cache: removed %u file(s) without an index row", files);
}

static void scan_free(struct scan *s) {
  for (size_t i = 0; i < s->n; i++)
    free(s->v[i]);
  free(s->v);
  free(s->dir);
  free(s);
}

static void on_scan_work(uv_work_t *w) {
  scan_collect(w->data);
}

static void on_scan_done(uv_work_t *w, int status) {
  struct scan *s = w->data;
  struct rp_cache *c = s->c;

  c->scanning = false;
  c->alive--;
  if (status == 0 && !s->oom && !c->closing)
    scan_apply(s, false);
  else if (s->oom)
    rp_log_warn("cache: out of memory listing the cache directory; files are checked at the "
                "next start");
  scan_free(s);
  rp__cache_maybe_finalize(c);
}

/* Synchronously (at open): no file or row is kept unchecked. */
static int scan_now(struct rp_cache *c) {
  struct scan *s = calloc(1, sizeof *s);
  int rc = RP_ENOMEM;

  if (s == NULL)
    return rc;
  s->c = c;
  s->dir = strdup(c->dir);
  if (s->dir != NULL) {
    scan_collect(s);
    if (!s->oom) {
      scan_apply(s, true);
      rc = 0;
    }
  }
  scan_free(s);
  return rc;
}

static void on_check_done(struct rp__idx_op *op) {
  struct rp_cache *c = op->arg;
  char path[4096];
  int fd;

  if (op->result != RP_ECONFIG)
    return;
  snprintf(path, sizeof path, "%s/index.db.check-failed", c->dir);
  fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd >= 0)
    close(fd);
  rp_log_warn("cache index %s/index.db failed its check (%s): it is set aside at the next start, "
              "and its objects fetched again when asked for",
              c->dir, op->media_type);
}

/* The check op and the file listing start on the loop's first turn, once the
 * caller is done starting (a server's listeners accept): queued at the open,
 * they competed for the CPU with the rest of the start-up. */
static void on_after_open(struct rp__task *t) {
  struct rp_cache *c = rp__container_of(t, struct rp_cache, after_open);
  struct scan *s;

  c->alive--;
  c->idx->held = false;
  start_batch(c->idx);
  if (c->closing || !c->scanning) {
    c->scanning = false;
    rp__cache_maybe_finalize(c);
    return;
  }
  s = calloc(1, sizeof *s);
  if (s == NULL || (s->dir = strdup(c->dir)) == NULL) {
    free(s);
    c->scanning = false;
    rp_log_warn("cache: out of memory; files are checked at the next start");
    return;
  }
  s->c = c;
  s->work.data = s;
  if (uv_queue_work(c->loop, &s->work, on_scan_work, on_scan_done) != 0) {
    c->scanning = false;
    scan_free(s);
    return;
  }
  c->alive++;
}

void rp__index_scan_start(struct rp_cache *c) {
  struct rp__idx_op *op;

  /* The prune and the whole-file check that used to delay the open are the
   * index writer's first op; the writer waits for the loop's first turn. */
  c->idx->held = true;
  op = rp__idx_op_new(RP_IDX_CHECK, NULL, NULL, NULL, NULL, NULL, NULL);
  if (op != NULL) {
    op->done = on_check_done;
    op->arg = c;
    rp__index_submit(c, op);
  }
  c->scanning = c->defer_file_check && c->nobjects > 0;
  c->after_open.run = on_after_open;
  c->alive++;
  rp__task_post(c, &c->after_open);
}

/* The file is not a database, or one with damaged pages (a disk fault, a
 * file cut short or overwritten): PRAGMA quick_check reads every page. */
static bool index_damaged(sqlite3 *db, char *why, size_t whysz) {
  sqlite3_stmt *st = NULL;
  const char *res;
  int ec;
  bool bad = false;

  if (sqlite3_prepare_v2(db, "PRAGMA quick_check(1)", -1, &st, NULL) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    res = (const char *)sqlite3_column_text(st, 0);
    bad = res == NULL || strcmp(res, "ok") != 0;
    snprintf(why, whysz, "%s", res != NULL ? res : "quick_check failed");
  } else {
    ec = sqlite3_errcode(db);
    bad = db_damaged(ec);
    snprintf(why, whysz, "%s", sqlite3_errmsg(db));
  }
  sqlite3_finalize(st);
  return bad;
}

/* In the index writer, first after the open: rows that refer to nothing go,
 * the bounded tables keep their most recent rows, and the whole file is
 * checked (it used to be checked before the open returned: reading every
 * page of a large index delayed the start). */
static void run_check(struct rp__index *ix, struct rp__idx_op *op) {
  char why[RP_MEDIA_TYPE_MAX];

  if (sqlite3_exec(ix->db, prune_sql, NULL, NULL, NULL) != SQLITE_OK)
    note_err(ix, "pruning");
  if (index_damaged(ix->db, why, sizeof why)) {
    op->result = RP_ECONFIG;
    snprintf(op->media_type, sizeof op->media_type, "%s", why);
  }
}

/* A damaged index goes aside (with its WAL, which belongs to it) and the
 * cache starts with an empty one: the blob files it listed are then removed
 * as unknown and fetched again when asked for. A proxy that refused to
 * start would stop every pull of the machine for what is only a cache. */
static int index_set_aside(struct rp__index *ix, const char *path, const char *why) {
  static const char *const sfx[] = {"", "-wal", "-shm"};
  char from[4096], to[4096];

  for (size_t i = 0; i < ST_LAST; i++) {
    sqlite3_finalize(ix->st[i]);
    ix->st[i] = NULL;
  }
  sqlite3_close(ix->db);
  ix->db = NULL;
  for (size_t i = 0; i < 3; i++) {
    snprintf(from, sizeof from, "%s%s", path, sfx[i]);
    snprintf(to, sizeof to, "%s.damaged%s", path, sfx[i]);
    if (rename(from, to) != 0 && errno != ENOENT)
      return -errno;
  }
  snprintf(from, sizeof from, "%s.check-failed", path);
  (void)unlink(from);
  rp_log_warn("cache index %s is damaged (%s): moved to %s.damaged, starting with an empty "
              "index; cached objects are fetched again when asked for",
              path, why, path);
  return 0;
}

/* Forget what a damaged index loaded before its damage showed. */
static int unload(struct rp_cache *c) {
  rp__meta_free(c);
  rp__objs_free(c);
  c->size_bytes = 0;
  c->nobjects = 0;
  c->nregistries = 0;
  if (rp__htab_init(&c->objs, 1024) != 0 || rp__htab_init(&c->repos, 1024) != 0 ||
      rp__htab_init(&c->tags.t, 256) != 0 || rp__htab_init(&c->pubs.t, 256) != 0)
    return RP_ENOMEM;
  return 0;
}

/* Schema, statements, and every row into memory. */
static int load(struct rp_cache *c, const char *path, char **err) {
  struct rp__index *ix = c->idx;
  int rc;

  if (exec_sql(ix, schema_sql, err, path) != 0)
    return RP_ECONFIG;
  for (size_t i = 0; i < ST_LAST; i++) {
    if (sqlite3_prepare_v2(ix->db, stmt_sql[i], -1, &ix->st[i], NULL) != SQLITE_OK) {
      if (err != NULL && *err == NULL &&
          asprintf(err, "cache index %s: %s", path, sqlite3_errmsg(ix->db)) < 0)
        *err = NULL;
      return RP_ECONFIG;
    }
  }
  rc = load_objects(c);
  if (rc == 0)
    rc = load_meta(c);
  if (rc != 0 && err != NULL && *err == NULL &&
      asprintf(err, "cache index %s: %s", path,
               rc == RP_ENOMEM ? "out of memory" : sqlite3_errmsg(ix->db)) < 0)
    *err = NULL;
  return rc;
}

/* Damage shows as SQLITE_NOTADB or SQLITE_CORRUPT while the schema is read
 * and every row loaded, which reads every page of the tables; the rest of
 * the file (free pages, the tags index) is checked by the first op of the
 * index writer, which marks the index to be set aside at the next start. */
int rp__index_open(struct rp_cache *c, char **err) {
  struct rp__index *ix;
  char *path = NULL;
  char why[256];
  bool damaged = false;
  int rc = RP_ENOMEM;

  ix = calloc(1, sizeof *ix);
  if (ix == NULL)
    goto out;
  ix->c = c;
  c->idx = ix;
  if (asprintf(&path, "%s/index.db", c->dir) < 0) {
    path = NULL;
    goto out;
  }
  for (int attempt = 0;; attempt++) {
    char marker[4200];
    char *lerr = NULL;

    rc = RP_ECONFIG;
    if (sqlite3_open_v2(path, &ix->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
      if (err != NULL && *err == NULL &&
          asprintf(err, "cache index %s: %s", path,
                   ix->db != NULL ? sqlite3_errmsg(ix->db) : "cannot open") < 0)
        *err = NULL;
      goto out;
    }
    sqlite3_busy_timeout(ix->db, 5000);
    snprintf(marker, sizeof marker, "%s.check-failed", path);
    if (attempt == 0 && access(marker, F_OK) == 0) {
      snprintf(why, sizeof why, "it failed its check in an earlier run");
    } else {
      rc = load(c, path, attempt == 0 ? &lerr : err);
      if (rc == 0 || attempt > 0 || !db_damaged(sqlite3_errcode(ix->db))) {
        if (rc != 0 && lerr != NULL && err != NULL && *err == NULL) {
          *err = lerr;
          lerr = NULL;
        }
        free(lerr);
        break;
      }
      snprintf(why, sizeof why, "%s", sqlite3_errmsg(ix->db));
      free(lerr);
    }
    rc = unload(c);
    if (rc != 0)
      goto out;
    rc = index_set_aside(ix, path, why);
    if (rc != 0) {
      if (err != NULL && *err == NULL &&
          asprintf(err, "cache index %s is damaged (%s) and cannot be moved aside: %s", path, why,
                   strerror(-rc)) < 0)
        *err = NULL;
      rc = RP_ECONFIG;
      goto out;
    }
    damaged = true;
  }
  if (rc != 0)
    goto out;
  /* After a damaged index every file is a stray: removed now, whatever the
   * caller asked for, so nothing unverified is ever served. */
  if (!c->defer_file_check || damaged)
    rc = scan_now(c);
out:
  free(path);
  return rc;
}
