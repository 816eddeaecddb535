/* The index's hot data in memory: repository memberships (each hangs off
 * its object and goes with it), tag memory and public-repository answers
 * (bounded LRU tables). Changes are queued to the SQLite writer in index.c
 * (rp__index_submit); index.c loads these tables at open. */

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/internal.h"

/* Repository membership: key "sha256:<hex>\0registry\0repository", or
 * "\0registry\0" for the marker that the registry is known. A membership
 * hangs off its object (o->members) and is freed with it. */
struct repo_node {
  struct rp__hnode hn;
  struct repo_node *onext; /* the object's next membership */
  size_t klen;
  char key[];
};

/* Tag memory: key "registry\0repository\0tag\0accept_key". */
struct tag_node {
  struct rp__lru_node ln;
  struct rp_tag_entry e;
  char key[];
};

/* Public repositories: key "registry\0repository". */
struct pub_node {
  struct rp__lru_node ln;
  bool is_public;
  int64_t checked;
  char key[];
};

/* At most this many registries are remembered as known (for /v2/ answers). */
#define REGISTRIES_MAX 1024

/* Join parts with NUL separators into buf (NULL: size only). */
static size_t join_key(char *buf, const char *const *parts, size_t n) {
  size_t len = 0;

  for (size_t i = 0; i < n; i++) {
    size_t l = strlen(parts[i]) + 1;
    if (buf != NULL)
      memcpy(buf + len, parts[i], l);
    len += l;
  }
  return len;
}

const char *rp__nz(const char *s) {
  return s != NULL ? s : "";
}

static struct repo_node *repo_find(const struct rp_cache *c, const char *key, size_t klen,
                                   uint64_t h) {
  for (struct rp__hnode *n = rp__htab_first(&c->repos, h); n != NULL; n = n->next) {
    struct repo_node *r = (struct repo_node *)n;
    if (n->hash == h && r->klen == klen && memcmp(r->key, key, klen) == 0)
      return r;
  }
  return NULL;
}

/* A node keyed by parts, for a table; NULL when out of memory. */
static struct repo_node *repo_node_new(const char *const parts[3], uint64_t *h) {
  size_t klen = join_key(NULL, parts, 3);
  struct repo_node *r = malloc(sizeof *r + klen);

  if (r == NULL)
    return NULL;
  join_key(r->key, parts, 3);
  r->klen = klen;
  r->onext = NULL;
  *h = rp__hash(r->key, klen);
  return r;
}

/* The marker that anything was remembered for this registry. */
static void registry_mark(struct rp_cache *c, const char *registry) {
  const char *parts[3] = {"", registry, ""};
  struct repo_node *r;
  uint64_t h;

  if (c->nregistries >= REGISTRIES_MAX || (r = repo_node_new(parts, &h)) == NULL)
    return;
  if (repo_find(c, r->key, r->klen, h) != NULL) {
    free(r);
    return;
  }
  r->hn.hash = h;
  rp__htab_insert(&c->repos, &r->hn);
  c->nregistries++;
}

/* Remember in memory that object o belongs to (registry, repository); true
 * when it was not known yet. */
bool rp__repo_add(struct rp_cache *c, struct rp__obj *o, const char *registry,
                  const char *repository) {
  char dkey[160];
  const char *parts[3] = {dkey, registry, repository};
  struct repo_node *r;
  uint64_t h;

  if (o->nmembers >= RP_CACHE_REPOS_PER_OBJECT)
    return false;
  rp__digest_key(&o->digest, dkey, sizeof dkey);
  r = repo_node_new(parts, &h);
  if (r == NULL)
    return false;
  if (repo_find(c, r->key, r->klen, h) != NULL) {
    free(r);
    return false;
  }
  r->hn.hash = h;
  rp__htab_insert(&c->repos, &r->hn);
  r->onext = o->members;
  o->members = r;
  o->nmembers++;
  registry_mark(c, registry);
  return true;
}

