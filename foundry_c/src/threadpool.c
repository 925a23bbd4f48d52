/* threadpool.c - the persistent thread pool every CPU kernel runs on.
 *
 * fdy_parallel(fn, ctx, n_tasks) runs fn(ctx, task, thread) for task in [0, n_tasks) on the
 * calling thread plus the pool's workers.  The tasks are cut into one contiguous lane per
 * thread: a thread runs its own lane in order, then takes what is left of the others' (so a
 * kernel whose tasks are consecutive row ranges gives each thread one long stream through its
 * weights, which the hardware prefetchers follow, instead of interleaved short ones).  A task
 * is claimed with a compare-and-swap on its lane's 64-bit word holding the region's
 * generation (high half) and the lane's next task (low half), and a region is over when all
 * its tasks are done -- not when every worker has checked in: on a shared machine a worker
 * may be descheduled for a whole time slice, and the caller then runs the remaining tasks
 * itself instead of waiting for it.  A late worker's claim fails on the generation, so it
 * never runs a task of a region it did not see open.
 *
 * Stalls: when the caller, done with its own tasks, waits longer for a worker's task than it
 * spent working and more than FDY_STALL_NS, another process holds that worker's CPU (the
 * worker was preempted mid-task).  The caller then runs the next regions alone for a while
 * (FDY_SOLO_NS, doubling while stalls repeat right after): on a shared machine two threads
 * would otherwise run slower than one.  Workers spin briefly
 * on the word before sleeping on a condition variable, so back-to-back kernels (a token's
 * layers) do not pay a wake-up each.  The pool size comes from fdy_set_num_threads() or
 * PYFOUNDRY_NUM_THREADS, default: online CPUs.  Each thread owns a scratch buffer
 * (fdy_scratch) that kernels size before dispatching.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "threadpool.h"

#define FDY_MAX_THREADS 256
#define FDY_SPIN_ITERS 20000
#define FDY_CLOSED 0xffffffffu /* task field of a closed region (odd generation) */
#define FDY_STALL_NS 200000       /* a wait for workers this long (and longer than the own
                                     work) is a stall */
#define FDY_SOLO_NS 50000000      /* regions run by the caller alone after a stall */
#define FDY_SOLO_MAX_NS 800000000

typedef struct pool {
    pthread_mutex_t lock;      /* guards configuration and sleeping */
    pthread_cond_t wake;
    pthread_mutex_t run_lock;  /* one parallel region at a time */
    int n_threads;             /* including the caller */
    int n_workers_started;
    pthread_t workers[FDY_MAX_THREADS];
    /* generation << 32 (| FDY_CLOSED).  Even generations are open regions; the caller writes
     * the region below only while the generation is odd (closed). */
    _Alignas(64) _Atomic uint64_t claim;
    _Atomic(fdy_task_fn) fn;
    _Atomic(void *) ctx;
    _Atomic int64_t n_tasks;
    _Atomic int n_lanes;
    /* per lane: generation << 32 | next task of the lane (absolute index) */
    struct {
        _Alignas(64) _Atomic uint64_t next;
    } lane[FDY_MAX_THREADS];
    _Alignas(64) _Atomic int64_t done; /* tasks finished in the open region */
    _Alignas(64) _Atomic int stop;
    _Atomic int sleeping;
    /* stall handling (guarded by run_lock) */
    int64_t solo_until;        /* monotonic ns: regions before it run on the caller alone */
    int64_t solo_ns;           /* the length of the next solo period */
    /* per-thread scratch */
    void *scratch[FDY_MAX_THREADS];
    size_t scratch_size[FDY_MAX_THREADS];
} pool;

static pool fdy_pool = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .run_lock = PTHREAD_MUTEX_INITIALIZER,
    .n_threads = 0,
    .claim = ((uint64_t)1 << 32) | FDY_CLOSED,
};

static inline uint32_t gen_of(uint64_t st) { return (uint32_t)(st >> 32); }

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static inline int64_t lane_start(int64_t n, int lanes, int l) {
    return n * l / lanes;
}

/* run tasks of the region of generation g, own lane first, until none is left or the region
 * closed */
