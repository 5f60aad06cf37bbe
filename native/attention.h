/* refattn native core: scaled dot-product attention on the CPU, FlashAttention-2 style.

   What it does: out = softmax(softcap(Q·Kᵀ·scale) + bias, over visible keys)·V for float32
   (the fast path: AVX-512, AVX2+FMA or portable scalar code, chosen at run time), bfloat16
   (AMX, AVX-512 BF16 or portable scalar code: products and softmax in float32, P rounded to
   bfloat16 before P·V, out in bfloat16), float16 (AVX-512 or AVX2 widening by F16C, or
   portable scalar code: products, softmax and P·V in float32, out in float16) and float64
   (portable code), with
   every mask of refattn.reference.attention, GQA, Dk != Dv, lse and weights outputs, threads
   through OpenMP.
   What it does not do: validate dtypes or shapes beyond what keeps memory safe (the Python
   wrapper checks the call with refattn._checks first), allocate the outputs, bfloat16 on the
   AVX2 or AVX-512 float32 kernels (the wrapper converts it to float32 for those), or print,
   abort or keep any state between calls.

   Shape letters, as everywhere in refattn:
       B   batch (the wrapper flattens B... into one axis)     Hq, Hkv  query, key/value heads
       Lq  query length          Lk  key/value length          Dk, Dv   key, value head dims

   Everything between the cdef markers below is read by build.py as the cffi cdef, with each
   #define's value replaced by `...`: the header is the one statement of the binding. */
#ifndef REFATTN_ATTENTION_H
#define REFATTN_ATTENTION_H

#include <stdint.h>

/* cdef begin */

/* Status codes: 0 is success; the Python wrapper turns the others into exceptions. */
#define REFATTN_OK 0
#define REFATTN_ENOMEM 1          /* an allocation failed: MemoryError */
#define REFATTN_EINVAL 2          /* a size, stride or option the kernel cannot take */
#define REFATTN_EISA 3            /* the instruction set asked for is not usable here */

/* Instruction sets: what the float32, bfloat16 and float16 kernels may use. */
#define REFATTN_ISA_SCALAR 0      /* portable C, the fallback and the baseline of every check */
#define REFATTN_ISA_AVX2 1        /* AVX2 + FMA + F16C, 8 floats per vector */
#define REFATTN_ISA_AVX512 2      /* AVX-512 F/DQ/BW/VL, 16 floats per vector */
#define REFATTN_ISA_AVX512_BF16 3 /* ... and AVX512_BF16 (vdpbf16ps); float32 as AVX512 */
#define REFATTN_ISA_AMX_BF16 4    /* ... and AMX-TILE, AMX-BF16 (tdpbf16ps); float32 as AVX512 */

#define REFATTN_FLOAT32 4         /* dtype codes: the element size in bytes, */
#define REFATTN_FLOAT64 8
#define REFATTN_BFLOAT16 2
#define REFATTN_FLOAT16 3         /* but for the other 2-byte type */

#define REFATTN_CAUSAL_NONE 0
#define REFATTN_CAUSAL_TOP_LEFT 1       /* key j visible to query i iff j <= i */
#define REFATTN_CAUSAL_BOTTOM_RIGHT 2   /* iff j <= i + Lk - Lq */

/* One array seen as four axes (B, H, L, last): the address of element (0, 0, 0, 0) and the
   element strides of each axis. Strides may be negative, and 0 on a broadcast axis. When the
   batch dims of an array cannot be flattened into one stride (a broadcast mask over some of
   them, say), batch_offsets holds the element offset of each of the B batch entries instead
   of b·stride[0]; otherwise it is NULL. */
typedef struct refattn_tensor {
    const void *data;
    int64_t stride[4];
    const int64_t *batch_offsets;
} refattn_tensor;

