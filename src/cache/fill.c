/* Fills: one upstream body per digest at a time (single-flight). Bytes are
 * hashed as they are accepted, buffered (bounded) and written to
 * tmp/<hex>.<random> with uv_fs_write; readers tail the temp file up to the
 * committed length. At the end: size and digest verified, fsync, rename into
 * blobs/ and fsync the directory (ordered with evictions in the index
 * worker), then published. After a disk error the fill stops writing and
 * keeps serving its readers from a bounded window in memory, and never
 * publishes. */

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "cache/internal.h"
#include "regproxy/error.h"
#include "regproxy/log.h"

static void fill_free(struct rp_fill *f);
static void kick_write(struct rp_fill *f);

static void fill_release(struct rp_fill *f) {
  rp_fill_unref(f);
}

static void fill_hold(struct rp_fill *f) {
  f->refs++;
}

static uint64_t digest_hash(const struct rp_digest *d) {
  return rp__hash(d->hex, (size_t)d->algo / 4) ^ (uint64_t)d->algo;
}

static struct rp_fill *find_running(const struct rp_cache *c, const struct rp_digest *d) {
  uint64_t h = digest_hash(d);

  for (struct rp__hnode *n = rp__htab_first(&c->fills, h); n != NULL; n = n->next) {
    struct rp_fill *f = (struct rp_fill *)n;
    if (n->hash == h && f->digest.algo == d->algo && strcmp(f->digest.hex, d->hex) == 0)
      return f;
  }
  return NULL;
}

static void log_fill(enum rp_log_level level, const char *msg, const struct rp_fill *f,
                     const char *reason, int err) {
  struct rp_logline l;
  char key[160];

  if (!rp_log_enabled(level))
    return;
  rp__digest_key(&f->digest, key, sizeof key);
  rp_logline_begin(&l, level, msg);
  rp_logline_str(&l, "digest", key);
  rp_logline_u64(&l, "received", f->accepted);
  if (f->expected >= 0)
    rp_logline_u64(&l, "expected_size", (uint64_t)f->expected);
  if (reason != NULL)
    rp_logline_str(&l, "reason", reason);
  if (err != 0)
    rp_logline_str(&l, "error", rp_strerror(err));
  rp_logline_end(&l);
}

/* A disk error is a warning once: a read-only or full cache directory fails
 * every fill, and one line per fill would bury the request log. The next fill
 * that is stored says so. */
static enum rp_log_level disk_error_level(struct rp_cache *c) {
  enum rp_log_level level = c->disk_failing ? RP_LOG_DEBUG : RP_LOG_WARN;

  c->disk_failing = true;
  return level;
}

static void log_fill_refused(const struct rp_cache *c, const struct rp_digest *d,
                             int64_t expected) {
  struct rp_logline l;
  char key[160];

  rp__digest_key(d, key, sizeof key);
  rp_logline_begin(&l, RP_LOG_WARN, "cache fill refused");
  rp_logline_str(&l, "digest", key);
  if (expected >= 0)
    rp_logline_u64(&l, "expected_size", (uint64_t)expected);
  rp_logline_u64(&l, "fills_running", c->fills_running);
  rp_logline_u64(&l, "max_size", c->max_size);
  rp_logline_str(&l, "reason",
                 c->fills_running >= RP_CACHE_FILLS_MAX ? "too many fills at once"
                                                        : "larger than the cache can hold");
  rp_logline_end(&l);
}

/* ---- chunks ---- */

static void chunk_drop_head(struct rp_fill *f) {
  struct rp__fchunk *ch = f->head;

  f->head = ch->next;
  if (f->head == NULL)
    f->tail = NULL;
  rp__chunk_free(f->c, ch->buf);
  free(ch);
}

static void free_chunks(struct rp_fill *f) {
  while (f->head != NULL)
    chunk_drop_head(f);
}

