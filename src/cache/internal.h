#ifndef RP_CACHE_INTERNAL_H
#define RP_CACHE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <uv.h>

#include "regproxy/cache.h"

/* Reader chunks and fill buffer blocks: one size, one pool. */
#define RP_CACHE_CHUNK ((size_t)256 * 1024)
/* Bytes a fill accepts ahead of its temp file before the producer waits. */
#define RP_FILL_PENDING_MAX ((uint64_t)4 * 1024 * 1024)
/* After a disk error: bytes kept in memory for readers before the producer
 * waits for the slowest of them. */
#define RP_FILL_WINDOW_MAX ((uint64_t)16 * 1024 * 1024)
/* At most this many bytes per temp-file write: small enough that the
 * producer refills the buffer while the previous write runs. */
#define RP_FILL_WRITE_MAX ((size_t)1024 * 1024)
#define RP_FILL_IOV_MAX   (RP_FILL_WRITE_MAX / RP_CACHE_CHUNK + 2)
/* Start writeback of the temp file every this many bytes, so the final
 * fsync has little left to wait for. */
#define RP_FILL_WRITEBACK_STEP ((uint64_t)16 * 1024 * 1024)
/* Index changes written per SQLite transaction. */
#define RP_INDEX_BATCH_MAX 1024

#define RP_MEDIA_TYPE_MAX 128

#define rp__container_of(p, type, member) ((type *)(void *)((char *)(p)-offsetof(type, member)))

/* ---- intrusive chained hash table (power-of-two buckets, grows) ---- */

struct rp__hnode {
  struct rp__hnode *next;
  uint64_t hash;
};

struct rp__htab {
  struct rp__hnode **b;
  size_t nb; /* power of two */
  size_t n;
};

uint64_t rp__hash(const void *p, size_t n);
int rp__htab_init(struct rp__htab *t, size_t nb);
void rp__htab_free(struct rp__htab *t);
/** Insert (never fails: a table that cannot grow gets longer chains). */
void rp__htab_insert(struct rp__htab *t, struct rp__hnode *n);
void rp__htab_remove(struct rp__htab *t, struct rp__hnode *n);
static inline struct rp__hnode *rp__htab_first(const struct rp__htab *t, uint64_t hash) {
  return t->b[hash & (t->nb - 1)];
}

/* ---- deferred work: callbacks into other modules never run inside an rp_
 * call; they are queued here and run from an idle handle on the next turn. */

struct rp__task {
  struct rp__task *next;
  void (*run)(struct rp__task *t);
  bool queued;
};

/** Queue t unless it is queued already (the owner keeps itself alive until
 * run is called). */
void rp__task_post(struct rp_cache *c, struct rp__task *t);

/* ---- objects ---- */

struct repo_node;

struct rp__obj {
  struct rp__hnode hn;
  struct rp__obj *prev, *next; /* LRU list, most recently used first */
  struct rp_digest digest;
  uint64_t size;
  int64_t last_access;
  char *media_type; /* NULL for blobs */
  unsigned pins;    /* readers using the file: not evictable while > 0 */
  bool is_manifest;
  bool unchecked;            /* loaded from the index, its file not yet seen (deferred check) */
  struct repo_node *members; /* the repositories it belongs to (index.c) */
  unsigned nmembers;
};

/* Keyed entries with a recency order and a bound (tag memory, public
 * repositories): the least recently set goes first. */
struct rp__lru_node {
  struct rp__hnode hn;
  struct rp__lru_node *prev, *next; /* most recently set first */
  const char *key;                  /* the owner's key bytes */
  size_t klen;
};

struct rp__lru {
  struct rp__htab t;
  struct rp__lru_node *head, *tail;
  size_t max;
};

struct rp__index;
struct rp__idx_op;
struct rp__verify;

struct rp_cache {
  uv_loop_t *loop;
  char *dir;
  int lock_fd;
  uint64_t max_size;
  uint64_t orphan_fill_max;

  struct rp__htab objs;
  struct rp__obj *lru_head, *lru_tail;
  uint64_t size_bytes;
  uint64_t nobjects;
  struct rp__htab repos; /* memberships, and "registry known" markers */
  unsigned nregistries;  /* markers */
  struct rp__lru tags;
  struct rp__lru pubs;
  struct rp__htab fills; /* running fills by digest */
  uint64_t fills_running;
  uint64_t fills_announced; /* expected sizes of the running fills, added up */

  struct rp__index *idx;

  char *chunk_pool; /* free RP_CACHE_CHUNK blocks, linked through their first bytes */
  bool no_nowait;   /* preadv2(RWF_NOWAIT) is not supported here: every read goes to the pool */
  unsigned chunk_pool_n;

  uv_idle_t idle;
  struct rp__task *tasks_head, *tasks_tail;

  struct rp__verify *verifies; /* running rp_cache_verify_start jobs */

