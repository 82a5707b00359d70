/* fastbn's thread pool (see parallel.h). Three builds, one function:
 *   FBN_POOL_PTHREADS (POSIX, set by setup.py): the pool below;
 *   _OPENMP (MSVC, no pthreads): an OpenMP loop with dynamic tiles (not fork-safe);
 *   neither: every loop runs on the caller.
 */
#if defined(FBN_POOL_PTHREADS) && defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* syscall (futex), sched_getcpu, with clock_gettime, under -std=c99 */
#elif defined(FBN_POOL_PTHREADS) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* clock_gettime, pthread_sigmask under -std=c99 */
#endif

#include "parallel.h"
#include "tuning.h"

static void fbn_serial_for(int64_t ntiles, fbn_tile_fn fn, void *ctx) {
    for (int64_t t = 0; t < ntiles; t++) fn(ctx, t, 0);
}

#if defined(FBN_POOL_PTHREADS)

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef FBN_POOL_DEBUG
#include <stdio.h>
#endif

/* Workers spin this long for the next loop before they sleep: back-to-back
 * loops of one call (and the next call's, after a few microseconds of Python)
 * start without a wake-up, and an idle process burns no CPU. */
#define FBN_WORKER_SPIN_NS 100000
/* The caller spins this long for its workers' last tiles before it sleeps. */
#define FBN_CALLER_SPIN_NS 200000
/* A loop that woke sleeping workers: when none of them has left its sleep this long
 * after the loop was published, the caller yields its CPU once, between two of its
 * tiles (fbn_caller_nudge). */
#define FBN_NUDGE_NS 30000
/* A loop stalled when the caller spent more than FBN_STALL_NS plus the time it
 * ran tiles itself waking its workers or waiting for their last tiles, when it
 * was off its CPU more than FBN_STALL_NS while it ran tiles, when a worker,
 * out of tiles, waited more than FBN_STALL_NS plus two of its average tiles for
 * the caller's last tile, or when a worker ran a tile on the CPU the caller
 * published the loop from (no CPU was free for it: see fbn_on_caller_cpu). On a
 * busy machine the scheduler then preempted
 * a worker mid-tile, or the caller (often for the worker it woke), and running it
 * again costs whole ticks. Loops then run on the caller alone for a back-off time:
 * FBN_BACKOFF_MIN_NS, doubled (up to FBN_BACKOFF_MAX_NS) when the previous stall
 * was less than 4 back-offs ago. On a busy machine calls then cost about their
 * 1-thread time, probing threads now and then; a quiet machine has no stalls. */
#define FBN_STALL_NS 500000
/* A worker woken from its sleep for a loop that then finds no tile left to claim,
 * either on the caller's CPU or more than FBN_STALL_NS after the loop was
 * published, woke late: no CPU was free for it, and its wake-up often preempted the
 * caller (between loops or in the next one, where the checks above do not see it;
 * the caller then waits behind the other processes on its CPU for a whole slice).
 * It goes back to sleep at once, without spinning for the next loop, and makes the
 * caller's next loop start the back-off as a stalled one would. */
#define FBN_BACKOFF_MIN_NS 50000000
#define FBN_BACKOFF_MAX_NS 2000000000
/* The first stall after a quiet spell is only a strike: the back-off starts at a
 * second one within FBN_STRIKE_NS or FBN_STRIKE_LOOPS threaded loops of it (or at
 * once while a back-off's doubling window is open). A busy machine stalls loop
 * after loop; a system task that takes a CPU for a moment now and then does not (an
 * AMD EPYC guest here: 2 ms every 512 ms, which backed off 2-thread calls for 50 ms
 * each time and doubled their median time). */
#define FBN_STRIKE_NS FBN_BACKOFF_MIN_NS
#define FBN_STRIKE_LOOPS 16
/* A slow loop (one of the time checks above) counts as stalled only with evidence
 * that another task took a CPU from its threads: the caller, from the loop's start
 * to its end, or a worker, while the caller slept waiting for it, waited in a run
 * queue more than FBN_QUEUED_NS (schedstat). A hypervisor that takes a virtual CPU
 * (steal) or a stopped process (SIGSTOP) leaves no such trace, and running alone
 * would not avoid either: those loops keep their threads (counted as stolen loops).
 * Where the run queues cannot be read (not Linux, no /proc), every slow loop is
 * stalled. A worker that shared the caller's CPU or woke late is evidence itself. */
#define FBN_QUEUED_NS (FBN_STALL_NS / 2)

#if defined(__x86_64__) || defined(__i386__)
#define FBN_PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define FBN_PAUSE() __asm__ __volatile__("yield")
#else
#define FBN_PAUSE() ((void)0)
#endif

#define LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)

/* A thread's schedstat file kept open (Linux): the descriptor, and the device and
 * inode it was opened on. A program may close every descriptor it did not open and
 * reuse the number: the pool closes a file only if it is still the one it opened. */
typedef struct {
    int fd; /* -1: none (a calling thread's: not opened yet; -2: failed) */
    uint64_t dev, ino;
} fbn_statfile;

/* The published loop is one 64-bit word, so that a thread claims a tile and
 * learns which loop it belongs to in one compare-and-swap: tiles left (low 40
 * bits), nthreads (8 bits), generation (high 16 bits; it only tells sleeping
 * workers that something new was published). A claimed tile keeps its loop
 * open until it is done, so the loop's fn, ctx and ntiles stay valid while the
 * claimer reads them; a late worker's compare-and-swap on a finished loop (0
 * tiles left) claims nothing. */