static int append(struct rp_fill *f, const char *p, size_t n) {
  uint64_t pos = f->accepted;

  while (n > 0) {
    struct rp__fchunk *t = f->tail;
    size_t k;

    if (t == NULL || t->len == RP_CACHE_CHUNK) {
      t = calloc(1, sizeof *t);
      if (t == NULL)
        return RP_ENOMEM;
      t->buf = rp__chunk_alloc(f->c);
      if (t->buf == NULL) {
        free(t);
        return RP_ENOMEM;
      }
      t->off = pos;
      if (f->tail != NULL)
        f->tail->next = t;
      else
        f->head = t;
      f->tail = t;
    }
    k = RP_CACHE_CHUNK - t->len;
    if (k > n)
      k = n;
    memcpy(t->buf + t->len, p, k);
    t->len += k;
    p += k;
    n -= k;
    pos += k;
  }
  return 0;
}

/* ---- producer notifications and window upkeep (deferred) ---- */

static void post(struct rp_fill *f) {
  if (f->task.queued)
    return;
  fill_hold(f);
  rp__task_post(f->c, &f->task);
}

static void notify_state(struct rp_fill *f) {
  if (f->on_state == NULL)
    return;
  f->notify_state = true;
  post(f);
}

static uint64_t buffered(const struct rp_fill *f) {
  return f->accepted - (f->disk_failed ? f->win_start : f->committed);
}

static uint64_t buffer_max(const struct rp_fill *f) {
  return f->disk_failed ? RP_FILL_WINDOW_MAX : RP_FILL_PENDING_MAX;
}

static void maybe_writable(struct rp_fill *f) {
  if (!f->want_writable || f->state != RP_FILL_RUNNING || f->finishing)
    return;
  if (buffered(f) > buffer_max(f) / 2)
    return;
  f->want_writable = false;
  f->notify_writable = true;
  post(f);
}

/* Drop window chunks every attached reader has read past. */
static void trim_window(struct rp_fill *f) {
  uint64_t minpos = f->accepted;

  if (!f->disk_failed || f->state != RP_FILL_RUNNING)
    return;
  for (struct rp_reader *r = f->readers; r != NULL; r = r->fnext) {
    if (r->rpos < minpos)
      minpos = r->rpos;
  }
  while (f->head != NULL && f->head->off + f->head->len <= minpos &&
         (f->head != f->tail || f->head->len == RP_CACHE_CHUNK))
    chunk_drop_head(f);
  f->win_start = f->head != NULL ? f->head->off : f->accepted;
  maybe_writable(f);
}

static void on_task(struct rp__task *t) {
  struct rp_fill *f = rp__container_of(t, struct rp_fill, task);
  rp_fill_cb cb;

  trim_window(f);
  if (f->notify_state) {
    f->notify_state = false;
    f->notify_writable = false;
    cb = f->on_state;
    f->on_state = f->on_writable = NULL;
    if (cb != NULL)
      cb(f, f->producer_data);
  }
  if (f->notify_published) {
    f->notify_published = false;
    cb = f->on_published;
    f->on_published = NULL;
    if (cb != NULL)
      cb(f, f->published_data);
  }
  if (f->notify_settled) {
    f->notify_settled = false;
    cb = f->on_settled;
    f->on_settled = NULL;
    if (cb != NULL)
      cb(f, f->settled_data);
  }
  if (f->notify_writable) {
    f->notify_writable = false;
    cb = f->on_writable;
    if (cb != NULL && f->state == RP_FILL_RUNNING && !f->finishing)
      cb(f, f->producer_data);
  }
  fill_release(f);
}

static void wake_readers(struct rp_fill *f) {
  for (struct rp_reader *r = f->readers; r != NULL; r = r->fnext)
    rp__reader_wake(r);
}

/* ---- state changes ---- */

static void leave_table(struct rp_fill *f) {
  struct rp_cache *c = f->c;

  rp__htab_remove(&c->fills, &f->hn);
  c->fills_running--;
  if (f->expected > 0)
    c->fills_announced -= (uint64_t)f->expected;
}