  int64_t opened_at;          /* files newer than this were written by this run */
  bool defer_file_check;      /* rp_cache_opts */
  bool scanning;              /* the deferred file check is queued or running */
  struct rp__task after_open; /* starts the check op and the deferred file check */

  uint64_t evictions;
  uint64_t mismatches;
  bool disk_failing; /* a disk error was logged, and no fill stored since */
  unsigned alive;    /* fills, readers and verifications not yet freed */
  bool closing;
  bool finalizing;
};

/* store.c */
char *rp__chunk_alloc(struct rp_cache *c);
void rp__chunk_free(struct rp_cache *c, char *p);
/** "<dir>/blobs/<algo>/<2 hex>/<hex>" (malloc'd), or NULL. */
char *rp__blob_path(const struct rp_cache *c, const struct rp_digest *d);
/** Evict least-recently-used unpinned objects until under max_size. */
void rp__cache_evict(struct rp_cache *c);
/** A fill or reader was freed, or the index went idle: free the cache when
 * it is closing and nothing is left. */
void rp__cache_maybe_finalize(struct rp_cache *c);
int64_t rp__now(void);
void rp__digest_key(const struct rp_digest *d, char *buf, size_t bufsz);

/* index.c: SQLite, written by one worker at a time from the thread pool. */
enum rp__idx_kind {
  RP_IDX_PUBLISH, /* rename from -> to, fsync the directory, insert the row */
  RP_IDX_TOUCH,
  RP_IDX_EVICT, /* delete the row, unlink to */
  RP_IDX_REPO,
  RP_IDX_TAG,
  RP_IDX_TAG_DEL,
  RP_IDX_PUBLIC, /* is_manifest carries "public" */
  RP_IDX_PUBLIC_DEL,
  RP_IDX_BARRIER, /* nothing: its done runs once everything before it is written */
  RP_IDX_CHECK,   /* after open: prune rows that refer to nothing, PRAGMA quick_check */
  RP_IDX_KIND_LAST
};

struct rp__idx_op {
  struct rp__idx_op *next;
  enum rp__idx_kind kind;
  int result;                          /* file action's result (PUBLISH, EVICT) */
  void (*done)(struct rp__idx_op *op); /* on the loop, after the commit */
  void *arg;
  struct rp_digest digest;
  uint64_t size;
  int64_t time; /* last_access, tag checked */
  bool is_manifest;
  char media_type[RP_MEDIA_TYPE_MAX];
  const char *from, *to; /* paths, inside the op's allocation */
  const char *registry, *repository, *tag, *accept_key;
};

int rp__index_open(struct rp_cache *c, char **err);
/** After open, with defer_file_check: check the files against the loaded
 * index on the thread pool (c->scanning until its result is applied). */
void rp__index_scan_start(struct rp_cache *c);
/** Queue a copy-free op (allocated with rp__idx_op_new). */
void rp__index_submit(struct rp_cache *c, struct rp__idx_op *op);
/** An op with room for the given strings (NULL ones are skipped). */
struct rp__idx_op *rp__idx_op_new(enum rp__idx_kind kind, const char *from, const char *to,
                                  const char *registry, const char *repository, const char *tag,
                                  const char *accept_key);
/** Write what is queued, close the database, then call done(c). */
void rp__index_shutdown(struct rp_cache *c, void (*done)(struct rp_cache *c));
void rp__index_free(struct rp_cache *c);

/* meta.c: memberships, tag memory, public answers (in memory; rows are
 * queued to the index writer). The _load ones fill the tables at open. */
const char *rp__nz(const char *s);
bool rp__repo_add(struct rp_cache *c, struct rp__obj *o, const char *registry,
                  const char *repository);
bool rp__tag_load(struct rp_cache *c, const char *const parts[4], const struct rp_tag_entry *e);
bool rp__pub_load(struct rp_cache *c, const char *const parts[2], bool is_public, int64_t checked);
/** Bring tag memory and public answers within their bounds (after loading). */
void rp__meta_trim(struct rp_cache *c);
/** An object leaves: its memberships go (and, for a manifest, the tags naming it). */
void rp__members_drop(struct rp_cache *c, struct rp__obj *o);
void rp__tags_drop_digest(struct rp_cache *c, const struct rp_digest *d);
void rp__meta_free(struct rp_cache *c);

struct rp__obj *rp__obj_find(const struct rp_cache *c, const struct rp_digest *d);
/** Add or update a published object (in memory only). NULL when out of memory. */
struct rp__obj *rp__obj_put(struct rp_cache *c, const struct rp_digest *d, uint64_t size,
                            bool is_manifest, const char *media_type, int64_t last_access);
/** Drop from memory (the caller queues the file and row removal). */
void rp__obj_remove(struct rp_cache *c, struct rp__obj *o);
/** Mark used now: LRU front, last_access written later. */
void rp__obj_touch(struct rp_cache *c, struct rp__obj *o);
void rp__obj_unpin(struct rp_cache *c, struct rp__obj *o);
void rp__objs_free(struct rp_cache *c);

