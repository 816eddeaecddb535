#ifndef RP_CACHE_H
#define RP_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* The content-addressed store (contract §3): blobs and manifests by digest under
 * the cache directory, a metadata index, single-flight fills that hash while
 * they stream and publish only verified bytes, readers that serve a
 * published file or a growing fill with the same code, and LRU eviction.
 * The cache never sees HTTP: the registry layer feeds fills and points
 * readers at client streams. All disk work runs on libuv's thread pool. */

struct rp_cache;
struct rp_fill;
struct rp_reader;

/* A digest "sha256:<64 hex>" or "sha512:<128 hex>", validated. */
struct rp_digest {
  int algo; /* 256 or 512 */
  char hex[129];
};

/** Parse and validate a digest string (lower-case hex only). 0 or RP_EPARSE. */
int rp_digest_parse(const char *s, size_t n, struct rp_digest *out);
/** "sha256:…" into buf (at least 136 bytes). */
void rp_digest_format(const struct rp_digest *d, char *buf, size_t bufsz);

struct rp_cache_opts {
  const char *dir;          /* cache root; created 0700 if missing */
  uint64_t max_size;        /* eviction bound in bytes (0: none) */
  uint64_t orphan_fill_max; /* a fill with no reader left completes only up to this size */
  /* Check the files against the index (rows without their file, files
   * without a row) on the thread pool after the open returns, instead of
   * before: a server is ready sooner (issue 14); `regproxy cache` keeps the
   * synchronous check, as its listing must be exact. */
  bool defer_file_check;
};

/** Open (lock, create layout, remove leftover temp files, open the index).
 * RP_ECONFIG with *err when the directory is locked by another process (the
 * message names the holder's PID) or unusable. Synchronous: call at start-up
 * (with defer_file_check, the files are checked while the loop runs). */
int rp_cache_open(uv_loop_t *loop, const struct rp_cache_opts *opts, struct rp_cache **out,
                  char **err);
/** Release; fills still running are abandoned (nothing partial is published;
 * their readers fail). Readers must have finished or been cancelled. Queued
 * index writes still run: keep running the loop until it is empty, the memory
 * and the directory lock are released there. NULL is a no-op. */
void rp_cache_close(struct rp_cache *c);

/* ---- objects and metadata ---- */

struct rp_object_info {
  struct rp_digest digest;
  uint64_t size;
  char media_type[128]; /* the Content-Type the registry gave (manifests need theirs) */
  int64_t last_access;  /* unix seconds */
  bool is_manifest;
};

/** Is the object published? Fills info when out is not NULL. (Index lookup,
 * in memory: no disk I/O on the loop.) */
bool rp_cache_has(struct rp_cache *c, const struct rp_digest *d, struct rp_object_info *out);
/** Remember that the published object digest belongs to (registry,
 * repository) (contract §3 "Who may receive what"). Membership lives and dies
 * with its object: a digest that is not published is not recorded (a fill
 * records it on publication, rp_fill_note_repo), an evicted object takes its
 * memberships (and the tags naming it) along, and one object belongs to at
 * most RP_CACHE_REPOS_PER_OBJECT repositories. */
#define RP_CACHE_REPOS_PER_OBJECT 256
void rp_cache_note_repo(struct rp_cache *c, const struct rp_digest *d, const char *registry,
                        const char *repository);
bool rp_cache_in_repo(struct rp_cache *c, const struct rp_digest *d, const char *registry,
                      const char *repository);
/** Has anything been remembered for this registry (an object, a tag)? */
bool rp_cache_knows_registry(struct rp_cache *c, const char *registry);

/* Tag memory: (registry, repository, tag, accept key) -> digest, media type, size. */
struct rp_tag_entry {
  struct rp_digest digest;
  char media_type[128];
  uint64_t size;
  int64_t checked; /* unix seconds of the last upstream confirmation */
};
void rp_cache_tag_put(struct rp_cache *c, const char *registry, const char *repository,
                      const char *tag, const char *accept_key, const struct rp_tag_entry *e);