/* The object leaves: its memberships go with it. */
void rp__members_drop(struct rp_cache *c, struct rp__obj *o) {
  while (o->members != NULL) {
    struct repo_node *r = o->members;
    o->members = r->onext;
    rp__htab_remove(&c->repos, &r->hn);
    free(r);
  }
  o->nmembers = 0;
}

bool rp_cache_knows_registry(struct rp_cache *c, const char *registry) {
  const char *parts[3] = {"", rp__nz(registry), ""};
  char key[512];
  size_t klen = join_key(NULL, parts, 3);

  if (c == NULL || klen > sizeof key)
    return false;
  join_key(key, parts, 3);
  return repo_find(c, key, klen, rp__hash(key, klen)) != NULL;
}

void rp_cache_note_repo(struct rp_cache *c, const struct rp_digest *d, const char *registry,
                        const char *repository) {
  struct rp__idx_op *op;
  struct rp__obj *o;

  if (c == NULL || d == NULL || (o = rp__obj_find(c, d)) == NULL)
    return; /* not published (yet): rp_fill_note_repo records it then */
  if (!rp__repo_add(c, o, rp__nz(registry), rp__nz(repository)))
    return;
  op = rp__idx_op_new(RP_IDX_REPO, NULL, NULL, rp__nz(registry), rp__nz(repository), NULL, NULL);
  if (op == NULL)
    return;
  op->digest = *d;
  rp__index_submit(c, op);
}

bool rp_cache_in_repo(struct rp_cache *c, const struct rp_digest *d, const char *registry,
                      const char *repository) {
  char dkey[160];
  char *key;
  const char *parts[3];
  size_t klen;
  bool found;

  if (c == NULL || d == NULL)
    return false;
  rp__digest_key(d, dkey, sizeof dkey);
  parts[0] = dkey;
  parts[1] = rp__nz(registry);
  parts[2] = rp__nz(repository);
  klen = join_key(NULL, parts, 3);
  key = malloc(klen);
  if (key == NULL)
    return false;
  join_key(key, parts, 3);
  found = repo_find(c, key, klen, rp__hash(key, klen)) != NULL;
  free(key);
  return found;
}

/* ---- bounded keyed tables (tags, public repositories) ---- */

static struct rp__lru_node *lru_find(const struct rp__lru *l, const char *key, size_t klen,
                                     uint64_t h) {
  for (struct rp__hnode *n = rp__htab_first(&l->t, h); n != NULL; n = n->next) {
    struct rp__lru_node *ln = (struct rp__lru_node *)n;
    if (n->hash == h && ln->klen == klen && memcmp(ln->key, key, klen) == 0)
      return ln;
  }
  return NULL;
}

static void lru_node_unlink(struct rp__lru *l, struct rp__lru_node *n) {
  if (n->prev != NULL)
    n->prev->next = n->next;
  else
    l->head = n->next;
  if (n->next != NULL)
    n->next->prev = n->prev;
  else
    l->tail = n->prev;
  n->prev = n->next = NULL;
}

static void lru_node_front(struct rp__lru *l, struct rp__lru_node *n) {
  n->prev = NULL;
  n->next = l->head;
  if (l->head != NULL)
    l->head->prev = n;
  l->head = n;
  if (l->tail == NULL)
    l->tail = n;
}

static void lru_node_remove(struct rp__lru *l, struct rp__lru_node *n) {
  lru_node_unlink(l, n);
  rp__htab_remove(&l->t, &n->hn);
  free(n);
}

static void lru_free(struct rp__lru *l) {
  struct rp__lru_node *n = l->head, *next;

  for (; n != NULL; n = next) {
    next = n->next;
    free(n);
  }
  l->head = l->tail = NULL;
  rp__htab_free(&l->t);
}

static struct tag_node *tag_find(const struct rp_cache *c, const char *k, size_t kl, uint64_t h) {
  return (struct tag_node *)lru_find(&c->tags, k, kl, h);
}

