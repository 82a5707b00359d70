/* Where a sleeping worker wakes after the process paused: the thread pool's case
 * (src_c/parallel.c: fbn_caller_nudge, fbn_leave_caller_cpu) with no fastbn code.
 * A caller sleeps `pause` ms, wakes one worker (a futex, as the pool does), then
 * stays busy 600 us as a kernel call would; the worker, once it runs, records its
 * CPU and when it started, then works 300 us and sleeps again (after a 100 us spin,
 * as the pool's workers do). With `nudge` 1, the caller yields its CPU once 30 us
 * in if the worker has not started, and a worker that finds itself on the caller's
 * CPU narrows its affinity off it (then restores it), as the pool does now. Prints
 * the median and 90th percentile of the wake-up's latency ("never": not within
 * the caller's 600 us) and how often the worker ran on the caller's CPU. Linux only.
 *
 *     cc -O2 -pthread bench/wake_placement.c -o /tmp/wake_placement
 *     for p in 0 2 20; do /tmp/wake_placement $p 0; /tmp/wake_placement $p 1; done
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define CALLS 40
#define CALL_NS 600000
#define NEVER INT64_MAX

static _Atomic int seq, caller_cpu, worker_cpu;
static _Atomic int64_t started;
static int nudge;

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void busy_ns(int64_t ns) {
    const int64_t t0 = now_ns();
    while (now_ns() - t0 < ns) {
    }
}

static void *worker(void *arg) {
    (void)arg;
    cpu_set_t all;
    sched_getaffinity(0, sizeof all, &all);
    for (int seen = 0;;) {
        const int64_t until = now_ns() + 100000;
        while (atomic_load(&seq) == seen && now_ns() < until) __builtin_ia32_pause();
        while (atomic_load(&seq) == seen)
            syscall(SYS_futex, &seq, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
        seen = atomic_load(&seq);
        const int cpu = atomic_load(&caller_cpu);
        if (nudge && sched_getcpu() == cpu && CPU_COUNT(&all) > 1) {
            cpu_set_t others = all;
            CPU_CLR(cpu, &others);
            sched_setaffinity(0, sizeof others, &others);
            sched_setaffinity(0, sizeof all, &all);
        }
        atomic_store(&worker_cpu, sched_getcpu());
        atomic_store(&started, now_ns());
        busy_ns(300000);
    }
    return NULL;
}

static int by_value(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void print_us(const char *what, int64_t ns) {
    if (ns == NEVER)
        printf(" %s never", what);
    else
        printf(" %s %.1f us", what, ns / 1e3);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s PAUSE_MS NUDGE(0|1)\n", argv[0]);
        return 2;
    }
    const double pause_ms = atof(argv[1]);
    nudge = atoi(argv[2]);
    pthread_t th;
    pthread_create(&th, NULL, worker, NULL);
    int64_t latency[CALLS];
    int shared = 0;
    for (int i = 0; i < CALLS; i++) {
        const struct timespec pause = {0, (long)(pause_ms * 1e6)};
        nanosleep(&pause, NULL);
        atomic_store(&started, 0);
        const int64_t t0 = now_ns();
        const int cpu = sched_getcpu();
        atomic_store(&caller_cpu, cpu);
        atomic_fetch_add(&seq, 1);
        syscall(SYS_futex, &seq, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
        int yielded = 0;
        while (now_ns() - t0 < CALL_NS) {
            if (nudge && !yielded && now_ns() - t0 > 30000 && !atomic_load(&started)) {
                sched_yield();
                yielded = 1;
            }
        }
        const int64_t s = atomic_load(&started);
        latency[i] = s ? s - t0 : NEVER;
        shared += s && atomic_load(&worker_cpu) == cpu;
        busy_ns(300000); /* the worker's share ends before the next pause */
    }
    qsort(latency, CALLS, sizeof latency[0], by_value);
    printf("pause %g ms, nudge %d: wake-up latency", pause_ms, nudge);
    print_us("median", latency[CALLS / 2]);
    print_us("p90", latency[CALLS * 9 / 10]);
    printf("; worker on the caller's CPU in %d of %d calls\n", shared, CALLS);
    return 0;
}