bool rp_cache_tag_get(struct rp_cache *c, const char *registry, const char *repository,
                      const char *tag, const char *accept_key, struct rp_tag_entry *out);
/* Tag memory is bounded: past RP_CACHE_TAGS_MAX entries the one confirmed
 * longest ago goes; a manifest evicted takes the tags naming it along. */
#define RP_CACHE_TAGS_MAX 16384

/* Public repositories (contract §3): what regproxy learnt when it read a manifest
 * of (registry, repository) without a client's credential, and when. Kept
 * in the index across restarts; bounded like tag memory. */
#define RP_CACHE_PUBLIC_MAX 16384
void rp_cache_public_put(struct rp_cache *c, const char *registry, const char *repository,
                         bool is_public, int64_t checked);
bool rp_cache_public_get(struct rp_cache *c, const char *registry, const char *repository,
                         bool *is_public, int64_t *checked);

/* ---- fills ---- */

enum rp_fill_state { RP_FILL_RUNNING, RP_FILL_PUBLISHED, RP_FILL_FAILED, RP_FILL_STATE_LAST };

/** The running fill for d, with a new reference, or NULL (single-flight:
 * callers that get NULL may start one with rp_fill_start). A reader started
 * on it takes its own reference. */
struct rp_fill *rp_fill_find(struct rp_cache *c, const struct rp_digest *d);
/** Start a fill for d (expected_size -1 when unknown); the caller holds one
 * reference. Returns NULL when one is already running (use rp_fill_find), or
 * when the cache will not take it: larger than the eviction bound, more than
 * RP_CACHE_FILLS_MAX fills running, or the running fills' announced sizes
 * would together pass the eviction bound (a hostile upstream cannot fill the
 * disk). The caller then relays the body without caching it. */
#define RP_CACHE_FILLS_MAX 256
struct rp_fill *rp_fill_start(struct rp_cache *c, const struct rp_digest *d, int64_t expected_size,
                              bool is_manifest, const char *media_type);
void rp_fill_ref(struct rp_fill *f);
void rp_fill_unref(struct rp_fill *f);

/* rp_fill_write's "not now" (same value as RP_FETCH_PAUSE). */
#define RP_FILL_AGAIN (-2)

/** Append body bytes (copied, hashed at once). Returns 0; RP_FILL_AGAIN when
 * the fill's buffer is full (nothing taken: offer the same bytes again after
 * on_writable); or an error when the fill is no longer running (failed,
 * finished, or bytes beyond the expected size: RP_EDIGEST, which fails it). */
int rp_fill_write(struct rp_fill *f, const char *p, size_t n);
typedef void (*rp_fill_cb)(struct rp_fill *f, void *data);
/** The producer's callbacks, both run from the loop, never inside an rp_
 * call. on_writable: the buffer has room again after RP_FILL_AGAIN. on_state:
 * the cache gave the fill up while it was being produced (no reader left past
 * orphan_fill_max, disk error with no reader left, cache closing): stop the
 * upstream transfer. Both are dropped at rp_fill_finish / rp_fill_abort. */
void rp_fill_set_producer(struct rp_fill *f, rp_fill_cb on_writable, rp_fill_cb on_state,
                          void *data);
/** On publication, remember (registry, repository) for the object (as
 * rp_cache_note_repo); nothing is recorded if the fill fails. */
void rp_fill_note_repo(struct rp_fill *f, const char *registry, const char *repository);
/** Call cb once, from the loop, after the fill published its verified object
 * (never when it fails). NULL clears it: a watcher that goes away first must. */
void rp_fill_on_published(struct rp_fill *f, rp_fill_cb cb, void *data);
/** Call cb once, from the loop, when the fill is over either way: published
 * (verified) or failed (rp_fill_state tells). NULL clears it. */