static void on_unlink(uv_fs_t *req) {
  struct rp_fill *f = req->data;

  uv_fs_req_cleanup(req);
  fill_release(f);
}

static void unlink_tmp(struct rp_fill *f) {
  if (f->tmp_gone)
    return;
  if (f->opening) {
    f->unlink_wanted = true;
    return;
  }
  f->tmp_gone = true;
  f->unlink_req.data = f;
  fill_hold(f);
  if (uv_fs_unlink(f->c->loop, &f->unlink_req, f->tmp_path, on_unlink) != 0)
    f->refs--;
}

static void fail(struct rp_fill *f, int err, const char *reason) {
  if (f->state != RP_FILL_RUNNING)
    return;
  f->state = RP_FILL_FAILED;
  f->error = err;
  f->publishing = false;
  leave_table(f);
  if (f->on_settled != NULL) {
    f->notify_settled = true;
    post(f);
  }
  log_fill(err == RP_EDIGEST ? RP_LOG_WARN : RP_LOG_INFO, "cache fill failed", f, reason, err);
  unlink_tmp(f);
  if (!f->write_busy)
    free_chunks(f);
  wake_readers(f);
}

static void mismatch(struct rp_fill *f, const char *what, const char *got) {
  struct rp_logline l;
  char key[160];

  f->c->mismatches++;
  rp__digest_key(&f->digest, key, sizeof key);
  rp_logline_begin(&l, RP_LOG_WARN, "digest_mismatch");
  rp_logline_str(&l, "digest", key);
  rp_logline_str(&l, "check", what);
  rp_logline_u64(&l, "received", f->accepted);
  if (f->expected >= 0)
    rp_logline_u64(&l, "expected_size", (uint64_t)f->expected);
  if (got != NULL)
    rp_logline_str(&l, "got", got);
  rp_logline_end(&l);
  fail(f, RP_EDIGEST, "digest_mismatch");
}

/* Verified, but nothing enters the cache (disk error): readers still get
 * every byte, from the temp file's descriptor or the memory window. */
static void done_unpublished(struct rp_fill *f, int why) {
  f->verified = true;
  f->final_size = f->accepted;
  f->publishing = false;
  f->state = RP_FILL_FAILED;
  f->error = 0;
  leave_table(f);
  log_fill(disk_error_level(f->c), "cache fill verified but not stored", f, "disk error", why);
  unlink_tmp(f);
  wake_readers(f);
}

static void publish_mem(struct rp_fill *f) {
  struct rp_cache *c = f->c;
  struct rp__obj *o;

  o = rp__obj_put(c, &f->digest, f->accepted, f->is_manifest, f->media_type, rp__now());
  if (o == NULL)
    log_fill(RP_LOG_WARN, "cache: published object not in memory", f, NULL, RP_ENOMEM);
  f->verified = true;
  f->final_size = f->accepted;
  f->publishing = false;
  f->state = RP_FILL_PUBLISHED;
  leave_table(f);
  for (struct rp_reader *r = f->readers; o != NULL && r != NULL; r = r->fnext) {
    if (r->obj == NULL) {
      r->obj = o;
      o->pins++;
    }
  }
  log_fill(RP_LOG_DEBUG, "cache fill published", f, NULL, 0);
  if (c->disk_failing) {
    c->disk_failing = false;
    log_fill(RP_LOG_INFO, "cache writable again: fill stored after disk errors", f, NULL, 0);
  }
  /* Verified and in place: only now does it belong to the repositories it
   * was fetched for (contract §3: membership only for verified objects). */
  for (struct rp__fill_repo *fr = f->repos; o != NULL && fr != NULL; fr = fr->next)
    rp_cache_note_repo(c, &f->digest, fr->registry, fr->repository);
  if (f->on_published != NULL) {
    f->notify_published = true;
    post(f);
  }
  if (f->on_settled != NULL) {
    f->notify_settled = true;
    post(f);
  }
  wake_readers(f);
  rp__cache_evict(c);
}

