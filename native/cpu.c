/* Which instruction sets this CPU and its OS can run, asked once at run time: AVX2 + FMA,
   AVX-512 F/DQ/BW/VL, AVX-512 with AVX512_BF16 (which adds no register state of its own), and
   that with AMX-TILE and AMX-BF16 (whose 8 KB of tile data Linux saves only for a process that
   asked for it: arch_prctl(ARCH_REQ_XCOMP_PERM), made here, once).

   A CPU flag is not enough: AVX and AVX-512 registers are usable only when the OS saves their
   state on a context switch, which XGETBV(0) reports (XCR0). The build never assumes the
   build machine's CPU: the SIMD kernels are compiled with per-file target pragmas and only
   called after this check says yes. */
#include "internal.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* Linux: ask for the AMX tile data state for this process (every thread of it); 1 if granted. */
static int amx_permitted(void) {
#if defined(__linux__) && defined(SYS_arch_prctl)
    const long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
    return 0;
#endif
}

static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static int detect(int isa) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
    const int f16c = (c >> 29) & 1; /* vcvtph2ps, for float16: on every CPU with AVX2 */
    if (!osxsave || !avx) return 0;
    const uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return 0; /* the OS saves SSE and AVX (YMM) state */
    if (__get_cpuid_max(0, 0) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    const unsigned leaf7_subleaves = a; /* the highest subleaf of leaf 7 */
    const int avx2 = (b >> 5) & 1;
    if (isa == REFATTN_ISA_AVX2) return avx2 && fma && f16c;
    const int f = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
    /* ... and the opmask and upper ZMM state (XCR0 bits 5, 6, 7) */
    const int avx512 = avx2 && fma && f16c && f && dq && bw && vl && (xcr0 & 0xE0) == 0xE0;
    if (isa == REFATTN_ISA_AVX512) return avx512;
    const int amx_tile = (d >> 24) & 1, amx_bf16 = (d >> 22) & 1; /* leaf 7, subleaf 0, EDX */
    /* AVX512_BF16 (vdpbf16ps, vcvtneps2bf16): leaf 7, subleaf 1, EAX bit 5 */
    if (!avx512 || leaf7_subleaves < 1) return 0;
    __cpuid_count(7, 1, a, b, c, d);
    const int avx512_bf16 = (a >> 5) & 1;
    if (isa == REFATTN_ISA_AVX512_BF16) return avx512_bf16;
    if (isa == REFATTN_ISA_AMX_BF16) {
        /* ... the tile configuration and data state saved by the OS (XCR0 bits 17, 18), and
           this process allowed to use it */
        const int tile_state = (xcr0 & 0x60000) == 0x60000;
        return avx512_bf16 && amx_tile && amx_bf16 && tile_state && amx_permitted();
    }
    return 0;
}
#else
static int detect(int isa) {
    (void)isa;
    return 0;
}
#endif

int refattn_cpu_has(int isa) {
    /* Benign race: every thread computes the same answer. */
    static volatile int cached[5] = {-1, -1, -1, -1, -1};
    if (isa == REFATTN_ISA_SCALAR) return 1;
    if (isa < 0 || isa > REFATTN_ISA_AMX_BF16) return 0;
    if (cached[isa] < 0) cached[isa] = detect(isa);
    return cached[isa];
}