void rp_fill_on_settled(struct rp_fill *f, rp_fill_cb cb, void *data);
/** The upstream body ended: verify size and digest, fsync, rename, fsync
 * the directory, publish. A mismatch fails the fill (`digest_mismatch`). */
void rp_fill_finish(struct rp_fill *f);
/** The upstream failed for good: unlink, fail, abort readers. No-op once
 * finished or failed. */
void rp_fill_abort(struct rp_fill *f, const char *reason);
/** Bytes hashed so far: they are in the temp file or on their way there.
 * The offset to resume the upstream at (`Range: bytes=N-`). */
uint64_t rp_fill_received(const struct rp_fill *f);
/** Bytes written to the temp file so far (what readers may tail). */
uint64_t rp_fill_committed(const struct rp_fill *f);
enum rp_fill_state rp_fill_state(const struct rp_fill *f);
/** Number of readers attached (a fill whose last reader left stops when it is
 * larger than orphan_fill_max). */
unsigned rp_fill_readers(const struct rp_fill *f);
/** The fill had a disk error: it keeps hashing for attached readers but will
 * not publish (contract §3 ENOSPC/EIO → pass-through). */
bool rp_fill_disk_failed(const struct rp_fill *f);

/* ---- readers ---- */

/* Where a reader writes: the body of an answer, whatever carries it (a
 * client's TCP or TLS stream, chunked or not). write takes the buffers in
 * order and calls cb once it is done with them (the reader's backpressure:
 * it keeps at most two chunks in flight). */
typedef void (*rp_sink_cb)(void *arg, int status);
struct rp_sink {
  int (*write)(struct rp_sink *s, const uv_buf_t *bufs, unsigned n, rp_sink_cb cb, void *arg);
};

/** done: status 0 when [offset, offset+length) was written to the sink,
 * or an error (digest mismatch, fill failed, sink error). The reader is
 * freed after done returns. */
typedef void (*rp_reader_done_cb)(struct rp_reader *r, void *data, int status);

/** Serve bytes [offset, offset+length) (length -1: to the end) of the
 * published object d, or of the running fill f (pass exactly one of d/f) to
 * the sink s, in chunks of at least 256 KiB, waiting on the sink's writes and
 * on the fill's growth. The last byte of a fill is only written after the
 * fill verified. The caller has already started the answer. NULL when the
 * object is not published, the fill failed, or the range lies outside a
 * known size; otherwise done runs exactly once, later, unless cancelled.
 * The reader pins the object (no eviction) while it runs. */
struct rp_reader *rp_reader_start(struct rp_cache *c, const struct rp_digest *d, struct rp_fill *f,
                                  uint64_t offset, int64_t length, struct rp_sink *s,
                                  rp_reader_done_cb done, void *data);
/** Stop (client gone): done does not run afterwards. Safe at any time before
 * done ran; NULL is a no-op. The sink must stay valid until the writes the
 * reader queued on it completed (a front closing its stream completes them). */
void rp_reader_cancel(struct rp_reader *r);

/* ---- maintenance ---- */

/* The cache's own numbers, kept in struct rp_cache; the counters start at 0
 * when the cache is opened. /metrics and /status.json read them from here. */
struct rp_cache_stats {
  uint64_t size_bytes;
  uint64_t max_size; /* the eviction bound (0: none) */
  uint64_t objects;
  uint64_t evictions;
  uint64_t digest_mismatches; /* fills and verifications that failed their digest */
  uint64_t fills_in_flight;
};
/** Copy c's numbers into out (all zero when c is NULL). */
void rp_cache_stats(const struct rp_cache *c, struct rp_cache_stats *out);

/* ---- direct maintenance (`regproxy cache …` on an unlocked directory) ---- */

/** Call cb for every published object, most recently used first; stop early
 * when cb returns false. Do not change the cache from cb. */