static void on_published(struct rp__idx_op *op) {
  struct rp_fill *f = op->arg;

  if (op->result != 0) {
    if (op->result != UV_ECANCELED)
      log_fill(disk_error_level(f->c), "cache: cannot move fill into place", f, NULL, op->result);
    done_unpublished(f, op->result);
  } else {
    f->tmp_gone = true; /* renamed */
    publish_mem(f);
  }
  fill_release(f);
}

static void on_fsync(uv_fs_t *req) {
  struct rp_fill *f = req->data;
  ssize_t res = req->result;
  struct rp__idx_op *op;

  uv_fs_req_cleanup(req);
  if (f->state != RP_FILL_RUNNING)
    goto out;
  if (res < 0) {
    done_unpublished(f, (int)res);
    goto out;
  }
  op = rp__idx_op_new(RP_IDX_PUBLISH, f->tmp_path, f->final_path, NULL, NULL, NULL, NULL);
  if (op == NULL) {
    done_unpublished(f, RP_ENOMEM);
    goto out;
  }
  op->digest = f->digest;
  op->size = f->accepted;
  op->is_manifest = f->is_manifest;
  snprintf(op->media_type, sizeof op->media_type, "%s", f->media_type);
  op->time = rp__now();
  op->done = on_published;
  op->arg = f;
  fill_hold(f);
  rp__index_submit(f->c, op);
out:
  fill_release(f);
}

static void to_hex(const unsigned char *p, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";

  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 15];
  }
  out[2 * n] = '\0';
}

/* Every byte is in: check size and digest, then make it durable. */
static void verify(struct rp_fill *f) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  char hex[2 * EVP_MAX_MD_SIZE + 1];
  int rc;

  if (f->state != RP_FILL_RUNNING || f->publishing || f->verified)
    return;
  if (f->expected >= 0 && f->accepted != (uint64_t)f->expected) {
    mismatch(f, "size", NULL);
    return;
  }
  if (EVP_DigestFinal_ex(f->md, md, &mdlen) != 1) {
    fail(f, RP_ENOMEM, "hash");
    return;
  }
  to_hex(md, mdlen, hex);
  if (strcmp(hex, f->digest.hex) != 0) {
    mismatch(f, "digest", hex);
    return;
  }
  if (f->disk_failed) {
    done_unpublished(f, f->disk_err);
    return;
  }
  f->publishing = true;
  f->sync_req.data = f;
  fill_hold(f);
  rc = uv_fs_fsync(f->c->loop, &f->sync_req, f->fd, on_fsync);
  if (rc != 0) {
    f->refs--;
    done_unpublished(f, rc);
  }
}

static void disk_fail(struct rp_fill *f, int err) {
  if (f->disk_failed || f->state != RP_FILL_RUNNING)
    return;
  f->disk_failed = true;
  f->disk_err = err;
  f->disk_committed = f->committed;
  f->win_start = f->head != NULL ? f->head->off : f->accepted;
  log_fill(disk_error_level(f->c), "cache disk error: serving from memory, not storing", f, NULL,
           err);
  unlink_tmp(f);
  if (f->nreaders == 0) {
    fail(f, err, "disk error");
    notify_state(f);
    return;
  }
  wake_readers(f);
  maybe_writable(f);
  if (f->finishing)
    verify(f);
}

/* ---- writing the temp file ---- */

/* Writeback: ask the kernel to start writing what we wrote, in the thread
 * pool (it may wait for a congested device), so that the disk works while the
 * fill runs instead of all at the final fsync. */
static void on_wb_work(uv_work_t *w) {
  struct rp_fill *f = w->data;

#ifdef __linux__
  (void)sync_file_range(f->fd, (off_t)f->wb_from, (off_t)(f->wb_to - f->wb_from),
                        SYNC_FILE_RANGE_WRITE);
#else
  (void)f;
#endif
}

