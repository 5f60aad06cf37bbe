/* The entry point: check what keeps memory safe, pick threads and kernels, run the driver.

   The Python wrapper has already checked the call (refattn._checks) and says exactly what is
   wrong; the checks here are the last line, so that no call can make the kernel read or write
   out of bounds. They return REFATTN_EINVAL without saying more.

   Threads: how many a call may have is decided here, once (refattn_threads); the driver takes
   fewer when the call has fewer work items, and tells refattn_team_starts before it starts a
   team. The one state kept across calls is whether a team has run in this process, for the
   fork rule below. */
#include <stddef.h>

#ifdef _OPENMP
#include <omp.h>
#if !defined(_WIN32)
#include <pthread.h>
#define REFATTN_FORK_RULE 1
#endif
#endif

#include "internal.h"

/* A call never asks OpenMP for more than THREADS_PER_CPU threads per CPU this process may run
   on (its affinity mask, omp_get_num_procs), whatever num_threads or OMP_NUM_THREADS say. The
   kernel computes without waiting on anything, so threads beyond the CPUs only take turns on
   them, and each costs a stack (8 MiB of address space by default): libgomp exits the process
   when it cannot create one ("Thread creation failed"), with no error to return. Twice the
   CPUs leaves room to oversubscribe on purpose (the thread-count tests run 3 threads on 2
   CPUs) and keeps the stacks to two per CPU. */
#define THREADS_PER_CPU 2

#ifndef REFATTN_BUILD_FLAGS
#define REFATTN_BUILD_FLAGS "unknown"
#endif

static int tensor_ok(const refattn_tensor *t, int rows_contiguous) {
    if (!t->data) return 0;
    return !rows_contiguous || t->stride[3] == 1;
}

/* The checks every call takes, forward or backward: REFATTN_OK when the call is safe to run
   (its rows may still be none). */
static int check_call(const refattn_call *c) {
    if (!c) return REFATTN_EINVAL;
    if (c->B < 0 || c->Hq < 1 || c->Hkv < 1 || c->Lq < 0 || c->Lk < 0 || c->Dk < 1 || c->Dv < 0)
        return REFATTN_EINVAL;
    if (c->Hq % c->Hkv != 0) return REFATTN_EINVAL;
    if (c->dtype != REFATTN_FLOAT32 && c->dtype != REFATTN_FLOAT64 &&
        c->dtype != REFATTN_BFLOAT16 && c->dtype != REFATTN_FLOAT16)
        return REFATTN_EINVAL;
    if (c->causal < REFATTN_CAUSAL_NONE || c->causal > REFATTN_CAUSAL_BOTTOM_RIGHT)
        return REFATTN_EINVAL;
    if (c->window_left < -1 || c->window_right < -1 || !(c->softcap >= 0)) return REFATTN_EINVAL;
    if (c->isa < REFATTN_ISA_SCALAR || c->isa > REFATTN_ISA_AMX_BF16) return REFATTN_EINVAL;
    if (c->dtype != REFATTN_FLOAT64 && !refattn_isa_supported(c->isa)) return REFATTN_EISA;
    /* bfloat16 has its own kernels in scalar C, AVX-512 BF16 and AMX only (the wrapper converts
       it to float32 for the others) */
    if (c->dtype == REFATTN_BFLOAT16 && c->isa != REFATTN_ISA_SCALAR &&
        c->isa != REFATTN_ISA_AVX512_BF16 && c->isa != REFATTN_ISA_AMX_BF16)
        return REFATTN_EINVAL;
    if (c->B * c->Hq * c->Lq > 0 && !tensor_ok(&c->query, 1)) return REFATTN_EINVAL;
    if (c->B > 0 && c->Lk > 0 && (!tensor_ok(&c->key, 1) || (c->Dv > 0 && !tensor_ok(&c->value, 1))))
        return REFATTN_EINVAL;
    if (c->kv_lengths)
        for (int64_t b = 0; b < c->B; b++)
            if (c->kv_lengths[b] < 0 || c->kv_lengths[b] > c->Lk) return REFATTN_EINVAL;
    return REFATTN_OK;
}

int refattn_attention(const refattn_call *c) {
    const int status = check_call(c);
    if (status != REFATTN_OK) return status;
    const int64_t rows = c->B * c->Hq * c->Lq;
    if (rows == 0) return REFATTN_OK; /* nothing to compute or write */
    if (!c->out) return REFATTN_EINVAL;
    if (c->Dv == 0 && !c->lse && !c->weights) return REFATTN_OK; /* out is empty: no work */
    const int threads = refattn_threads(c->num_threads);
    if (c->dtype == REFATTN_FLOAT32) return refattn_flash_f32(c, c->isa, threads);
    if (c->dtype == REFATTN_BFLOAT16) return refattn_flash_bf16(c, c->isa, threads);
    if (c->dtype == REFATTN_FLOAT16) return refattn_flash_f16(c, c->isa, threads);
    return refattn_flash_f64(c, threads);
}