static struct pub_node *pub_find(const struct rp_cache *c, const char *k, size_t kl, uint64_t h) {
  return (struct pub_node *)lru_find(&c->pubs, k, kl, h);
}

/* Split a NUL-joined key back into n parts. */
static void key_parts(const char *key, const char **parts, size_t n) {
  for (size_t i = 0; i < n; i++) {
    parts[i] = key;
    key += strlen(key) + 1;
  }
}

/* Over the bound: the entries set longest ago go, from memory and (write)
 * the index, through an op of kind del whose strings are the key's nparts. */
static void lru_trim(struct rp_cache *c, struct rp__lru *l, enum rp__idx_kind del, size_t nparts,
                     bool write) {
  while (l->t.n > l->max && l->tail != NULL) {
    struct rp__lru_node *n = l->tail;
    const char *parts[4] = {NULL, NULL, NULL, NULL};
    if (write) {
      struct rp__idx_op *op;
      key_parts(n->key, parts, nparts);
      op = rp__idx_op_new(del, NULL, NULL, parts[0], parts[1], parts[2], parts[3]);
      if (op != NULL)
        rp__index_submit(c, op);
    }
    lru_node_remove(l, n);
  }
}

static void tags_trim(struct rp_cache *c, bool write) {
  lru_trim(c, &c->tags, RP_IDX_TAG_DEL, 4, write);
}

static void pubs_trim(struct rp_cache *c, bool write) {
  lru_trim(c, &c->pubs, RP_IDX_PUBLIC_DEL, 2, write);
}

static struct tag_node *tag_set(struct rp_cache *c, const char *const parts[4],
                                const struct rp_tag_entry *e) {
  size_t klen = join_key(NULL, parts, 4);
  struct tag_node *t = malloc(sizeof *t + klen);
  struct tag_node *old;
  uint64_t h;

  if (t == NULL)
    return NULL;
  join_key(t->key, parts, 4);
  t->ln.key = t->key;
  t->ln.klen = klen;
  h = rp__hash(t->key, klen);
  old = tag_find(c, t->key, klen, h);
  if (old != NULL) {
    free(t);
    t = old;
    lru_node_unlink(&c->tags, &t->ln);
  } else {
    t->ln.hn.hash = h;
    rp__htab_insert(&c->tags.t, &t->ln.hn);
    registry_mark(c, parts[0]);
  }
  lru_node_front(&c->tags, &t->ln);
  t->e = *e;
  t->e.media_type[sizeof t->e.media_type - 1] = '\0';
  return t;
}

void rp_cache_tag_put(struct rp_cache *c, const char *registry, const char *repository,
                      const char *tag, const char *accept_key, const struct rp_tag_entry *e) {
  const char *parts[4] = {rp__nz(registry), rp__nz(repository), rp__nz(tag), rp__nz(accept_key)};
  struct tag_node *t;
  struct rp__idx_op *op;

  if (c == NULL || e == NULL)
    return;
  t = tag_set(c, parts, e);
  if (t == NULL)
    return;
  op = rp__idx_op_new(RP_IDX_TAG, NULL, NULL, parts[0], parts[1], parts[2], parts[3]);
  if (op != NULL) {
    op->digest = t->e.digest;
    op->size = t->e.size;
    op->time = t->e.checked;
    snprintf(op->media_type, sizeof op->media_type, "%s", t->e.media_type);
    rp__index_submit(c, op);
  }
  tags_trim(c, true);
}

bool rp_cache_tag_get(struct rp_cache *c, const char *registry, const char *repository,
                      const char *tag, const char *accept_key, struct rp_tag_entry *out) {
  const char *parts[4] = {rp__nz(registry), rp__nz(repository), rp__nz(tag), rp__nz(accept_key)};
  size_t klen;
  char *key;
  struct tag_node *t;

  if (c == NULL)
    return false;
  klen = join_key(NULL, parts, 4);
  key = malloc(klen);
  if (key == NULL)
    return false;
  join_key(key, parts, 4);
  t = tag_find(c, key, klen, rp__hash(key, klen));
  free(key);
  if (t == NULL)
    return false;
  if (out != NULL)
    *out = t->e;
  return true;
}