static void on_wb_done(uv_work_t *w, int status) {
  struct rp_fill *f = w->data;

  f->wb_busy = false;
  f->wb_from = f->wb_to;
  fill_release(f);
}

static void start_writeback(struct rp_fill *f) {
  if (f->wb_busy || f->fd < 0 || f->committed - f->wb_from < RP_FILL_WRITEBACK_STEP)
    return;
  f->wb_busy = true;
  f->wb_to = f->committed;
  f->wb_work.data = f;
  fill_hold(f);
  if (uv_queue_work(f->c->loop, &f->wb_work, on_wb_work, on_wb_done) != 0) {
    f->wb_busy = false;
    f->refs--;
  }
}

/* Chunks written out are freed, except a tail with room left. */
static void drop_written(struct rp_fill *f) {
  while (f->head != NULL && f->head->off + f->head->len <= f->committed &&
         (f->head != f->tail || f->head->len == RP_CACHE_CHUNK))
    chunk_drop_head(f);
}

static void on_write(uv_fs_t *req) {
  struct rp_fill *f = req->data;
  ssize_t res = req->result;

  uv_fs_req_cleanup(req);
  f->write_busy = false;
  if (res > 0 && rp__cache_faults.write_err != 0 &&
      f->committed + (uint64_t)res > rp__cache_faults.write_err_at)
    res = rp__cache_faults.write_err;
  if (f->state != RP_FILL_RUNNING) {
    if (!f->verified)
      free_chunks(f);
  } else if (!f->disk_failed) {
    if (res <= 0) {
      disk_fail(f, res < 0 ? (int)res : UV_EIO);
    } else {
      f->committed += (uint64_t)res;
      drop_written(f);
      start_writeback(f);
      wake_readers(f);
      maybe_writable(f);
      kick_write(f);
    }
  }
  fill_release(f);
}

static void kick_write(struct rp_fill *f) {
  uv_buf_t iov[RP_FILL_IOV_MAX];
  unsigned nb = 0;
  size_t total = 0;
  int rc;

  if (f->write_busy || f->opening || f->disk_failed || f->state != RP_FILL_RUNNING || f->publishing)
    return;
  if (f->committed == f->accepted) {
    if (f->finishing)
      verify(f);
    return;
  }
  for (struct rp__fchunk *ch = f->head;
       ch != NULL && nb < RP_FILL_IOV_MAX && total < RP_FILL_WRITE_MAX; ch = ch->next) {
    uint64_t start = ch->off > f->committed ? ch->off : f->committed;
    size_t len;
    if (start >= ch->off + ch->len)
      continue;
    len = (size_t)(ch->off + ch->len - start);
    if (len > RP_FILL_WRITE_MAX - total)
      len = RP_FILL_WRITE_MAX - total;
    iov[nb++] = uv_buf_init(ch->buf + (start - ch->off), (unsigned)len);
    total += len;
  }
  f->write_busy = true;
  f->write_req.data = f;
  fill_hold(f);
  rc = uv_fs_write(f->c->loop, &f->write_req, f->fd, iov, nb, (int64_t)f->committed, on_write);
  if (rc != 0) {
    f->write_busy = false;
    f->refs--;
    disk_fail(f, rc);
  }
}

static void on_open(uv_fs_t *req) {
  struct rp_fill *f = req->data;
  ssize_t res = req->result;

  uv_fs_req_cleanup(req);
  f->opening = false;
  if (res >= 0)
    f->fd = (uv_file)res;
  else
    f->tmp_gone = true; /* never created (O_EXCL) */
  if (f->unlink_wanted)
    unlink_tmp(f);
  if (f->state == RP_FILL_RUNNING) {
    if (res < 0)
      disk_fail(f, (int)res);
    else
      kick_write(f);
  }
  fill_release(f);
}

/* ---- public ---- */

struct rp_fill *rp_fill_find(struct rp_cache *c, const struct rp_digest *d) {
  struct rp_fill *f;

