"""What this CPU offers for INT8 inference, read from /proc/cpuinfo (or the platform elsewhere).

ONNX Runtime runs any INT8 model on any CPU; the instruction set only decides which quantization
recipe is both fast and exact here. On x86 without VNNI the u8*s8 kernel (vpmaddubsw) can saturate
its 16-bit sums, so weights there are quantized to 7 bits (reduce_range); VNNI, AMX and ARM dot-product
kernels accumulate in 32 bits and take full-range weights.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# Best first: the label recorded in manifests and shown to users.
ISAS = ("amx", "avx512_vnni", "avx_vnni", "avx512", "avx2", "x86", "arm64")
INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile", "asimddp", "i8mm")


@dataclass(frozen=True)
class CpuInfo:
    """The INT8-relevant view of one CPU."""

    isa: str
    model: str
    flags: tuple[str, ...]
    mhz: float = 0.0

    @property
    def saturates_u8s8(self) -> bool:
        """True where the u8*s8 kernel sums pairs into 16 bits (x86 without VNNI): use 7-bit weights."""
        return self.isa in ("avx512", "avx2", "x86")

    def as_dict(self) -> dict[str, object]:
        return {"isa": self.isa, "model": self.model, "flags": list(self.flags), "mhz": self.mhz}


def isa_from_flags(flags: set[str], machine: str) -> str:
    """The best INT8 instruction-set label for a set of cpuinfo flags on ``machine`` (uname -m)."""
    if machine.lower() in ("aarch64", "arm64") or "asimd" in flags:
        return "arm64"
    if "amx_int8" in flags:
        return "amx"
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx_vnni" in flags:
        return "avx_vnni"
    if "avx512bw" in flags or "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "x86"


def read_cpu(cpuinfo: Path = CPUINFO, machine: str | None = None) -> CpuInfo:
    """This machine's CPU (or the one described by another cpuinfo file, for tests)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    flags, models, mhz = cpuinfo_fields(text)
    model = models[0] if models else platform.processor()
    machine = machine or platform.machine()
    return CpuInfo(isa=isa_from_flags(flags, machine), model=model,
                   flags=tuple(sorted(f for f in flags if f in INT8_FLAGS)), mhz=mhz)


def cpuinfo_fields(text: str) -> tuple[set[str], list[str], float]:
    """Every feature flag, the model names and the first clock (MHz) of a /proc/cpuinfo text."""
    flags: set[str] = set()
    models = []
    mhz = 0.0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key == "model name":
            models.append(value.strip())
        elif key == "cpu mhz" and not mhz:
            mhz = _number(value)
    return flags, models, mhz


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def native_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    return bool(cpuinfo_fields(text)[0] & BF16_FLAGS)


def _number(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        return 0.0


# INT8 multiply-adds counted as 2 ops, per core per cycle, for each ISA's widest integer dot-product path:
# AMX tiles 1024 MACs; AVX-512 VNNI 2 ports x 64; AVX-VNNI 2 x 32; AVX-512BW/AVX2 pairs into 16 bits and
# needs a second instruction (half the VNNI rate); ARM SDOT 2 x 16. A rough ceiling, not a datasheet figure.
INT8_OPS_PER_CYCLE = {"amx": 2048, "avx512_vnni": 256, "avx_vnni": 128, "avx512": 128, "avx2": 64,
                      "x86": 32, "arm64": 64}


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def openmp_threads(count: int) -> Iterator[None]:
    """OpenMP at ``count`` threads for the calls inside, restored after. The setting is the calling thread's,
    and FAISS and torch share it, so a one-thread query search must not leave it behind: a catalog encode ran
    6-12% slower and a cross-encoder trained at half speed under a Searcher that once set it for good."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(count, 1))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def int8_peak_ops(cpu: CpuInfo, cores: int) -> float | None:
    """A rough INT8 peak in ops/s for ``cores`` cores of ``cpu``; None when the clock is unknown."""
    if cpu.mhz <= 0:
        return None
    return cores * cpu.mhz * 1e6 * INT8_OPS_PER_CYCLE.get(cpu.isa, 32)
