/* fastbn's own thread pool: parallel loops over tiles. Not part of the public C API.
 *
 * Why not OpenMP: a caller waits at an OpenMP region's barrier for every team
 * thread, so one worker the scheduler has not run yet (a busy machine) stalls
 * the call by whole scheduler ticks; and libgomp's pool hangs a forked child.
 * Here tiles are claimed one at a time by whichever thread is free, the caller
 * included: a worker that wakes late finds nothing left to do, and the caller
 * waits only for tiles a worker has already started. A forked child drops the
 * pool (its threads do not exist there) and builds a new one on its next call.
 *
 * Results never depend on which thread ran a tile: tiles write to places given by
 * their index (and per-thread scratch, indexed by `thread`, holds nothing that
 * outlives a tile).
 */
#ifndef FASTBN_PARALLEL_H
#define FASTBN_PARALLEL_H

#include <stdint.h>

/* Threads of one loop, the caller included (more are not used). */
#define FBN_POOL_MAX 64

/* One tile of a loop: thread is in [0, nthreads) and no two tiles run at the same
 * time with the same thread index. */
typedef void (*fbn_tile_fn)(void *ctx, int64_t tile, int thread);

/* fn(ctx, t, thread) for every t in [0, ntiles), each exactly once, on at most
 * nthreads threads (the caller is thread 0); returns when all are done. Runs on
 * the caller alone when nthreads or ntiles is 1, or when another caller is using
 * the pool at that moment. */
void fbn_parallel_for(int64_t ntiles, int nthreads, fbn_tile_fn fn, void *ctx);

/* The threads a call of `values` values takes of nthreads: all of them when the
 * pool's workers are awake (spinning after a loop) or the call is large (at least
 * FBN_WAKE_VALUES values, or the environment's FASTBN_WAKE_VALUES, read once; 0:
 * always), or when such small calls come back to back (FBN_DENSE_LOOPS in a row,
 * each beginning within a worker's spin of the last loop's end); else 1: waking a
 * sleeping worker costs more than it saves. No result's bits depend on it. */
int fbn_pool_threads(int64_t values, int nthreads);
/* That limit in values, for show_config (-1: no such rule, the pool is not fastbn's). */
int64_t fbn_pool_wake_values(void);

/* The pool's kind, for show_config: "pthreads", "openmp" or "none" (one thread). */
const char *fbn_pool_kind(void);

/* Largest useful nthreads of fbn_parallel_for (1 without threads). */
int fbn_pool_max_threads(void);

/* Whether the pool backs off to the caller alone after a stalled loop (on by
 * default; tests turn it off so that their loops do run on threads). Returns the
 * previous setting. */
int fbn_pool_set_backoff(int on);

/* For tests (through ctypes: not in the Python API): loops the pool ran on the
 * caller alone because it was backing off, and loops in which a worker ran a tile
 * on the caller's CPU (each makes the pool back off), since the process started
 * (a forked child keeps its parent's counts). */
void fbn_pool_counters(int64_t *alone_loops, int64_t *shared_loops);

/* For tests, likewise: workers woken from their sleep for a loop that had no tile
 * left for them, on the caller's CPU or long after it was published (each went
 * back to sleep without spinning), and loops that backed off for such a wake-up. */
void fbn_pool_late_counters(int64_t *late_wakes, int64_t *late_loops);

/* For tests, likewise: loops that took too long by the pool's time checks (see
 * FBN_STALL_NS in parallel.c), and those of them that kept their threads because
 * nothing showed that another task had taken a CPU from them (a hypervisor's
 * steal, a stopped process). Both are counted with the back-off off too. */
void fbn_pool_slow_counters(int64_t *slow_loops, int64_t *stolen_loops);

/* For tests, likewise: workers that found themselves on their caller's CPU between
 * loops, or woken onto it, while another CPU of their affinity was free (by
 * /proc/loadavg's runnable count), and so tried to move off it. */
int64_t fbn_pool_moves(void);

/* For tests, likewise: loops published to workers (those not run on the caller alone). */
int64_t fbn_pool_loops(void);

/* For tests: moves the calling thread off CPU `cpu` as a worker on its caller's CPU
 * moves, its affinity left as it was; returns whether it then runs on another CPU (0
 * also when its affinity does not include `cpu` or includes no other CPU), -1 without
 * the POSIX threads pool. */
int fbn_pool_leave_cpu(int cpu);

/* For tests: the machine's runnable tasks now as the pool reads them before such a
 * move (/proc/loadavg), -1 when unknown (not Linux, or without the POSIX threads
 * pool). */
int64_t fbn_pool_runnable_tasks(void);

/* For tests, likewise: the pool's response to a stalled loop at monotonic time now_ns
 * (fbn_now_ns's clock), `loops` threaded loops after the previous call: the back-off it
 * starts in ns, 0 when the stall is only a strike (see FBN_STRIKE_NS); -1 without the
 * POSIX threads pool. It changes the pool's state: call it in a process of its own. */
int64_t fbn_pool_stall_at(int64_t now_ns, int64_t loops);

/* Defined in work.c: releases the work cache if a call held it when the
 * process forked (that call does not exist in the child). */
void fbn_work_after_fork(void);
/* Defined in outmem.c: the child's output cache starts empty (see there). */
void fbn_outmem_after_fork(void);

/* A cached block claimed by one call at a time (work.c's work block, outmem.c's
 * kept outputs): an atomic flag; a call that finds it taken goes without the cache,
 * so nothing waits. FBN_CAN_CLAIM 0: no atomics known, no cache. */
#if defined(__GNUC__) || defined(__clang__)
#define FBN_CAN_CLAIM 1
#define FBN_CLAIM(flag) (__atomic_exchange_n(&(flag), 1, __ATOMIC_ACQUIRE) == 0)
#define FBN_UNCLAIM(flag) __atomic_store_n(&(flag), 0, __ATOMIC_RELEASE)
#elif defined(_MSC_VER)
#include <intrin.h>
#define FBN_CAN_CLAIM 1
#define FBN_CLAIM(flag) (_InterlockedExchange(&(flag), 1) == 0)
#define FBN_UNCLAIM(flag) _InterlockedExchange(&(flag), 0)
#else
#define FBN_CAN_CLAIM 0
#define FBN_CLAIM(flag) ((void)(flag), 0)
#define FBN_UNCLAIM(flag) (void)0
#endif

/* FBN_ASAN 1 under AddressSanitizer (GCC's macro, clang's feature test), whose
 * reports need each allocation and free to be its own: the caches step aside. */
#if defined(__SANITIZE_ADDRESS__)
#define FBN_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FBN_ASAN 1
#endif
#endif
#ifndef FBN_ASAN
#define FBN_ASAN 0
#endif

#endif