  if (c == NULL || d == NULL)
    return NULL;
  f = find_running(c, d);
  if (f != NULL)
    fill_hold(f);
  return f;
}

struct rp_fill *rp_fill_start(struct rp_cache *c, const struct rp_digest *d, int64_t expected_size,
                              bool is_manifest, const char *media_type) {
  struct rp_fill *f = NULL;
  unsigned char rnd[8];
  char rhex[17];
  int rc = RP_ENOMEM;

  if (c == NULL || d == NULL || c->closing || find_running(c, d) != NULL)
    return NULL;
  if (c->fills_running >= RP_CACHE_FILLS_MAX ||
      (c->max_size != 0 && expected_size > 0 &&
       (uint64_t)expected_size >
           c->max_size - (c->fills_announced < c->max_size ? c->fills_announced : c->max_size))) {
    log_fill_refused(c, d, expected_size);
    return NULL;
  }
  f = calloc(1, sizeof *f);
  if (f == NULL)
    goto out;
  f->c = c;
  f->refs = 1;
  f->state = RP_FILL_RUNNING;
  f->fd = -1;
  f->digest = *d;
  f->expected = expected_size >= 0 ? expected_size : -1;
  f->is_manifest = is_manifest;
  snprintf(f->media_type, sizeof f->media_type, "%s", media_type != NULL ? media_type : "");
  f->task.run = on_task;
  f->md = EVP_MD_CTX_new();
  if (f->md == NULL ||
      EVP_DigestInit_ex(f->md, d->algo == 512 ? EVP_sha512() : EVP_sha256(), NULL) != 1)
    goto out;
  if (RAND_bytes(rnd, sizeof rnd) != 1) {
    uint64_t x = uv_hrtime() ^ ((uint64_t)(uintptr_t)f << 16);
    memcpy(rnd, &x, sizeof rnd);
  }
  to_hex(rnd, sizeof rnd, rhex);
  f->final_path = rp__blob_path(c, d);
  if (f->final_path == NULL)
    goto out;
  if (asprintf(&f->tmp_path, "%s/tmp/%s.%s", c->dir, d->hex, rhex) < 0) {
    f->tmp_path = NULL;
    goto out;
  }
  f->opening = true;
  f->open_req.data = f;
  rc = uv_fs_open(c->loop, &f->open_req, f->tmp_path, O_RDWR | O_CREAT | O_EXCL, 0600, on_open);
  if (rc != 0)
    goto out;
  f->refs++; /* the open */
  f->hn.hash = digest_hash(d);
  rp__htab_insert(&c->fills, &f->hn);
  c->fills_running++;
  if (f->expected > 0)
    c->fills_announced += (uint64_t)f->expected;
  c->alive++;
  return f;
out:
  if (f != NULL) {
    EVP_MD_CTX_free(f->md);
    free(f->final_path);
    free(f->tmp_path);
    free(f);
  }
  return NULL;
}

void rp_fill_ref(struct rp_fill *f) {
  if (f != NULL)
    fill_hold(f);
}

void rp_fill_unref(struct rp_fill *f) {
  if (f == NULL || --f->refs > 0)
    return;
  if (f->state == RP_FILL_RUNNING) {
    /* Everyone let go before the end: nothing to publish. */
    f->refs++;
    fail(f, RP_EABORTED, "abandoned");
    if (--f->refs > 0)
      return;
  }
  fill_free(f);
}

static void fill_dealloc(struct rp_fill *f) {
  struct rp_cache *c = f->c;

  while (f->repos != NULL) {
    struct rp__fill_repo *fr = f->repos;
    f->repos = fr->next;
    free(fr->registry);
    free(fr->repository);
    free(fr);
  }
  free(f->tmp_path);
  free(f->final_path);
  free(f);
  c->alive--;
  rp__cache_maybe_finalize(c);
}

static void on_fill_closed(uv_fs_t *req) {
  struct rp_fill *f = req->data;

  uv_fs_req_cleanup(req);
  fill_dealloc(f);
}

