/* threadpool.h - internal interface of the persistent thread pool (threadpool.c). */
#ifndef FDY_THREADPOOL_H
#define FDY_THREADPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "foundry.h"

typedef void (*fdy_task_fn)(void *ctx, int64_t task, int thread);

/* run fn for every task in [0, n_tasks) on the pool; returns when all are done.  Not
 * reentrant: a task must not call fdy_parallel. */
void fdy_parallel(fdy_task_fn fn, void *ctx, int64_t n_tasks);
/* make every thread's scratch buffer at least `bytes` long (64-byte aligned) */
fdy_status fdy_scratch_reserve(size_t bytes);
void *fdy_scratch(int thread);

#endif
