#ifndef RP_HTPASSWD_H
#define RP_HTPASSWD_H

#include <stdbool.h>
#include <stddef.h>

/* An htpasswd file for --proxy-auth-file (contract §4). */
struct rp_htpasswd;

/** Read "user:hash" lines ('#' comments and blank lines skipped). 0, or
 * RP_ECONFIG / RP_ENOMEM with *err (malloc'd) "file[:line]: reason". */
int rp_htpasswd_load(const char *path, struct rp_htpasswd **out, char **err);
/** One more holder (a verification running on the thread pool). */
void rp_htpasswd_ref(struct rp_htpasswd *h);
/** Drop a holder; freed with the last. */
void rp_htpasswd_destroy(struct rp_htpasswd *h);
size_t rp_htpasswd_count(const struct rp_htpasswd *h);
/** Does pass match user's hash (any format htpasswd writes)? Blocking and,
 * for bcrypt, slow on purpose: call it on the thread pool. Thread-safe. */
bool rp_htpasswd_verify(const struct rp_htpasswd *h, const char *user, const char *pass);

#endif
