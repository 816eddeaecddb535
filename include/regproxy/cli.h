#ifndef RP_CLI_H
#define RP_CLI_H

/* Subcommands other than `run` (contract §4). Each takes the loaded
 * configuration (it stays the caller's: destroy it afterwards) and returns
 * the process exit code: 0 ok, 1 runtime failure, 2 usage or configuration
 * error, with a message on stderr. */

struct rp_config;

/** `regproxy ca init|cert|path` (cfg->args: "ca", verb): init creates the CA
 * in cfg->ca_dir if missing and prints the certificate's path; cert prints
 * the PEM; path prints the certificate's path. */
int rp_cli_ca(struct rp_config *cfg);

/** `regproxy cache ls|du|verify|gc|rm <digest>` (cfg->args: "cache", verb[,
 * digest]) on cfg->cache_dir directly (takes the directory's lock; fails with
 * 1 naming the PID when a running regproxy holds it). */
int rp_cli_cache(struct rp_config *cfg);

/** `regproxy setup docker|containerd|podman [--dry-run] [--root DIR]`: the
 * proxy drop-in and CA files for that engine (cfg->root as /). */
int rp_cli_setup(struct rp_config *cfg);

/** `regproxy prefetch <image-ref>...` (cfg->args: "prefetch", refs): every
 * platform's manifests and blobs of each image into the cache, through the
 * running instance that holds cfg->cache_dir, or through one started in this
 * process (argc/argv/envp configure it). Progress on stdout. */
int rp_cli_prefetch(struct rp_config *cfg, int argc, char **argv, char **envp);

#endif