static void run_tasks(pool *p, uint32_t g, int thread) {
    const fdy_task_fn fn = atomic_load_explicit(&p->fn, memory_order_relaxed);
    void *const ctx = atomic_load_explicit(&p->ctx, memory_order_relaxed);
    const int64_t n = atomic_load_explicit(&p->n_tasks, memory_order_relaxed);
    const int lanes = atomic_load_explicit(&p->n_lanes, memory_order_relaxed);
    for (int k = 0; k < lanes; k++) {
        const int l = (thread + k) % lanes;
        const int64_t end = lane_start(n, lanes, l + 1);
        _Atomic uint64_t *w = &p->lane[l].next;
        uint64_t st = atomic_load_explicit(w, memory_order_acquire);
        for (;;) {
            if (gen_of(st) != g) {
                return; /* closed: every lane is done */
            }
            if ((int64_t)(uint32_t)st >= end) {
                break;
            }
            /* success proves the region was still open, so fn / ctx / n (read after seeing
             * it open; the release half keeps those reads before the claim) are its own */
            if (atomic_compare_exchange_weak_explicit(w, &st, st + 1, memory_order_acq_rel,
                                                      memory_order_acquire)) {
                fn(ctx, (int64_t)(uint32_t)st, thread);
                atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
                st = atomic_load_explicit(w, memory_order_acquire);
            }
        }
    }
}

static void *worker_main(void *arg) {
    int index = (int)(intptr_t)arg;
    pool *p = &fdy_pool;
    uint32_t seen = 0; /* the last open generation this thread worked on */
    for (;;) {
        uint64_t st;
        int spins = 0;
        for (;;) {
            st = atomic_load_explicit(&p->claim, memory_order_acquire);
            if ((gen_of(st) & 1u) == 0 && gen_of(st) != seen) {
                break;
            }
            if (atomic_load_explicit(&p->stop, memory_order_relaxed)) {
                return NULL;
            }
            if (++spins < FDY_SPIN_ITERS) {
#if defined(__x86_64__)
                __builtin_ia32_pause();
#endif
                continue;
            }
            pthread_mutex_lock(&p->lock);
            atomic_fetch_add(&p->sleeping, 1);
            for (;;) {
                st = atomic_load(&p->claim);
                if (((gen_of(st) & 1u) == 0 && gen_of(st) != seen) || atomic_load(&p->stop)) {
                    break;
                }
                pthread_cond_wait(&p->wake, &p->lock);
            }
            atomic_fetch_sub(&p->sleeping, 1);
            pthread_mutex_unlock(&p->lock);
            spins = 0;
        }
        seen = gen_of(st);
        if (atomic_load(&p->stop)) {
            return NULL;
        }
        if (index < p->n_threads) {
            run_tasks(p, seen, index);
        }
    }
}

static int default_threads(void) {
    const char *env = getenv("PYFOUNDRY_NUM_THREADS");
    if (env && *env) {
        long v = strtol(env, NULL, 10);
        if (v >= 1 && v <= FDY_MAX_THREADS) {
            return (int)v;
        }
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) {
        n = 1;
    }
    return n > FDY_MAX_THREADS ? FDY_MAX_THREADS : (int)n;
}

static void stop_workers(pool *p) {
    if (p->n_workers_started == 0) {
        return;
    }
    atomic_store(&p->stop, 1);
    pthread_mutex_lock(&p->lock);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 1; i <= p->n_workers_started; i++) {
        pthread_join(p->workers[i], NULL);
    }
    p->n_workers_started = 0;
    atomic_store(&p->stop, 0);
}

/* start workers 1..n-1 (thread 0 is the caller); call with run_lock held */
static fdy_status ensure_started(pool *p) {
    if (p->n_threads == 0) {
        p->n_threads = default_threads();
    }
    if (p->n_workers_started == p->n_threads - 1) {
        return FDY_OK;
    }
    stop_workers(p);
    for (int i = 1; i < p->n_threads; i++) {
        if (pthread_create(&p->workers[i], NULL, worker_main, (void *)(intptr_t)i) != 0) {
            /* run with what we have */
            p->n_threads = i;
            break;
        }
        p->n_workers_started = i;
    }
    return FDY_OK;
}

fdy_status fdy_set_num_threads(int n) {
    if (n < 1 || n > FDY_MAX_THREADS) {
        return fdy_fail(FDY_ERR_INVALID, "number of threads must be in [1, %d], got %d",
                        FDY_MAX_THREADS, n);
    }
    pthread_mutex_lock(&fdy_pool.run_lock);
    fdy_pool.n_threads = n;
    fdy_status s = ensure_started(&fdy_pool);
    pthread_mutex_unlock(&fdy_pool.run_lock);
    return s;
}

int fdy_get_num_threads(void) {
    if (fdy_pool.n_threads == 0) {
        pthread_mutex_lock(&fdy_pool.run_lock);
        ensure_started(&fdy_pool);
        pthread_mutex_unlock(&fdy_pool.run_lock);
    }
    return fdy_pool.n_threads;
}

