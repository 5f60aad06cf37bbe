"""The machine a result came from: its processor and the instruction sets it has.

Every benchmark table and conformance report names the CPU it ran on and the SIMD extensions
the CPU offers, because the same machine kind has been an AMD EPYC without AMX one day and an
Intel Xeon with AMX the next, and numbers from one say little about the other.
"""

from __future__ import annotations

import os
import platform

# The /proc/cpuinfo flags that decide which kernels a CPU can run, in the order reports list them.
ISA_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_fp16",
)


def cpu_model() -> str:
    """This machine's processor, as /proc/cpuinfo names it (else what platform knows)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def isa_flags() -> list[str]:
    """The ISA_FLAGS this CPU reports (/proc/cpuinfo; [] where there is none)."""
    flags = set((_cpuinfo("flags") or "").split())
    return [flag for flag in ISA_FLAGS if flag in flags]


def describe() -> dict:
    """The machine for a report: platform, processor, its ISA flags, CPUs, Python."""
    return {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "isa_flags": isa_flags(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def _cpuinfo(field: str) -> str | None:
    """The value of the first `field` line of /proc/cpuinfo, or None."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
