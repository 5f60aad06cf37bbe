"""Build refattn._native: the C core in native/, bound with cffi in out-of-line API mode.

pip runs this through setup.py (`cffi_modules`); `python build.py` builds it in place.

Environment switches:
    REFATTN_NO_OPENMP=1   build without OpenMP: every call runs on one thread.
    REFATTN_SANITIZE=1    build with AddressSanitizer and UndefinedBehaviorSanitizer (no
                          recovery: the first report aborts). Run the tests with libasan
                          preloaded, as the README's "Sanitizers" section shows.
"""

import os
import platform
import re
import tempfile
from pathlib import Path

from cffi import FFI

# The compiler setuptools will build the extension with (distutils left the standard library
# in Python 3.12; setuptools carries it).
from setuptools._distutils.ccompiler import new_compiler
from setuptools._distutils.errors import CompileError, LinkError
from setuptools._distutils.sysconfig import customize_compiler

no_openmp = os.environ.get("REFATTN_NO_OPENMP", "0") == "1"
sanitize = os.environ.get("REFATTN_SANITIZE", "0") == "1"

HEADER = Path("native") / "attention.h"


def _compiles(code: str, flags: list[str], *, link: bool = False) -> bool:
    """Does the compiler that will build the extension take this code with these flags?"""
    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "probe.c"
        source.write_text(code)
        try:
            objects = compiler.compile([str(source)], output_dir=tmp, extra_postargs=flags)
            if link:
                compiler.link_executable(objects, str(Path(tmp) / "probe"), extra_postargs=flags)
        except (CompileError, LinkError):
            return False
    return True


# Feature detection.
#
# SIMD: the AVX2 and AVX-512 kernels are compiled with per-file target pragmas, never with
# -mavx2/-march=native for the whole build, so the extension runs on any x86-64 CPU and picks
# its kernels at run time (CPUID + XGETBV). All the build needs is a compiler that knows the
# target names and intrinsics; one that does not (or another architecture) builds without them,
# and the scalar kernels do the work.
x86_64 = platform.machine().lower() in ("x86_64", "amd64")
_AVX512_PROBE = """
#include <immintrin.h>
__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))
__m512 probe(__m512 a, __m512 b) { return _mm512_scalef_ps(_mm512_fmadd_ps(a, b, a), b); }
"""
# The bfloat16 kernels need AVX512_BF16 on top: vdpbf16ps and vcvtneps2bf16 (GCC 10, clang 9).
_AVX512_BF16_PROBE = """
#include <immintrin.h>
__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,avx2,fma")))
__m512 probe(__m512 a, __m512bh b) {
    return _mm512_dpbf16_ps(a, b, (__m512bh)_mm512_cvtne2ps_pbh(a, a));
}
"""
_AVX2_PROBE = """
#include <immintrin.h>
__attribute__((target("avx2,fma")))
__m256 probe(__m256 a, __m256 b) { return _mm256_fmadd_ps(a, b, a); }
"""
have_avx512 = x86_64 and _compiles(_AVX512_PROBE, [])
have_avx512_bf16 = have_avx512 and _compiles(_AVX512_BF16_PROBE, [])
# AMX: tdpbf16ps and the tile intrinsics (GCC 11, clang 12).
_AMX_PROBE = """
#include <immintrin.h>
__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bf16")))
void probe(const void *config, const void *a, void *c) {
    _tile_loadconfig(config);
    _tile_loadd(4, a, 64);
    _tile_zero(0);
    _tile_loadd(5, a, 64);
    _tile_dpbf16ps(0, 4, 5);
    _tile_stored(0, c, 64);
    _tile_release();
}
"""
have_avx2 = x86_64 and _compiles(_AVX2_PROBE, [])
have_amx = have_avx512_bf16 and _compiles(_AMX_PROBE, [])

# OpenMP: GCC and most clangs take -fopenmp; Apple's clang has no OpenMP runtime, so try to
# compile *and link* a program that uses it, and build without threads when that fails.
_OPENMP_PROBE = """
#include <omp.h>
int main(void) { return omp_get_max_threads() < 1; }
"""
openmp = not no_openmp and _compiles(_OPENMP_PROBE, ["-fopenmp"], link=True)

compile_args = ["-O3", "-fno-strict-aliasing"]
link_args = []
if openmp:
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")
else:
    compile_args.append("-Wno-unknown-pragmas")  # the omp pragmas stay, as plain serial code
if sanitize:
    compile_args = [
        *(a for a in compile_args if a != "-O3"),
        "-O1",
        "-g",
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=undefined",
        "-fno-omit-frame-pointer",
    ]
    link_args.append("-fsanitize=address,undefined")

defines = [("REFATTN_BUILD_FLAGS", '"{}"'.format(" ".join(compile_args)))]
if not have_avx512:
    defines.append(("REFATTN_NO_AVX512", "1"))
if not have_avx512_bf16:
    defines.append(("REFATTN_NO_AVX512_BF16", "1"))
if not have_amx:
    defines.append(("REFATTN_NO_AMX", "1"))
if not have_avx2:
    defines.append(("REFATTN_NO_AVX2", "1"))

# setuptools skips the build when the extension is newer than its sources and `depends`, even
# if the switches above changed since (say, a sanitized build after a plain one in the same
# tree): a stamp file that changes with them makes the flags a dependency too.
_stamp = Path("build") / "refattn-build-flags.txt"
_flags = " ".join([*compile_args, *link_args, *(f"-D{name}={value}" for name, value in defines)])
if not _stamp.is_file() or _stamp.read_text() != _flags:
    _stamp.parent.mkdir(exist_ok=True)
    _stamp.write_text(_flags)

ffibuilder = FFI()
ffibuilder.set_source(
    "refattn._native",
    '#include "attention.h"',
    sources=[
        "native/attention.c",
        "native/cpu.c",
        "native/flash_bf16.c",
        "native/flash_f16.c",
        "native/flash_f32.c",
        "native/flash_f64.c",
        "native/kernels_avx2.c",
        "native/kernels_avx2_f16.c",
        "native/kernels_avx512.c",
        "native/kernels_avx512_bf16.c",
        "native/kernels_avx512_f16.c",
        "native/kernels_amx.c",
    ],
    include_dirs=["native"],
    # setuptools rebuilds when a source is newer than the extension; the headers count too.
    depends=[*(str(path) for path in sorted(Path("native").glob("*.h"))), str(_stamp)],
    define_macros=defines,
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)

# The cdef is the header's own declarations (between its cdef markers), with each #define's
# value left for the compiler to fill in (`...`): one statement of the binding, not two.
_declarations = HEADER.read_text().split("/* cdef begin */")[1].split("/* cdef end */")[0]
ffibuilder.cdef(re.sub(r"^#define (\w+) .*$", r"#define \1 ...", _declarations, flags=re.M))

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