void fdy_parallel(fdy_task_fn fn, void *ctx, int64_t n_tasks) {
    pool *p = &fdy_pool;
    if (n_tasks <= 0) {
        return;
    }
    /* the task index is the low half of the claim word */
    const int64_t max_tasks = (int64_t)FDY_CLOSED - 1;
    pthread_mutex_lock(&p->run_lock);
    ensure_started(p);
    const int64_t t0 = p->n_threads > 1 && n_tasks > 1 ? now_ns() : 0;
    if (n_tasks == 1 || p->n_threads == 1 || n_tasks > max_tasks || t0 < p->solo_until) {
        for (int64_t t = 0; t < n_tasks; t++) {
            fn(ctx, t, 0);
        }
        pthread_mutex_unlock(&p->run_lock);
        return;
    }
    atomic_store_explicit(&p->fn, fn, memory_order_relaxed);
    atomic_store_explicit(&p->ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&p->n_tasks, n_tasks, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    const uint32_t g = gen_of(atomic_load_explicit(&p->claim, memory_order_relaxed)) + 1u;
    const int lanes = p->n_threads;
    atomic_store_explicit(&p->n_lanes, lanes, memory_order_relaxed);
    for (int l = 0; l < lanes; l++) {
        atomic_store_explicit(&p->lane[l].next,
                              (uint64_t)g << 32 | (uint64_t)lane_start(n_tasks, lanes, l),
                              memory_order_relaxed);
    }
    /* open: seq_cst so that the read of `sleeping` below cannot pass it (a worker going to
     * sleep increments `sleeping` and then re-reads the claim word) */
    atomic_store(&p->claim, (uint64_t)g << 32);
    if (atomic_load(&p->sleeping)) {
        pthread_mutex_lock(&p->lock);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
    }
    run_tasks(p, g, 0);
    /* wait for the tasks other threads claimed: spin briefly, then yield so a descheduled
     * worker can finish (on a loaded machine, spinning for it would only burn its slice) */
    int64_t t1 = 0;
    for (int spins = 0; atomic_load_explicit(&p->done, memory_order_acquire) < n_tasks;
         spins++) {
        if (spins < 2000) {
#if defined(__x86_64__)
            __builtin_ia32_pause();
#endif
        } else {
            if (!t1) {
                t1 = now_ns();
            }
            sched_yield();
        }
    }
    if (t1) { /* waited past the spins: a stall? */
        const int64_t t2 = now_ns();
        if (t2 - t1 > FDY_STALL_NS && t2 - t1 > t1 - t0) {
            /* a stall soon after a solo period ended: the other process is still there */
            const int recent = p->solo_until && t0 - p->solo_until < p->solo_ns;
            p->solo_ns = !p->solo_ns ? FDY_SOLO_NS
                         : recent    ? (p->solo_ns * 2 < FDY_SOLO_MAX_NS ? p->solo_ns * 2
                                                                         : FDY_SOLO_MAX_NS)
                                     : FDY_SOLO_NS;
            p->solo_until = t2 + p->solo_ns;
        }
    }
    /* close (odd generation): late workers' claims fail from here on */
    atomic_store_explicit(&p->claim, ((uint64_t)(g + 1u) << 32) | FDY_CLOSED,
                          memory_order_release);
    for (int l = 0; l < lanes; l++) {
        atomic_store_explicit(&p->lane[l].next, ((uint64_t)(g + 1u) << 32) | FDY_CLOSED,
                              memory_order_release);
    }
    pthread_mutex_unlock(&p->run_lock);
}

fdy_status fdy_scratch_reserve(size_t bytes) {
    pool *p = &fdy_pool;
    int n = fdy_get_num_threads();
    pthread_mutex_lock(&p->run_lock);
    for (int i = 0; i < n; i++) {
        if (p->scratch_size[i] < bytes) {
            void *m = NULL;
            size_t sz = bytes < 4096 ? 4096 : bytes;
            if (posix_memalign(&m, 64, sz) != 0) {
                pthread_mutex_unlock(&p->run_lock);
                return fdy_fail(FDY_ERR_NOMEM, "cannot allocate %zu bytes of kernel scratch",
                                bytes);
            }
            free(p->scratch[i]);
            p->scratch[i] = m;
            p->scratch_size[i] = sz;
        }
    }
    pthread_mutex_unlock(&p->run_lock);
    return FDY_OK;
}

void *fdy_scratch(int thread) {
    return fdy_pool.scratch[thread];
}