typedef bool (*rp_cache_foreach_cb)(const struct rp_object_info *info, void *data);
void rp_cache_foreach(struct rp_cache *c, rp_cache_foreach_cb cb, void *data);
/** Forget d and remove its file and index row (the removal is queued: run the
 * loop until rp_cache_close finished). 0; RP_EINVAL when unknown; RP_EDENIED
 * while a reader uses it; RP_ENOMEM. */
int rp_cache_remove(struct rp_cache *c, const struct rp_digest *d);
/** Re-hash d's file synchronously (blocking I/O: for the command line, not the
 * proxy's loop). 0 when size and digest match; RP_EDIGEST when they do not;
 * RP_EINVAL when d is unknown; a negative errno when the file cannot be read. */
int rp_cache_verify_one(struct rp_cache *c, const struct rp_digest *d);
/** Evict least-recently-used objects until the cache holds at most max_size
 * bytes (0: no bound) and make it the bound from now on. Returns the number
 * of objects evicted; *freed (may be NULL) gets their bytes. */
uint64_t rp_cache_trim(struct rp_cache *c, uint64_t max_size, uint64_t *freed);

/* ---- maintenance while serving (the admin endpoints of `regproxy run`) ---- */

/** Evict least-recently-used objects not being served or filled until the
 * cache holds at most size bytes (0: evict nothing), once: the bound stays
 * as it is. Returns the number evicted; *freed (may be NULL) gets their bytes.
 * The files go in the background (rp_cache_flush waits for them). */
uint64_t rp_cache_evict_to(struct rp_cache *c, uint64_t size, uint64_t *freed);
/** rp_cache_evict_to, calling each (may be NULL; its return value is
 * ignored) with every object just evicted, in eviction order. */
uint64_t rp_cache_evict_each(struct rp_cache *c, uint64_t size, uint64_t *freed,
                             rp_cache_foreach_cb each, void *data);

/** Result of rp_cache_verify_start, on the loop: status as for
 * rp_cache_verify_one, or UV_ECANCELED when the cache was closed first (no
 * verdict). The object is no longer pinned when it runs. */
typedef void (*rp_cache_verify_cb)(struct rp_cache *c, const struct rp_digest *d, int status,
                                   void *data);
/** Re-hash d's file on libuv's thread pool; the object is pinned (neither
 * evicted nor removed) meanwhile. 0: done runs exactly once, later, even when
 * the cache is closed in between (the cache stays allocated until it ran).
 * RP_EINVAL when d is unknown or the cache is closing; RP_ENOMEM. */
int rp_cache_verify_start(struct rp_cache *c, const struct rp_digest *d, rp_cache_verify_cb done,
                          void *data);

typedef void (*rp_cache_flush_cb)(struct rp_cache *c, int status, void *data);
/** done runs on the loop once every index change and file removal queued
 * before this call is on disk (status 0, or the worker's error). 0: done runs
 * exactly once, later; RP_EINVAL when the cache is closing; RP_ENOMEM. */
int rp_cache_flush(struct rp_cache *c, rp_cache_flush_cb done, void *data);

/* ---- the owner of a cache directory (contract §3 "One owner per cache
 * directory"): `<dir>/lock` holds the PID of `regproxy run` on its first
 * line and, once its listeners are bound, "admin=<URL>" on the second. ---- */

/** Record in the lock file the URL at which this process answers admin
 * requests ("http://127.0.0.1:2080"): one line, printable, no spaces. 0;
 * RP_EINVAL; a negative errno when the file cannot be written. */
int rp_cache_set_owner(struct rp_cache *c, const char *admin_url);

struct rp_cache_owner {
  long pid;        /* 0 when the lock file names none */
  char admin[256]; /* "" when it records no admin URL (or an unusable one) */
};
/** Read what the holder of dir's lock recorded (whether the lock is held is
 * not checked: rp_cache_open tells). 0, or a negative errno. */
int rp_cache_owner_read(const char *dir, struct rp_cache_owner *out);

#endif