/* ---- fills ---- */

struct rp__fchunk {
  struct rp__fchunk *next;
  uint64_t off; /* blob offset of buf[0] */
  size_t len;
  char *buf; /* RP_CACHE_CHUNK bytes from the pool */
};

/* A membership a fill records once it publishes (rp_fill_note_repo). */
struct rp__fill_repo {
  struct rp__fill_repo *next;
  char *registry, *repository;
};
#define RP_FILL_REPOS_MAX 16

struct rp_fill {
  struct rp__hnode hn;
  struct rp__task task;
  struct rp_cache *c;
  unsigned refs;
  enum rp_fill_state state;
  int error; /* why it failed: RP_EDIGEST, RP_EUPSTREAM, a uv error, ... */
  struct rp_digest digest;
  int64_t expected;
  bool is_manifest;
  char media_type[RP_MEDIA_TYPE_MAX];
  EVP_MD_CTX *md;

  char *tmp_path;
  char *final_path;
  uv_file fd; /* the temp file (readers of the fill pread it); -1 while opening */
  uv_fs_t open_req, write_req, sync_req, unlink_req, close_req;
  uv_work_t wb_work;
  uint64_t wb_from, wb_to; /* writeback started up to wb_from; the running one ends at wb_to */
  bool wb_busy;

  uint64_t accepted;              /* hashed */
  uint64_t committed;             /* written to the temp file */
  struct rp__fchunk *head, *tail; /* bytes not yet written, or the window */

  /* After a disk error: [0, disk_committed) is in the (unlinked) temp file,
   * [win_start, accepted) in the chunks. */
  int disk_err;
  uint64_t disk_committed;
  uint64_t win_start;

  uint64_t final_size;       /* valid when verified */
  struct rp_reader *readers; /* attached readers */
  unsigned nreaders;

  rp_fill_cb on_writable, on_state;
  void *producer_data;
  rp_fill_cb on_published;
  void *published_data;
  rp_fill_cb on_settled;
  void *settled_data;
  struct rp__fill_repo *repos; /* memberships recorded on publication */
  unsigned nrepos;

  bool opening;
  bool write_busy;
  bool finishing;  /* rp_fill_finish called */
  bool publishing; /* verified, fsync/rename in flight */
  bool verified;   /* readers may deliver the final bytes */
  bool disk_failed;
  bool had_reader;
  bool want_writable;
  bool notify_writable;
  bool notify_state;
  bool notify_published;
  bool notify_settled;
  bool unlink_wanted; /* unlink once the open finished */
  bool tmp_gone;
};

void rp__fill_attach(struct rp_fill *f, struct rp_reader *r);
void rp__fill_detach(struct rp_fill *f, struct rp_reader *r);
/** Copy window bytes at pos (disk-failed fills). Bytes copied, or a negative
 * error when pos has left the window. */
ssize_t rp__fill_copy(struct rp_fill *f, uint64_t pos, char *buf, size_t n);
/** A reader consumed window bytes: the window may shrink. */
void rp__fill_reader_moved(struct rp_fill *f);
/** Fail every running fill (cache closing). */
void rp__fills_close(struct rp_cache *c);

/* ---- readers ---- */

struct rp__rchunk {
  struct rp_reader *r;
  uv_fs_t req;
  uv_buf_t ub;
  char *buf;
  size_t want;
  bool busy;
};

struct rp_reader {
  struct rp__task task;
  struct rp_cache *c;
  struct rp_fill *f;               /* tailing a fill: holds a reference until freed */
  struct rp__obj *obj;             /* pinned published object, or NULL */
  struct rp_reader *fprev, *fnext; /* on f->readers while attached */
  bool attached;
  struct rp_sink *s;
  rp_reader_done_cb done;
  void *data;
  uv_fs_t open_req, close_req;
  uv_file fd;    /* own descriptor (published object) or -1 */
  uint64_t rpos; /* next byte to read */
  uint64_t end;  /* valid when end_known */
  bool end_known;
  struct rp__rchunk ch[2];
  unsigned nreads, nwrites;
  unsigned refs;   /* reads, writes, the open and a queued task in flight */
  bool read_ahead; /* the last chunk came from the pool: keep the next read in flight */
  int status;
  bool opening;
  bool cancelled;
  bool finished;
};

/** The fill grew, verified or failed: run r soon. */
void rp__reader_wake(struct rp_reader *r);

/* Unit-test hook: when write_err is set, a temp-file write that would take a
 * fill past write_err_at bytes fails with it (ENOSPC/EIO without a full disk). */
struct rp__cache_faults {
  int write_err;
  uint64_t write_err_at;
};
extern struct rp__cache_faults rp__cache_faults;

#endif
