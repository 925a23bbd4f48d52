/* threadpool.c - the persistent thread pool every CPU kernel runs on.
 *
 * fdy_parallel(fn, ctx, n_tasks) runs fn(ctx, task, thread) for task in [0, n_tasks) on the
 * calling thread plus the pool's workers.  Tasks are handed out with one atomic counter (no
 * locks); workers spin briefly on a generation number before sleeping on a condition
 * variable, so back-to-back kernels (a token's layers) do not pay a wake-up each.  The pool
 * size comes from fdy_set_num_threads() or PYFOUNDRY_NUM_THREADS, default: online CPUs.
 * Each thread owns a scratch buffer (fdy_scratch) that kernels size before dispatching.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "threadpool.h"

#define FDY_MAX_THREADS 256
#define FDY_SPIN_ITERS 20000

typedef struct pool {
    pthread_mutex_t lock;      /* guards configuration and sleeping */
    pthread_cond_t wake;
    pthread_mutex_t run_lock;  /* one parallel region at a time */
    int n_threads;             /* including the caller */
    int n_workers_started;
    pthread_t workers[FDY_MAX_THREADS];
    _Atomic uint64_t generation;
    _Atomic int64_t next_task;
    _Atomic int active;        /* workers still inside the current region */
    _Atomic int stop;
    uint64_t start_generation; /* generation when the workers were created */
    fdy_task_fn fn;
    void *ctx;
    int64_t n_tasks;
    int sleeping;
    /* per-thread scratch */
    void *scratch[FDY_MAX_THREADS];
    size_t scratch_size[FDY_MAX_THREADS];
} pool;

static pool fdy_pool = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .run_lock = PTHREAD_MUTEX_INITIALIZER,
    .n_threads = 0,
};

static void run_tasks(pool *p, int thread) {
    for (;;) {
        int64_t t = atomic_fetch_add_explicit(&p->next_task, 1, memory_order_relaxed);
        if (t >= p->n_tasks) {
            break;
        }
        p->fn(p->ctx, t, thread);
    }
}

static void *worker_main(void *arg) {
    int index = (int)(intptr_t)arg;
    pool *p = &fdy_pool;
    /* not the current value: a region may already have been posted before this thread ran */
    uint64_t seen = p->start_generation;
    for (;;) {
        uint64_t g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen) {
            if (atomic_load(&p->stop)) {
                return NULL;
            }
            if (++spins < FDY_SPIN_ITERS) {
#if defined(__x86_64__)
                __builtin_ia32_pause();
#endif
                continue;
            }
            pthread_mutex_lock(&p->lock);
            p->sleeping++;
            while (atomic_load(&p->generation) == seen && !atomic_load(&p->stop)) {
                pthread_cond_wait(&p->wake, &p->lock);
            }
            p->sleeping--;
            pthread_mutex_unlock(&p->lock);
            spins = 0;
        }
        seen = g;
        if (atomic_load(&p->stop)) {
            return NULL;
        }
        if (index < p->n_threads) {
            run_tasks(p, index);
        }
        atomic_fetch_sub_explicit(&p->active, 1, memory_order_release);
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
    p->start_generation = atomic_load(&p->generation);
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
    pthread_mutex_lock(&p->run_lock);
    ensure_started(p);
    if (n_tasks == 1 || p->n_threads == 1) {
        for (int64_t t = 0; t < n_tasks; t++) {
            fn(ctx, t, 0);
        }
        pthread_mutex_unlock(&p->run_lock);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store(&p->next_task, 0);
    atomic_store(&p->active, p->n_workers_started);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    if (p->sleeping) {
        pthread_mutex_lock(&p->lock);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
    }
    run_tasks(p, 0);
    /* wait for the workers: spin briefly, then yield so a descheduled worker can finish
     * (on a loaded machine, spinning for it would only burn its time slice) */
    for (int spins = 0; atomic_load_explicit(&p->active, memory_order_acquire) > 0; spins++) {
        if (spins < 2000) {
#if defined(__x86_64__)
            __builtin_ia32_pause();
#endif
        } else {
            sched_yield();
        }
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
