"""How much memory a simulation needs, and whether this computer has it: refused before anything is drawn."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from app.core.errors import CellPolError

try:
    import resource
except ImportError:  # pragma: no cover - Windows has no resource module
    resource = None

#: Peak memory of :func:`simulate` per voxel of the volume, in bytes: float32 working copies of both channels,
#: the blur, the haze and the output (measured with tracemalloc: 31-33 bytes for every preset at 32×256×256
#: and 64×512×512), plus a margin.
SIMULATE_BYTES_PER_VOXEL = 36


def available_memory_bytes() -> Optional[int]:
    """Memory this process can still get, in bytes, or ``None`` where it cannot be told.

    Linux: ``MemAvailable`` of ``/proc/meminfo`` (free memory plus caches the kernel can drop), lowered to
    what a cgroup v2 memory limit (a container) and an address-space limit (``ulimit -v``) leave. Other
    POSIX systems: the physical memory. Windows: the available physical memory.
    """
    limits = [
        limit
        for limit in (_meminfo_available(), _cgroup_room(), _address_space_room())
        if limit is not None
    ]
    if not limits:
        limits = [limit for limit in (_physical_memory(),) if limit is not None]
    if not limits and os.name == "nt":  # pragma: no cover - Windows only
        limits = [limit for limit in (_windows_available(),) if limit is not None]
    return max(0, min(limits)) if limits else None


def _meminfo_available() -> Optional[int]:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (Linux), or ``None``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> Optional[int]:
    """Bytes left below a cgroup v2 memory limit (a container), or ``None`` without a limit."""
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            return int(limit) - int((cgroup / "memory.current").read_text().strip())
    except (OSError, ValueError):
        pass
    return None


def _address_space_room() -> Optional[int]:
    """Bytes left below an address-space limit (``ulimit -v``), or ``None`` without a limit."""
    if resource is None:
        return None
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            used = 0
            with open("/proc/self/status", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("VmSize:"):
                        used = int(line.split()[1]) * 1024
                        break
            return soft - used
    except (OSError, ValueError, IndexError):
        pass
    return None


def _physical_memory() -> Optional[int]:
    """The computer's physical memory in bytes (POSIX), or ``None``."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _windows_available() -> Optional[int]:  # pragma: no cover - Windows only
    """The available physical memory in bytes (Windows), or ``None``."""
    import ctypes  # deliberately lazy: only Windows reaches this, and only here is ctypes needed

    class _MemoryStatus(ctypes.Structure):
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                    ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                    ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                    ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                    ("sullAvailExtendedVirtual", ctypes.c_ulonglong)]

    status = _MemoryStatus()
    status.dwLength = ctypes.sizeof(_MemoryStatus)
    if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
        return int(status.ullAvailPhys)
    return None


def simulation_memory_bytes(shape: Sequence[int]) -> int:
    """About how much memory :func:`simulate` needs at its peak for a volume of ``shape`` ``(Z, Y, X)``."""
    return math.prod(int(n) for n in shape) * SIMULATE_BYTES_PER_VOXEL


def check_simulation_memory(shape: Sequence[int], available: Optional[int] = None) -> None:
    """Refuse, before anything is allocated, a volume that does not fit in the memory available.

    Parameters
    ----------
    shape : sequence of 3 int
        ``(Z, Y, X)`` of the volume.
    available : int, optional
        Bytes available; default :func:`available_memory_bytes` (no check where that is unknown).

    Raises
    ------
    CellPolError
        The volume needs more memory than is available; the message says how much each needs.
    """
    available = _available_now() if available is None else available
    needed = simulation_memory_bytes(shape)
    if available is None or needed <= available:
        return
    fits = available // SIMULATE_BYTES_PER_VOXEL
    raise CellPolError(
        f"Simulating a volume of {' × '.join(str(int(n)) for n in shape)} voxels (Z × Y × X) needs about "
        f"{_bytes_text(needed)} of memory ({SIMULATE_BYTES_PER_VOXEL} bytes per voxel while it is made), but "
        f"only {_bytes_text(available)} is available to this program now. Use a smaller shape: about "
        f"{fits / 1e6:.3g} million voxels fit (64 × 256 × 256 is 4.2 million)."
    )


def _available_now() -> Optional[int]:
    """:func:`available_memory_bytes` as ``app.core.simulate`` exports it.

    Looked up on the package at each call, so that replacing it there (as a test does to stand in for a
    small computer) reaches every memory check, as it did when the simulator was one module.
    """
    return sys.modules[__package__].available_memory_bytes()


def _bytes_text(n_bytes: float) -> str:
    for unit, factor in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= factor:
            return f"{n_bytes / factor:.1f} {unit}"
    return f"{int(n_bytes)} bytes"
