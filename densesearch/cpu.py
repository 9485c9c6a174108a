"""What this CPU offers for INT8 inference, read from /proc/cpuinfo (or the platform elsewhere).

ONNX Runtime runs any INT8 model on any CPU; the instruction set only decides which quantization
recipe is both fast and exact here. On x86 without VNNI the u8*s8 kernel (vpmaddubsw) can saturate
its 16-bit sums, so weights there are quantized to 7 bits (reduce_range); VNNI, AMX and ARM dot-product
kernels accumulate in 32 bits and take full-range weights.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# Best first: the label recorded in manifests and shown to users.
ISAS = ("amx", "avx512_vnni", "avx_vnni", "avx512", "avx2", "x86", "arm64")
VNNI_ISAS = frozenset({"amx", "avx512_vnni", "avx_vnni"})
INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile", "asimddp", "i8mm")


@dataclass(frozen=True)
class CpuInfo:
    """The INT8-relevant view of one CPU."""

    isa: str
    model: str
    flags: tuple[str, ...]

    @property
    def saturates_u8s8(self) -> bool:
        """True where the u8*s8 kernel sums pairs into 16 bits (x86 without VNNI): use 7-bit weights."""
        return self.isa in ("avx512", "avx2", "x86")

    def as_dict(self) -> dict[str, object]:
        return {"isa": self.isa, "model": self.model, "flags": list(self.flags)}


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
    flags: set[str] = set()
    models = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key == "model name":
            models.append(value.strip())
    model = models[0] if models else platform.processor()
    machine = machine or platform.machine()
    return CpuInfo(isa=isa_from_flags(flags, machine), model=model,
                   flags=tuple(sorted(f for f in flags if f in INT8_FLAGS)))