int refattn_attention_backward(const refattn_grad_call *g) {
    if (!g) return REFATTN_EINVAL;
    const refattn_call *c = g->call;
    const int status = check_call(c);
    if (status != REFATTN_OK) return status;
    if (c->dtype != REFATTN_FLOAT32 && c->dtype != REFATTN_FLOAT64) return REFATTN_EINVAL;
    const int64_t rows = c->B * c->Hq * c->Lq, keys = c->B * c->Hkv * c->Lk;
    if (rows == 0 && keys == 0) return REFATTN_OK; /* nothing to compute or write */
    if (rows > 0 && (!c->out || !c->lse || !g->grad_out || !g->grad_query)) return REFATTN_EINVAL;
    if (keys > 0 && (!g->grad_key || (c->Dv > 0 && !g->grad_value))) return REFATTN_EINVAL;
    if (c->bias.data && rows > 0 && keys > 0 && !g->grad_scores) return REFATTN_EINVAL;
    const int threads = refattn_threads(c->num_threads);
    if (c->dtype == REFATTN_FLOAT32) return refattn_backward_f32(g, c->isa, threads);
    return refattn_backward_f64(g, threads);
}

int refattn_isa_supported(int isa) {
    if (isa == REFATTN_ISA_SCALAR) return 1;
    if (isa == REFATTN_ISA_AVX2) return refattn_avx2_ops != NULL && refattn_cpu_has(isa);
    if (isa == REFATTN_ISA_AVX512) return refattn_avx512_ops != NULL && refattn_cpu_has(isa);
    if (isa == REFATTN_ISA_AVX512_BF16)
        return refattn_avx512_ops != NULL && refattn_avx512_bf16_ops != NULL && refattn_cpu_has(isa);
    if (isa == REFATTN_ISA_AMX_BF16)
        return refattn_avx512_ops != NULL && refattn_amx_bf16_ops != NULL && refattn_cpu_has(isa);
    return 0;
}

int refattn_isa_best(void) {
    if (refattn_isa_supported(REFATTN_ISA_AMX_BF16)) return REFATTN_ISA_AMX_BF16;
    if (refattn_isa_supported(REFATTN_ISA_AVX512_BF16)) return REFATTN_ISA_AVX512_BF16;
    if (refattn_isa_supported(REFATTN_ISA_AVX512)) return REFATTN_ISA_AVX512;
    if (refattn_isa_supported(REFATTN_ISA_AVX2)) return REFATTN_ISA_AVX2;
    return REFATTN_ISA_SCALAR;
}

/* Fork. libgomp's threads do not survive fork(), and a child that starts a team from the pool
   its parent left (the threads of the parent's last team, which the child does not have) waits
   for them forever. So once a team of 2 or more has run in this process, a child forked from
   it runs every call on the calling thread (as PyTorch does: a pthread_atfork child handler
   sets a flag, and the child uses one thread). A child forked before any team keeps threads.
   Flags, not locks: a fork can come from any thread at any time. */
#ifdef REFATTN_FORK_RULE
static int team_started; /* a team of 2 or more threads has run (or is about to) */
static int forked;       /* this process was forked after that: one thread per call */
static pthread_once_t fork_handler_once = PTHREAD_ONCE_INIT;

static void child_after_fork(void) {
    if (__atomic_load_n(&team_started, __ATOMIC_RELAXED))
        __atomic_store_n(&forked, 1, __ATOMIC_RELAXED);
}

static void register_fork_handler(void) { pthread_atfork(NULL, NULL, child_after_fork); }
#endif

void refattn_team_starts(int64_t threads) {
#ifdef REFATTN_FORK_RULE
    if (threads < 2 || __atomic_load_n(&team_started, __ATOMIC_ACQUIRE)) return;
    /* registered before the first team starts, so that no fork after it goes unseen */
    pthread_once(&fork_handler_once, register_fork_handler);
    __atomic_store_n(&team_started, 1, __ATOMIC_RELEASE);
#else
    (void)threads;
#endif
}

int refattn_threads(int num_threads) {
#ifdef _OPENMP
#ifdef REFATTN_FORK_RULE
    if (__atomic_load_n(&forked, __ATOMIC_RELAXED)) return 1;
#endif
    const int cap = THREADS_PER_CPU * omp_get_num_procs(); /* the CPUs of this thread's mask */
    const int want = num_threads > 0 ? num_threads : omp_get_max_threads();
    return want < 1 ? 1 : (want > cap ? cap : want);
#else
    (void)num_threads;
    return 1;
#endif
}

int refattn_openmp_version(void) {
#ifdef _OPENMP
    return _OPENMP;
#else
    return 0;
#endif
}

const char *refattn_build_info(void) {
#ifdef __VERSION__
    return "compiler " __VERSION__ "; flags " REFATTN_BUILD_FLAGS;
#else
    return "flags " REFATTN_BUILD_FLAGS;
#endif
}