/* One attention call. Outputs first, then inputs, then sizes and options. */
typedef struct refattn_call {
    /* outputs: C-contiguous, in the compute dtype (float32 for bfloat16), out in the input's */
    void *out;                 /* (B, Hq, Lq, Dv) */
    void *lse;                 /* (B, Hq, Lq), or NULL when not wanted */
    void *weights;             /* (B, Hq, Lq, Lk), or NULL when not wanted */
    /* inputs: query, key and value need stride[3] == 1 (rows of contiguous elements) */
    refattn_tensor query;      /* (B, Hq, Lq, Dk) */
    refattn_tensor key;        /* (B, Hkv, Lk, Dk); query head h uses kv head h / (Hq / Hkv) */
    refattn_tensor value;      /* (B, Hkv, Lk, Dv) */
    refattn_tensor mask;       /* uint8 0/1 (B, Hq, Lq, Lk), 1 = may attend; data NULL: none */
    refattn_tensor bias;       /* compute dtype (B, Hq, Lq, Lk), -inf hides; data NULL: none */
    const int64_t *kv_lengths; /* (B): keys j >= kv_lengths[b] are padding; NULL: none */
    /* sizes */
    int64_t B, Hq, Hkv, Lq, Lk, Dk, Dv;
    /* options */
    int dtype;                 /* REFATTN_FLOAT32, REFATTN_FLOAT64; or REFATTN_BFLOAT16 (query,
                                  key, value and out; bias, lse, weights float32) with isa
                                  REFATTN_ISA_SCALAR, _AVX512_BF16 or _AMX_BF16; or
                                  REFATTN_FLOAT16 (likewise) with any isa */
    int causal;                /* REFATTN_CAUSAL_* */
    int64_t window_left;       /* key j visible iff j >= i + offset - window_left; -1: unbounded */
    int64_t window_right;      /* ... and j <= i + offset + window_right; -1: unbounded */
    double scale;              /* multiplies q·k */
    double softcap;            /* > 0: scores become softcap·tanh(scores/softcap); 0: none */
    int num_threads;           /* <= 0: OpenMP's default; at most refattn_threads() */
    int isa;                   /* REFATTN_ISA_*, for the 4- and 2-byte dtypes; float64 always runs
                                  portable C */
} refattn_call;

/* Computes one call. Returns REFATTN_OK, or a status code with the outputs unspecified. */
int refattn_attention(const refattn_call *call);

/* The gradients of one call (the backward pass), for float32 and float64: a loss's gradients
   dO and dlse with respect to out and lse carried back to query, key, value and the scores.
   Outputs first, then inputs. Every array here is C-contiguous, in the compute dtype. */
typedef struct refattn_grad_call {
    /* outputs */
    void *grad_query;          /* dQ (B, Hq, Lq, Dk) */
    void *grad_key;            /* dK (B, Hkv, Lk, Dk): summed over each kv head's group */
    void *grad_value;          /* dV (B, Hkv, Lk, Dv) */
    void *grad_scores;         /* dS (B, Hq, Lq, Lk), zeros on entry, or NULL: the bias's
                                  gradient before it is summed to the bias's shape; only the
                                  pairs some row's tiles reach are written */
    /* inputs */
    const refattn_call *call;  /* the forward call: query, key, value, masks and options, its
                                  out (B, Hq, Lq, Dv) and lse (B, Hq, Lq) as the forward wrote
                                  them (inputs here; weights is not read) */
    const void *grad_out;      /* dO (B, Hq, Lq, Dv) */
    const void *grad_lse;      /* dlse (B, Hq, Lq), or NULL: 0 */
} refattn_grad_call;

/* Computes one backward call: dtype REFATTN_FLOAT32 (isa as the forward's) or REFATTN_FLOAT64.
   Results are the same bit for bit whatever num_threads. Returns REFATTN_OK, or a status code
   with the outputs unspecified. */
int refattn_attention_backward(const refattn_grad_call *call);

/* 1 if this build has kernels for `isa` and this CPU and OS can run them, else 0. */
int refattn_isa_supported(int isa);

/* The fastest instruction set refattn_isa_supported accepts. */
int refattn_isa_best(void);

/* The threads a call asking for num_threads runs on at most; num_threads <= 0 asks for
   OpenMP's default (omp_get_max_threads: OMP_NUM_THREADS, else one per CPU). Never more than
   2 per CPU this process may run on (its affinity mask: omp_get_num_procs); 1 in a process
   forked after this one ran a team of threads (libgomp's threads do not survive fork), and 1
   in a build without OpenMP. A call takes fewer when it has fewer work items, or little work. */
int refattn_threads(int num_threads);

/* The _OPENMP date of the OpenMP the core was built with (e.g. 201511), 0 without OpenMP. */
int refattn_openmp_version(void);

/* The compiler and the flags the core was built with, as one line of text. */
const char *refattn_build_info(void);

/* cdef end */

#endif