#define FBN_LEFT_BITS 40
#define FBN_LEFT_MASK ((UINT64_C(1) << FBN_LEFT_BITS) - 1)
#define FBN_NT(v) ((int)(((v) >> FBN_LEFT_BITS) & 0xff))
#define FBN_GEN(v) ((v) >> 48)

static struct {
    uint64_t word;       /* the published loop (see above) */
    int64_t ntiles, done; /* the loop's tiles, and how many are finished */
    fbn_tile_fn fn;
    void *ctx;
    int busy;            /* a caller owns the pool */
    int nworkers;        /* workers started: thread indices 1..nworkers */
    int sleepers;        /* workers asleep on the event wake_seq */
    int caller_asleep;   /* the caller is asleep on the event finish_seq */
    int wake_seq, finish_seq;
    int caller_cpu;      /* the CPU the caller published the loop from (-1: unknown) */
    int shared;          /* 0x10000 | generation: a worker ran a tile of that loop on caller_cpu,
                          * or could not leave it for a free CPU (fbn_leave_caller_cpu) */
    int late;            /* a worker woke late (see FBN_STALL_NS): the next loop backs off */
    int nudge;           /* sleepers the current loop woke, until the caller's nudge (owner only) */
    int64_t published;   /* monotonic ns: when the current loop was published */
    int64_t late_wakes, late_loops; /* late wake-ups; loops that backed off for one */
    int64_t alone_until; /* monotonic ns: loops run on the caller alone until then */
    int64_t alone_loops, shared_loops; /* loops run alone in a back-off; loops that shared a CPU */
    int64_t slow_loops, stolen_loops; /* slow loops; those without evidence (see FBN_QUEUED_NS) */
    int64_t moves;       /* workers on the caller's CPU with another free: moves tried */
    int64_t backoff;     /* ns of the last back-off (0: none) */
    int64_t last_stall;  /* monotonic ns */
    int64_t strike_at, strike_loop; /* a first stall (0: none): when, threaded_loops then */
    int64_t threaded_loops; /* loops published to workers */
    int no_backoff;      /* fbn_pool_set_backoff(0) */
    int64_t loop_end;    /* monotonic ns: when the last loop (threaded or not) ended */
    int64_t small_run;   /* small calls in a row that began within a spin of a loop's end */
    pthread_mutex_t lock;
    pthread_cond_t wake; /* events without futexes */
    /* per worker, of the loop of generation gen: time in tiles, tiles, and when
     * it found none left (0: not yet) */
    struct {
        uint64_t gen;
        int64_t busy, tiles, idle_at;
        int64_t watch; /* the worker's, after a move: its run-queue ns then (-1: none) */
    } stat[FBN_POOL_MAX];
    fbn_statfile worker_stat[FBN_POOL_MAX]; /* workers' schedstat files */
} pool = {.caller_cpu = -1, .lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

/* Events: a sequence number that a notify increments; fbn_event_wait(seq, seen)
 * sleeps until it differs from seen (or spuriously: callers check and loop). On
 * Linux a futex: no lock, so a thread preempted near its sleep never blocks the
 * thread that wakes it (with a mutex it did, for whole ticks, on a busy machine). */
#if defined(__linux__)
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
static void fbn_event_wait(int *seq, int seen) {
    syscall(SYS_futex, seq, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
}
static void fbn_event_notify(int *seq) {
    __atomic_add_fetch(seq, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, seq, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}
#else
static void fbn_event_wait(int *seq, int seen) {
    pthread_mutex_lock(&pool.lock);
    while (LOAD(seq) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
}
static void fbn_event_notify(int *seq) {
    __atomic_add_fetch(seq, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&pool.lock);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
}
#endif

static int64_t fbn_clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
static int64_t fbn_now_ns(void) { return fbn_clock_ns(CLOCK_MONOTONIC); }
#if defined(__linux__)
#include <sched.h>
static int fbn_this_cpu(void) { return sched_getcpu(); } /* vDSO: nanoseconds; -1 on error */
#else
static int fbn_this_cpu(void) { return -1; }
#endif

/* Whether this worker runs on the CPU its caller published the current loop from.
 * Two threads of one loop on one CPU never run at the same time: the caller is off
 * its CPU (often preempted by this very worker, woken onto it because every other
 * CPU was busy), so this worker's tiles are no faster than the caller's, and its
 * spin for the next loop would keep the caller off the CPU. */
static int fbn_on_caller_cpu(void) {
    const int cpu = LOAD(&pool.caller_cpu);
    return cpu >= 0 && fbn_this_cpu() == cpu;
}

/* Moves this worker off CPU `cpu` (its caller's) when its affinity allows another
 * CPU, and leaves its affinity as it was: the kernel moves a thread at once off a
 * CPU its mask stops allowing, to an idle CPU if there is one, and does not move it
 * back when the mask is widened again. Returns whether it now runs elsewhere.
 * Why: a worker woken by the caller can be placed on the caller's CPU although
 * another is idle (a virtual machine's guest counts an idle virtual CPU that the
 * host descheduled as busy: after the process paused for a few milliseconds, as a
 * trainer does between batches), and a worker there sleeps after each loop instead
 * of spinning, so that the next wake-up placed it there again: its loops shared
 * one CPU call after call. Workers move only where a CPU is free
 * (fbn_other_cpu_free). */
#if defined(__linux__) && defined(CPU_SETSIZE)
/* This thread's affinity into *mask; whether it includes CPU `cpu`. */
static int fbn_affinity_has(int cpu, cpu_set_t *mask) {
    return cpu >= 0 && cpu < CPU_SETSIZE && sched_getaffinity(0, sizeof *mask, mask) == 0 &&
           CPU_ISSET(cpu, mask);
}
#endif

static int fbn_leave_cpu(int cpu) {
#if defined(__linux__) && defined(CPU_SETSIZE)
    cpu_set_t mask, others;
    if (!fbn_affinity_has(cpu, &mask)) return 0;
    others = mask;
    CPU_CLR(cpu, &others);
    if (CPU_COUNT(&others) == 0 || sched_setaffinity(0, sizeof others, &others) != 0) return 0;
    sched_setaffinity(0, sizeof mask, &mask);
    return fbn_this_cpu() != cpu;
#else
    (void)cpu;
    return 0;
#endif
}

#if defined(CLOCK_THREAD_CPUTIME_ID)
/* the calling thread's CPU time (a system call, ~0.4 us: twice per loop) */
static int64_t fbn_cpu_ns(void) { return fbn_clock_ns(CLOCK_THREAD_CPUTIME_ID); }
#else
static int64_t fbn_cpu_ns(void) { return fbn_now_ns(); } /* never off-CPU */
#endif
#if defined(__linux__)
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
/* the calling thread's schedstat file (fd -1: none) */
static fbn_statfile fbn_open_schedstat(void) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/schedstat", (int)syscall(SYS_gettid));
    fbn_statfile f = {open(path, O_RDONLY | O_CLOEXEC), 0, 0};
    struct stat st;
    if (f.fd >= 0 && fstat(f.fd, &st) == 0) {
        f.dev = (uint64_t)st.st_dev;
        f.ino = (uint64_t)st.st_ino;
    }
    return f;
}
static void fbn_close_schedstat(fbn_statfile *f) {
    struct stat st;
    if (f->fd >= 0 && fstat(f->fd, &st) == 0 && (uint64_t)st.st_dev == f->dev &&
        (uint64_t)st.st_ino == f->ino)
        close(f->fd);
    f->fd = -1;
}
/* ns that the thread of a schedstat file has spent runnable in a run queue while
 * another task had the CPU (the file's second field); -1: unknown. */
static int64_t fbn_read_queued_ns(int fd) {
    char text[96];
    const ssize_t n = fd < 0 ? -1 : pread(fd, text, sizeof text - 1, 0);
    if (n <= 0) return -1;
    text[n] = 0;
    char *end;
    strtoll(text, &end, 10); /* CPU time */
    const long long queued = strtoll(end, &end, 10);
    return *end == ' ' && queued >= 0 ? queued : -1;
}
/* The machine's runnable tasks now (/proc/loadavg's fourth field, "running/total":
 * the kernel's instantaneous count, the reading thread included); -1: unknown. A
 * read of a few microseconds, only when a worker finds itself on its caller's CPU. */
static int64_t fbn_runnable_tasks(void) {
    char text[128];
    const int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    const ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) return -1;
    text[n] = 0;
    char *at = text;
    for (int field = 0; field < 3; field++) { /* the three load averages */
        at = strchr(at, ' ');
        if (at == NULL) return -1;
        at++;
    }
    char *end;
    const long long running = strtoll(at, &end, 10);
    return end != at && *end == '/' && running > 0 ? running : -1;
}
/* Each calling thread's schedstat file, opened at its first threaded loop and
 * closed when the thread exits (threads that call in turn keep theirs). */
static pthread_key_t fbn_caller_key;
static int fbn_caller_key_made;
static void fbn_free_caller_stat(void *file) {
    fbn_close_schedstat(file);
    free(file);
}
static void fbn_make_caller_key(void) {
    fbn_caller_key_made = pthread_key_create(&fbn_caller_key, fbn_free_caller_stat) == 0;
}
/* The calling thread's run-queue time (a read: ~0.7 us, once per loop); -1: unknown. */
static int64_t fbn_caller_queued_ns(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, fbn_make_caller_key);
    if (!fbn_caller_key_made) return -1;
    fbn_statfile *file = pthread_getspecific(fbn_caller_key);
    if (file == NULL) {
        file = malloc(sizeof *file);
        if (file == NULL) return -1;
        file->fd = -1;
        if (pthread_setspecific(fbn_caller_key, file) != 0) {
            free(file);
            return -1;
        }
    }
    if (file->fd == -1) {
        *file = fbn_open_schedstat();
        if (file->fd < 0) file->fd = -2; /* not again */
    }
    const int64_t queued = fbn_read_queued_ns(file->fd);
    if (queued < 0 && file->fd >= 0) {
        fbn_close_schedstat(file);
        file->fd = -2;
    }
    return queued;
}
/* In a forked child: the forking thread's file is its parent thread's; reopen. */
static void fbn_caller_stat_after_fork(void) {
    fbn_statfile *file = fbn_caller_key_made ? pthread_getspecific(fbn_caller_key) : NULL;
    if (file != NULL) {
        fbn_close_schedstat(file);
        file->fd = -1;
    }
}
/* The run-queue time of the workers of an nthreads loop, summed; -1: unknown. */
static int64_t fbn_workers_queued_ns(int nthreads) {
    int64_t sum = 0;
    for (int w = 1; w < nthreads && w <= pool.nworkers && sum >= 0; w++) {
        const int64_t queued = fbn_read_queued_ns(LOAD(&pool.worker_stat[w].fd));
        sum = queued < 0 ? -1 : sum + queued;
    }
    return sum;
}
#else
static fbn_statfile fbn_open_schedstat(void) { return (fbn_statfile){-1, 0, 0}; }
static void fbn_close_schedstat(fbn_statfile *f) { f->fd = -1; }
static int64_t fbn_read_queued_ns(int fd) { (void)fd; return -1; }
static int64_t fbn_runnable_tasks(void) { return -1; }
static int64_t fbn_caller_queued_ns(void) { return -1; }
static void fbn_caller_stat_after_fork(void) {}
static int64_t fbn_workers_queued_ns(int nthreads) { (void)nthreads; return -1; }
#endif

/* Whether a CPU of this thread's affinity other than `cpu` (its caller's, where it
 * runs) likely runs nothing now, by the machine's count of runnable tasks
 * (fbn_runnable_tasks): at most `runnable` CPUs are busy, this worker's and its
 * preempted caller's one of them. Unknown counts answer no. Why: on a busy machine
 * (every CPU taken) a worker placed on its caller's CPU is the evidence the pool
 * backs off on, and a move would hide it (it always finds some CPU, and queues there
 * behind another task: in tests/test_pool_steal.py's busy run, 60% of slow loops
 * were then judged stolen). Only where a CPU is free is the placement the guest's
 * mistake. A caller that sleeps is not counted: a move then onto a busy CPU queues,
 * which fbn_leave_caller_cpu sees. */
static int fbn_other_cpu_free(int cpu) {
#if defined(__linux__) && defined(CPU_SETSIZE)
    cpu_set_t mask;
    if (!fbn_affinity_has(cpu, &mask)) return 0;
    const int64_t runnable = fbn_runnable_tasks();
    return runnable > 0 && runnable - 1 < CPU_COUNT(&mask);
#else
    (void)cpu;
    return 0;
#endif
}

/* fbn_leave_cpu from the caller's CPU, when this worker is on it. A move that
 * fails, or after which the worker waited in a run queue more than FBN_QUEUED_NS
 * (schedstat_fd: its file; the other CPUs were busy), is what a worker on the
 * caller's CPU was before there was a move: evidence that no CPU was free for it,
 * the busy machine's case. It marks the current loop as shared (the caller's stall
 * check) and flags the next as a late wake-up does. After a move, the worker's tiles
 * until its next wait watch its run-queue time too (fbn_watch_tile): a task on the
 * CPU it moved to can take that CPU back in the middle of the loop. */
static void fbn_leave_caller_cpu(int thread, int schedstat_fd) {
    if (!fbn_on_caller_cpu() || !fbn_other_cpu_free(LOAD(&pool.caller_cpu))) return;
    __atomic_add_fetch(&pool.moves, 1, __ATOMIC_RELAXED);
    const int64_t queued0 = fbn_read_queued_ns(schedstat_fd);
    const int moved = fbn_leave_cpu(LOAD(&pool.caller_cpu));
    const int64_t queued1 = fbn_read_queued_ns(schedstat_fd);
    if (!moved || queued0 < 0 || queued1 < 0 || queued1 - queued0 > FBN_QUEUED_NS) {
        STORE(&pool.shared, (int)(0x10000 | FBN_GEN(LOAD(&pool.word))));
        STORE(&pool.late, 1);
        return;
    }
    pool.stat[thread].watch = queued1;
}

/* The caller, after one of its tiles: while no worker the loop woke has left its
 * sleep FBN_NUDGE_NS after the loop was published, one may wait behind the caller
 * on the caller's CPU (see fbn_leave_cpu: a virtual machine's guest places it there
 * after a pause), where it runs only when the caller stops, finds no tile left and
 * backs the pool off: the caller then yields its CPU once, so that the worker runs
 * and moves to the free CPU (fbn_leave_caller_cpu). Only where a CPU is free
 * (fbn_other_cpu_free): on a busy machine the yield would hand the CPU to another
 * process. Nothing waiting, the yield returns at once. */
static void fbn_caller_nudge(void) {
    if (fbn_now_ns() - LOAD(&pool.published) < FBN_NUDGE_NS) return;
#if defined(__linux__)
    if (LOAD(&pool.sleepers) >= pool.nudge && fbn_other_cpu_free(LOAD(&pool.caller_cpu)))
        sched_yield();
#endif
    pool.nudge = 0;
}

/* After a tile of the loop of generation gen by a worker that moved (see
 * fbn_leave_caller_cpu): waiting in a run queue more than FBN_QUEUED_NS since the
 * move marks the loop as shared, before the tile counts as done (the caller's stall
 * check reads the mark after the last tile). */
static void fbn_watch_tile(int thread, uint64_t gen) {
    const int64_t since = pool.stat[thread].watch;
    if (since < 0) return;
    const int64_t queued = fbn_read_queued_ns(LOAD(&pool.worker_stat[thread].fd));
    if (queued < 0 || queued - since > FBN_QUEUED_NS) {
        STORE(&pool.shared, (int)(0x10000 | gen));
        pool.stat[thread].watch = -1;
    }
}

/* Claims and runs tiles of the published loop until none is left (or the loop
 * is not for this thread index). */
static void fbn_run_tiles(int thread) {
    for (;;) {
        uint64_t v = LOAD(&pool.word);
        if ((v & FBN_LEFT_MASK) == 0 || thread >= FBN_NT(v)) {
            if (thread > 0 && __atomic_load_n(&pool.stat[thread].gen, __ATOMIC_RELAXED) ==
                                  FBN_GEN(v) && __atomic_load_n(&pool.stat[thread].idle_at,
                                                                __ATOMIC_RELAXED) == 0)
                __atomic_store_n(&pool.stat[thread].idle_at, fbn_now_ns(), __ATOMIC_RELEASE);
            return;
        }
        if (!__atomic_compare_exchange_n(&pool.word, &v, v - 1, 0, __ATOMIC_SEQ_CST,
                                         __ATOMIC_SEQ_CST))
            continue;
        const int64_t ntiles = pool.ntiles;
        fbn_tile_fn fn = pool.fn;
        void *ctx = pool.ctx;
        const int64_t t0 = thread > 0 ? fbn_now_ns() : 0;
        /* the claimed tile keeps the loop open: shared and caller_cpu are this loop's */
        if (thread > 0 && fbn_on_caller_cpu())
            STORE(&pool.shared, (int)(0x10000 | FBN_GEN(v)));
        fn(ctx, ntiles - (int64_t)(v & FBN_LEFT_MASK), thread); /* tiles in order */
        if (thread == 0 && pool.nudge) fbn_caller_nudge();
        if (thread > 0) { /* relaxed: the caller's stall check is a heuristic */
            if (__atomic_load_n(&pool.stat[thread].gen, __ATOMIC_RELAXED) != FBN_GEN(v)) {
                __atomic_store_n(&pool.stat[thread].busy, 0, __ATOMIC_RELAXED);
                __atomic_store_n(&pool.stat[thread].tiles, 0, __ATOMIC_RELAXED);
                __atomic_store_n(&pool.stat[thread].idle_at, 0, __ATOMIC_RELAXED);
                __atomic_store_n(&pool.stat[thread].gen, FBN_GEN(v), __ATOMIC_RELAXED);
            }
            __atomic_add_fetch(&pool.stat[thread].busy, fbn_now_ns() - t0, __ATOMIC_RELAXED);
            __atomic_add_fetch(&pool.stat[thread].tiles, 1, __ATOMIC_RELAXED);
            fbn_watch_tile(thread, FBN_GEN(v));
        }
        if (__atomic_add_fetch(&pool.done, 1, __ATOMIC_SEQ_CST) == ntiles &&
            LOAD(&pool.caller_asleep))
            fbn_event_notify(&pool.finish_seq); /* the caller sleeps, or is about to */
    }
}

/* Whether a worker just woken from its sleep woke late for the loop in word v
 * (see FBN_STALL_NS); if so, counts it and flags the caller's next loop, unless it
 * woke late off the caller's CPU without waiting in a run queue more than
 * FBN_QUEUED_NS since *queued (its run-queue time before it slept, updated). */
static int fbn_woke_late(uint64_t v, int schedstat_fd, int64_t *queued) {
    if ((v & FBN_LEFT_MASK) != 0) return 0; /* a tile to claim: in time */
    const int shared = fbn_on_caller_cpu();
    if (!shared && fbn_now_ns() - LOAD(&pool.published) <= FBN_STALL_NS) return 0;
    __atomic_add_fetch(&pool.late_wakes, 1, __ATOMIC_RELAXED);
    const int64_t before = *queued;
    *queued = fbn_read_queued_ns(schedstat_fd);
    if (shared || before < 0 || *queued < 0 || *queued - before > FBN_QUEUED_NS)
        STORE(&pool.late, 1);
    return 1;
}

/* Waits until a loop with a generation other than *seen is published: spins a
 * while (not on the caller's CPU), then sleeps; woken late, sleeps again at once
 * (the loop it was woken for is over). */
static void fbn_wait_loop(int thread, uint64_t *seen, int schedstat_fd) {
    pool.stat[thread].watch = -1;
    fbn_leave_caller_cpu(thread, schedstat_fd);
    const int64_t until = fbn_on_caller_cpu() ? 0 : fbn_now_ns() + FBN_WORKER_SPIN_NS;
    for (int i = 1;; i++) {
        uint64_t v = LOAD(&pool.word);
        if (FBN_GEN(v) != *seen) {
            *seen = FBN_GEN(v);
            return;
        }
        FBN_PAUSE();
        if (i % 64 == 0 && fbn_now_ns() > until) break;
    }
    /* sleepers first, then the word: a caller publishing after our check sees
     * sleepers and notifies (sequentially consistent order) */
    __atomic_add_fetch(&pool.sleepers, 1, __ATOMIC_SEQ_CST);
    int64_t queued = fbn_read_queued_ns(schedstat_fd);
    for (;;) {
        const int seq = LOAD(&pool.wake_seq);
        const uint64_t v = LOAD(&pool.word);
        if (FBN_GEN(v) != *seen) {
            fbn_leave_caller_cpu(thread, schedstat_fd); /* woken onto it: fbn_leave_cpu */
            if (!fbn_woke_late(v, schedstat_fd, &queued)) break;
            *seen = FBN_GEN(v); /* still a sleeper: the next loop wakes us */
            continue;
        }
        fbn_event_wait(&pool.wake_seq, seq);
    }
    __atomic_sub_fetch(&pool.sleepers, 1, __ATOMIC_SEQ_CST);
    *seen = FBN_GEN(LOAD(&pool.word));
}

static void *fbn_worker(void *arg) {
    const int thread = (int)(intptr_t)arg;
    const fbn_statfile file = fbn_open_schedstat();
    const int schedstat_fd = file.fd;
    pool.worker_stat[thread].dev = file.dev; /* before the descriptor: see the fork handler */
    pool.worker_stat[thread].ino = file.ino;
    STORE(&pool.worker_stat[thread].fd, schedstat_fd);
    uint64_t seen = FBN_GEN(LOAD(&pool.word));
    pool.stat[thread].watch = -1; /* no move yet */
    fbn_run_tiles(thread); /* the loop that started this worker */
    for (;;) {
        fbn_wait_loop(thread, &seen, schedstat_fd);
        fbn_run_tiles(thread);
    }
    return NULL;
}

/* Starts workers up to `want` (the caller owns the pool). Signals stay with the
 * process's other threads (Python handles them in its main thread). */
static void fbn_start_workers(int want) {
    if (pool.nworkers >= want) return;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    while (pool.nworkers < want) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        STORE(&pool.worker_stat[pool.nworkers + 1].fd, -1); /* the worker opens its own */
        int failed = pthread_create(&th, &attr, fbn_worker, (void *)(intptr_t)(pool.nworkers + 1));
        pthread_attr_destroy(&attr);
        if (failed) break; /* run with the workers there are */
        pool.nworkers++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* In a forked child only the forking thread exists: the pool starts empty and
 * unowned (a loop the parent was running is not the child's), with fresh
 * synchronisation objects (a parent thread may have held them). */
static void fbn_after_fork_child(void) {
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
    memcpy(&pool.lock, &lock, sizeof lock);
    memcpy(&pool.wake, &cond, sizeof cond);

    pool.word &= ~FBN_LEFT_MASK; /* keep the generation: nothing left to claim */
    pool.ntiles = pool.done = 0;
    for (int w = 1; w <= pool.nworkers; w++) /* the parent's threads' files */
        fbn_close_schedstat(&pool.worker_stat[w]);
    fbn_caller_stat_after_fork();
    pool.nworkers = pool.sleepers = pool.caller_asleep = pool.busy = 0;
    pool.alone_until = pool.backoff = pool.last_stall = pool.strike_at = 0;
    pool.late = 0;
    pool.caller_cpu = -1;
    fbn_work_after_fork();
    fbn_outmem_after_fork();
}

static pthread_once_t fbn_fork_once = PTHREAD_ONCE_INIT;
static void fbn_register_fork(void) { pthread_atfork(NULL, NULL, fbn_after_fork_child); }

/* A loop stalled (or a worker woke late) at `now`: a strike, or loops run on the
 * caller alone for the next back-off (see FBN_STALL_NS, FBN_STRIKE_NS). The caller
 * owns the pool. */
static void fbn_back_off(int64_t now) {
    const int doubling = pool.backoff > 0 && now - pool.last_stall < 4 * pool.backoff;
    const int second = pool.strike_at != 0 && (now - pool.strike_at <= FBN_STRIKE_NS ||
                                               pool.threaded_loops - pool.strike_loop <=
                                                   FBN_STRIKE_LOOPS);
    if (!doubling && !second) {
        pool.strike_at = now;
        pool.strike_loop = pool.threaded_loops;
        return;
    }
    const int64_t b = doubling ? 2 * pool.backoff : 0;
    pool.backoff = b < FBN_BACKOFF_MIN_NS ? FBN_BACKOFF_MIN_NS
                   : b > FBN_BACKOFF_MAX_NS ? FBN_BACKOFF_MAX_NS : b;
    pool.last_stall = now;
    pool.alone_until = now + pool.backoff;
    pool.strike_at = 0;
}

int64_t fbn_pool_stall_at(int64_t now_ns, int64_t loops) {
    pool.threaded_loops += loops;
    fbn_back_off(now_ns);
    return pool.alone_until > now_ns ? pool.alone_until - now_ns : 0;
}

/* FASTBN_WAKE_VALUES from the environment (a count of values; 0: always wake), or
 * FBN_WAKE_VALUES: see fbn_pool_threads. */
static int64_t fbn_wake_values = FBN_WAKE_VALUES;
static pthread_once_t fbn_wake_once = PTHREAD_ONCE_INIT;
static void fbn_read_wake_values(void) {
    const char *text = getenv("FASTBN_WAKE_VALUES");
    char *end = NULL;
    if (!text || !*text) return;
    const long long v = strtoll(text, &end, 10);
    if (*end == '\0' && v >= 0) fbn_wake_values = (int64_t)v;
}

/* Why: a worker asleep (as after any pause of more than FBN_WORKER_SPIN_NS between
 * calls) takes tens of microseconds to run, often first on the caller's CPU (see
 * fbn_leave_cpu), which made a 2-thread call of 256x512 float32 values take 2-3x its
 * 1-thread time; with the worker awake the same call took 0.8x. Small calls that each
 * begin within a worker's spin of the last loop's end (a loop over calls) wake it: a
 * worker woken then is still awake at the next call. */
int fbn_pool_threads(int64_t values, int nthreads) {
    pthread_once(&fbn_wake_once, fbn_read_wake_values);
    if (nthreads <= 1 || values >= fbn_wake_values) return nthreads;
    const int64_t gap = fbn_now_ns() - __atomic_load_n(&pool.loop_end, __ATOMIC_RELAXED);
    const int64_t run = gap < FBN_WORKER_SPIN_NS
                            ? __atomic_add_fetch(&pool.small_run, 1, __ATOMIC_RELAXED)
                            : (__atomic_store_n(&pool.small_run, 0, __ATOMIC_RELAXED), 0);
    const int workers = __atomic_load_n(&pool.nworkers, __ATOMIC_RELAXED);
    if (run >= FBN_DENSE_LOOPS || (workers > 0 && LOAD(&pool.sleepers) < workers))
        return nthreads;
    return 1;
}

int64_t fbn_pool_wake_values(void) {
    pthread_once(&fbn_wake_once, fbn_read_wake_values);
    return fbn_wake_values;
}

static void fbn_pool_loop(int64_t ntiles, int nthreads, fbn_tile_fn fn, void *ctx);

void fbn_parallel_for(int64_t ntiles, int nthreads, fbn_tile_fn fn, void *ctx) {
    fbn_pool_loop(ntiles, nthreads, fn, ctx);
    __atomic_store_n(&pool.loop_end, fbn_now_ns(), __ATOMIC_RELAXED);
}

static void fbn_pool_loop(int64_t ntiles, int nthreads, fbn_tile_fn fn, void *ctx) {
    pthread_once(&fbn_fork_once, fbn_register_fork);
    if (nthreads > FBN_POOL_MAX) nthreads = FBN_POOL_MAX;
    if (ntiles < nthreads) nthreads = (int)(ntiles > 0 ? ntiles : 1);
    /* one thread, a loop too long for the word, or the pool busy with another
     * caller's loop: the caller runs it alone (same results) */
    if (nthreads <= 1 || (uint64_t)ntiles > FBN_LEFT_MASK ||
        __atomic_exchange_n(&pool.busy, 1, __ATOMIC_ACQUIRE)) {
        fbn_serial_for(ntiles, fn, ctx);
        return;
    }
    const int64_t start = fbn_now_ns();
    if (LOAD(&pool.late) && __atomic_exchange_n(&pool.late, 0, __ATOMIC_SEQ_CST)) {
        __atomic_add_fetch(&pool.late_loops, 1, __ATOMIC_RELAXED);
        fbn_back_off(start);
    }
    if (start < pool.alone_until && !LOAD(&pool.no_backoff)) { /* backing off after a stall (fields: owner only) */
        fbn_serial_for(ntiles, fn, ctx);
        pool.alone_loops++;
        __atomic_store_n(&pool.busy, 0, __ATOMIC_RELEASE);
        return;
    }
    fbn_start_workers(nthreads - 1);
    if (pool.nworkers == 0) {
        __atomic_store_n(&pool.busy, 0, __ATOMIC_RELEASE);
        fbn_serial_for(ntiles, fn, ctx);
        return;
    }
    pool.fn = fn;
    pool.ctx = ctx;
    pool.ntiles = ntiles;
    pool.threaded_loops++;
    STORE(&pool.done, 0);
    STORE(&pool.caller_cpu, fbn_this_cpu());
    STORE(&pool.published, fbn_now_ns());
    const uint64_t gen = (FBN_GEN(LOAD(&pool.word)) + 1) & 0xffff;
    STORE(&pool.word, gen << 48 | (uint64_t)nthreads << FBN_LEFT_BITS | (uint64_t)ntiles);
    pool.nudge = LOAD(&pool.sleepers);
    if (pool.nudge) fbn_event_notify(&pool.wake_seq);
    const int64_t published = fbn_now_ns(), cpu0 = fbn_cpu_ns(), queued0 = fbn_caller_queued_ns();
    fbn_run_tiles(0);
    const int64_t run_cpu = fbn_cpu_ns() - cpu0;
    /* every tile is claimed: wait for those the workers are running */
    const int64_t out_of_tiles = fbn_now_ns(), until = out_of_tiles + FBN_CALLER_SPIN_NS;
    int waited = 0, workers_queued = 0; /* see FBN_QUEUED_NS */
    for (int i = 1; LOAD(&pool.done) < ntiles; i++) {
        waited = 1;
        FBN_PAUSE();
        if (i % 64 == 0 && fbn_now_ns() > until) {
            const int64_t workers0 = fbn_workers_queued_ns(nthreads);
            STORE(&pool.caller_asleep, 1);
            for (;;) {
                const int seq = LOAD(&pool.finish_seq);
                if (LOAD(&pool.done) >= ntiles) break;
                fbn_event_wait(&pool.finish_seq, seq);
            }
            STORE(&pool.caller_asleep, 0);
            const int64_t workers1 = fbn_workers_queued_ns(nthreads);
            workers_queued = workers0 < 0 || workers1 < 0 || workers1 - workers0 > FBN_QUEUED_NS;
        }
    }
    const int64_t end = waited ? fbn_now_ns() : out_of_tiles;
#ifdef FBN_POOL_DEBUG
    if (end - start > 1000000)
        fprintf(stderr, "pool: %lld tiles publish %lld us run %lld us wait %lld us\n",
                (long long)ntiles, (long long)(published - start) / 1000,
                (long long)(out_of_tiles - published) / 1000, (long long)(end - out_of_tiles) / 1000);
#endif
    /* a worker ran tiles on the caller's CPU: no CPU was free for it */
    const int shared = LOAD(&pool.shared) == (int)(0x10000 | gen);
    pool.shared_loops += shared;
    int slow = (published - start) + (end - out_of_tiles) >
                   FBN_STALL_NS + (out_of_tiles - published) ||
               (out_of_tiles - published) - run_cpu > FBN_STALL_NS;
    for (int w = 1; w < nthreads && w <= pool.nworkers && !slow; w++) {
        const int64_t idle_at = __atomic_load_n(&pool.stat[w].idle_at, __ATOMIC_ACQUIRE);
        const int64_t tiles = __atomic_load_n(&pool.stat[w].tiles, __ATOMIC_RELAXED);
        if (__atomic_load_n(&pool.stat[w].gen, __ATOMIC_RELAXED) != gen || idle_at == 0 ||
            tiles == 0)
            continue;
        const int64_t mean = __atomic_load_n(&pool.stat[w].busy, __ATOMIC_RELAXED) / tiles;
        slow = out_of_tiles - idle_at > FBN_STALL_NS + 2 * mean;
    }
    pool.slow_loops += slow;
    if (slow && !shared && !workers_queued) { /* did the caller wait in a run queue? */
        const int64_t queued1 = fbn_caller_queued_ns();
        slow = queued0 < 0 || queued1 < 0 || queued1 - queued0 > FBN_QUEUED_NS;
        pool.stolen_loops += !slow;
    }
    if (shared || slow) fbn_back_off(end);
    __atomic_store_n(&pool.busy, 0, __ATOMIC_RELEASE);
}

int fbn_pool_set_backoff(int on) {
    return !__atomic_exchange_n(&pool.no_backoff, !on, __ATOMIC_SEQ_CST);
}

void fbn_pool_counters(int64_t *alone_loops, int64_t *shared_loops) {
    *alone_loops = __atomic_load_n(&pool.alone_loops, __ATOMIC_RELAXED);
    *shared_loops = __atomic_load_n(&pool.shared_loops, __ATOMIC_RELAXED);
}

void fbn_pool_late_counters(int64_t *late_wakes, int64_t *late_loops) {
    *late_wakes = __atomic_load_n(&pool.late_wakes, __ATOMIC_RELAXED);
    *late_loops = __atomic_load_n(&pool.late_loops, __ATOMIC_RELAXED);
}

void fbn_pool_slow_counters(int64_t *slow_loops, int64_t *stolen_loops) {
    *slow_loops = __atomic_load_n(&pool.slow_loops, __ATOMIC_RELAXED);
    *stolen_loops = __atomic_load_n(&pool.stolen_loops, __ATOMIC_RELAXED);
}

int64_t fbn_pool_moves(void) { return __atomic_load_n(&pool.moves, __ATOMIC_RELAXED); }

int64_t fbn_pool_loops(void) { return pool.threaded_loops; }

int fbn_pool_leave_cpu(int cpu) { return fbn_leave_cpu(cpu); }

int64_t fbn_pool_runnable_tasks(void) { return fbn_runnable_tasks(); }

const char *fbn_pool_kind(void) { return "pthreads"; }
int fbn_pool_max_threads(void) { return FBN_POOL_MAX; }

#elif defined(_OPENMP)

#include <limits.h>
#include <omp.h>

void fbn_parallel_for(int64_t ntiles, int nthreads, fbn_tile_fn fn, void *ctx) {
    if (nthreads <= 1 || ntiles <= 1 || ntiles > INT_MAX) {
        fbn_serial_for(ntiles, fn, ctx);
        return;
    }
    const int n = (int)ntiles; /* MSVC's OpenMP 2.0 loops over int */
    int t;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (t = 0; t < n; t++) fn(ctx, t, omp_get_thread_num());
}

int fbn_pool_set_backoff(int on) {
    (void)on;
    return 0;
}

void fbn_pool_counters(int64_t *alone_loops, int64_t *shared_loops) {
    *alone_loops = *shared_loops = 0;
}

void fbn_pool_late_counters(int64_t *late_wakes, int64_t *late_loops) {
    *late_wakes = *late_loops = 0;
}

void fbn_pool_slow_counters(int64_t *slow_loops, int64_t *stolen_loops) {
    *slow_loops = *stolen_loops = 0;
}

int64_t fbn_pool_moves(void) { return 0; }

int64_t fbn_pool_loops(void) { return 0; }

int fbn_pool_leave_cpu(int cpu) {
    (void)cpu;
    return -1;
}

int64_t fbn_pool_runnable_tasks(void) { return -1; }

int64_t fbn_pool_stall_at(int64_t now_ns, int64_t loops) {
    (void)now_ns;
    (void)loops;
    return -1;
}

int fbn_pool_threads(int64_t values, int nthreads) {
    (void)values; /* OpenMP's own workers: its wait policy decides */
    return nthreads;
}

int64_t fbn_pool_wake_values(void) { return -1; }

const char *fbn_pool_kind(void) { return "openmp"; }
int fbn_pool_max_threads(void) {
    const int n = omp_get_max_threads();
    return n < FBN_POOL_MAX ? n : FBN_POOL_MAX;
}

#else

void fbn_parallel_for(int64_t ntiles, int nthreads, fbn_tile_fn fn, void *ctx) {
    (void)nthreads;
    fbn_serial_for(ntiles, fn, ctx);
}

int fbn_pool_threads(int64_t values, int nthreads) {
    (void)values;
    return nthreads;
}

int64_t fbn_pool_wake_values(void) { return -1; }

int fbn_pool_set_backoff(int on) {
    (void)on;
    return 0;
}

void fbn_pool_counters(int64_t *alone_loops, int64_t *shared_loops) {
    *alone_loops = *shared_loops = 0;
}

void fbn_pool_late_counters(int64_t *late_wakes, int64_t *late_loops) {
    *late_wakes = *late_loops = 0;
}

void fbn_pool_slow_counters(int64_t *slow_loops, int64_t *stolen_loops) {
    *slow_loops = *stolen_loops = 0;
}

int64_t fbn_pool_moves(void) { return 0; }

int64_t fbn_pool_loops(void) { return 0; }

int fbn_pool_leave_cpu(int cpu) {
    (void)cpu;
    return -1;
}

int64_t fbn_pool_runnable_tasks(void) { return -1; }

int64_t fbn_pool_stall_at(int64_t now_ns, int64_t loops) {
    (void)now_ns;
    (void)loops;
    return -1;
}

const char *fbn_pool_kind(void) { return "none"; }
int fbn_pool_max_threads(void) { return 1; }

#endif