static void fill_free(struct rp_fill *f) {
  uv_file fd = f->fd;

  free_chunks(f);
  EVP_MD_CTX_free(f->md);
  f->md = NULL;
  f->fd = -1;
  f->close_req.data = f;
  if (fd >= 0 && uv_fs_close(f->c->loop, &f->close_req, fd, on_fill_closed) == 0)
    return;
  fill_dealloc(f);
}

void rp_fill_set_producer(struct rp_fill *f, rp_fill_cb on_writable, rp_fill_cb on_state,
                          void *data) {
  if (f == NULL)
    return;
  f->on_writable = on_writable;
  f->on_state = on_state;
  f->producer_data = data;
}

void rp_fill_note_repo(struct rp_fill *f, const char *registry, const char *repository) {
  struct rp__fill_repo *fr;

  if (f == NULL || registry == NULL || repository == NULL || f->nrepos >= RP_FILL_REPOS_MAX)
    return;
  if (f->state == RP_FILL_PUBLISHED) {
    rp_cache_note_repo(f->c, &f->digest, registry, repository);
    return;
  }
  if (f->state != RP_FILL_RUNNING)
    return;
  for (fr = f->repos; fr != NULL; fr = fr->next)
    if (strcmp(fr->registry, registry) == 0 && strcmp(fr->repository, repository) == 0)
      return;
  fr = calloc(1, sizeof *fr);
  if (fr == NULL || (fr->registry = strdup(registry)) == NULL ||
      (fr->repository = strdup(repository)) == NULL) {
    if (fr != NULL)
      free(fr->registry);
    free(fr);
    return;
  }
  fr->next = f->repos;
  f->repos = fr;
  f->nrepos++;
}

void rp_fill_on_settled(struct rp_fill *f, rp_fill_cb cb, void *data) {
  if (f == NULL)
    return;
  f->on_settled = cb;
  f->settled_data = data;
  if (cb == NULL)
    f->notify_settled = false;
}

void rp_fill_on_published(struct rp_fill *f, rp_fill_cb cb, void *data) {
  if (f == NULL)
    return;
  f->on_published = cb;
  f->published_data = data;
  if (cb == NULL)
    f->notify_published = false;
}

int rp_fill_write(struct rp_fill *f, const char *p, size_t n) {
  uint64_t have;
  int rc;

  if (f == NULL)
    return RP_EINVAL;
  if (f->state != RP_FILL_RUNNING) /* a uv error may equal RP_FILL_AGAIN (UV_ENOENT) */
    return f->error != 0 && f->error != RP_FILL_AGAIN ? f->error : RP_EABORTED;
  if (f->finishing)
    return RP_EINVAL;
  if (n == 0)
    return 0;
  if (f->expected >= 0 && f->accepted + n > (uint64_t)f->expected) {
    f->accepted += n; /* for the log line */
    mismatch(f, "size", NULL);
    return RP_EDIGEST;
  }
  have = buffered(f);
  if (have > 0 && have + n > buffer_max(f)) {
    f->want_writable = true;
    return RP_FILL_AGAIN;
  }
  rc = append(f, p, n);
  if (rc == 0 && EVP_DigestUpdate(f->md, p, n) != 1)
    rc = RP_ENOMEM;
  if (rc != 0) {
    fail(f, rc, "out of memory");
    return rc;
  }
  f->accepted += n;
  if (f->nreaders == 0 && f->had_reader && f->expected < 0 && f->accepted > f->c->orphan_fill_max) {
    fail(f, RP_EABORTED, "no reader left");
    return RP_EABORTED;
  }
  if (f->disk_failed)
    wake_readers(f);
  else
    kick_write(f);
  return 0;
}

void rp_fill_finish(struct rp_fill *f) {
  if (f == NULL || f->state != RP_FILL_RUNNING || f->finishing)
    return;
  f->finishing = true;
  f->on_writable = f->on_state = NULL;
  f->want_writable = f->notify_writable = f->notify_state = false;
  if (f->disk_failed)
    verify(f);
  else
    kick_write(f);
}