/* A manifest leaves: the tags naming it are of no use any more (the index
 * rows go with the object's, RP_IDX_EVICT). */
void rp__tags_drop_digest(struct rp_cache *c, const struct rp_digest *d) {
  struct rp__lru_node *n = c->tags.head, *next;

  for (; n != NULL; n = next) {
    struct tag_node *t = (struct tag_node *)n;
    next = n->next;
    if (t->e.digest.algo == d->algo && strcmp(t->e.digest.hex, d->hex) == 0)
      lru_node_remove(&c->tags, n);
  }
}

static struct pub_node *pub_set(struct rp_cache *c, const char *const parts[2], bool is_public,
                                int64_t checked) {
  size_t klen = join_key(NULL, parts, 2);
  struct pub_node *p = malloc(sizeof *p + klen);
  struct pub_node *old;
  uint64_t h;

  if (p == NULL)
    return NULL;
  join_key(p->key, parts, 2);
  p->ln.key = p->key;
  p->ln.klen = klen;
  h = rp__hash(p->key, klen);
  old = pub_find(c, p->key, klen, h);
  if (old != NULL) {
    free(p);
    p = old;
    lru_node_unlink(&c->pubs, &p->ln);
  } else {
    p->ln.hn.hash = h;
    rp__htab_insert(&c->pubs.t, &p->ln.hn);
  }
  lru_node_front(&c->pubs, &p->ln);
  p->is_public = is_public;
  p->checked = checked;
  return p;
}

void rp_cache_public_put(struct rp_cache *c, const char *registry, const char *repository,
                         bool is_public, int64_t checked) {
  const char *parts[2] = {rp__nz(registry), rp__nz(repository)};
  struct rp__idx_op *op;

  if (c == NULL || pub_set(c, parts, is_public, checked) == NULL)
    return;
  op = rp__idx_op_new(RP_IDX_PUBLIC, NULL, NULL, parts[0], parts[1], NULL, NULL);
  if (op != NULL) {
    op->is_manifest = is_public;
    op->time = checked;
    rp__index_submit(c, op);
  }
  pubs_trim(c, true);
}

bool rp_cache_public_get(struct rp_cache *c, const char *registry, const char *repository,
                         bool *is_public, int64_t *checked) {
  const char *parts[2] = {rp__nz(registry), rp__nz(repository)};
  char key[1024];
  size_t klen = join_key(NULL, parts, 2);
  struct pub_node *p;

  if (c == NULL || klen > sizeof key)
    return false;
  join_key(key, parts, 2);
  p = pub_find(c, key, klen, rp__hash(key, klen));
  if (p == NULL)
    return false;
  *is_public = p->is_public;
  *checked = p->checked;
  return true;
}

void rp__meta_free(struct rp_cache *c) {
  for (size_t i = 0; c->repos.b != NULL && i < c->repos.nb; i++) {
    struct rp__hnode *n = c->repos.b[i], *next;
    for (; n != NULL; n = next) {
      next = n->next;
      free(n);
    }
  }
  rp__htab_free(&c->repos);
  lru_free(&c->tags);
  lru_free(&c->pubs);
}

bool rp__tag_load(struct rp_cache *c, const char *const parts[4], const struct rp_tag_entry *e) {
  return tag_set(c, parts, e) != NULL;
}

bool rp__pub_load(struct rp_cache *c, const char *const parts[2], bool is_public, int64_t checked) {
  return pub_set(c, parts, is_public, checked) != NULL;
}

void rp__meta_trim(struct rp_cache *c) {
  tags_trim(c, false);
  pubs_trim(c, false);
}