void rp_fill_abort(struct rp_fill *f, const char *reason) {
  if (f == NULL || f->state != RP_FILL_RUNNING || f->finishing)
    return;
  f->on_writable = f->on_state = NULL;
  f->want_writable = f->notify_writable = f->notify_state = false;
  fail(f, RP_EUPSTREAM, reason != NULL ? reason : "aborted");
}

uint64_t rp_fill_received(const struct rp_fill *f) {
  return f != NULL ? f->accepted : 0;
}

uint64_t rp_fill_committed(const struct rp_fill *f) {
  return f != NULL ? f->committed : 0;
}

enum rp_fill_state rp_fill_state(const struct rp_fill *f) {
  return f != NULL ? f->state : RP_FILL_FAILED;
}

unsigned rp_fill_readers(const struct rp_fill *f) {
  return f != NULL ? f->nreaders : 0;
}

bool rp_fill_disk_failed(const struct rp_fill *f) {
  return f != NULL && f->disk_failed;
}

/* ---- for readers and the store ---- */

void rp__fill_attach(struct rp_fill *f, struct rp_reader *r) {
  r->fprev = NULL;
  r->fnext = f->readers;
  if (f->readers != NULL)
    f->readers->fprev = r;
  f->readers = r;
  r->attached = true;
  f->nreaders++;
  f->had_reader = true;
}

static bool orphan_too_big(const struct rp_fill *f) {
  uint64_t size = f->expected >= 0 ? (uint64_t)f->expected : f->accepted;
  return size > f->c->orphan_fill_max;
}

void rp__fill_detach(struct rp_fill *f, struct rp_reader *r) {
  if (!r->attached)
    return;
  if (r->fprev != NULL)
    r->fprev->fnext = r->fnext;
  else
    f->readers = r->fnext;
  if (r->fnext != NULL)
    r->fnext->fprev = r->fprev;
  r->fprev = r->fnext = NULL;
  r->attached = false;
  f->nreaders--;
  if (f->state != RP_FILL_RUNNING)
    return;
  if (f->disk_failed) {
    if (f->nreaders == 0) {
      fail(f, f->disk_err, "disk error, no reader left");
      notify_state(f);
    } else {
      post(f); /* the window may shrink */
    }
    return;
  }
  if (f->nreaders == 0 && !f->finishing && orphan_too_big(f)) {
    fail(f, RP_EABORTED, "no reader left");
    notify_state(f);
  }
}

ssize_t rp__fill_copy(struct rp_fill *f, uint64_t pos, char *buf, size_t n) {
  size_t copied = 0;

  if (pos < f->win_start || f->head == NULL)
    return f->disk_err != 0 ? f->disk_err : UV_EIO;
  for (struct rp__fchunk *ch = f->head; ch != NULL && copied < n; ch = ch->next) {
    size_t k;
    if (pos >= ch->off + ch->len)
      continue;
    if (pos < ch->off)
      break;
    k = (size_t)(ch->off + ch->len - pos);
    if (k > n - copied)
      k = n - copied;
    memcpy(buf + copied, ch->buf + (pos - ch->off), k);
    copied += k;
    pos += k;
  }
  return (ssize_t)copied;
}

void rp__fill_reader_moved(struct rp_fill *f) {
  if (f->disk_failed && f->state == RP_FILL_RUNNING)
    post(f);
}

void rp__fills_close(struct rp_cache *c) {
  for (size_t i = 0; i < c->fills.nb; i++) {
    struct rp__hnode *n = c->fills.b[i], *next;
    for (; n != NULL; n = next) {
      struct rp_fill *f = (struct rp_fill *)n;
      next = n->next;
      if (f->publishing)
        continue; /* verified: let it land */
      fail(f, RP_EABORTED, "cache closing");
      notify_state(f);
    }
  }
}
