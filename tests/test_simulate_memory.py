"""The simulator's memory check (``app.core.simulate._memory``): limits, the message, replacing the probe."""

from __future__ import annotations

import pytest

import app.core.simulate as simulate_package
from app.core.errors import CellPolError
from app.core.simulate import SIMULATE_BYTES_PER_VOXEL, SimConfig, check_simulation_memory, simulation_memory_bytes
from app.core.simulate import _memory

PROBES = ("_meminfo_available", "_cgroup_room", "_address_space_room", "_physical_memory", "_windows_available")


def _probes(monkeypatch, **values) -> None:
    for name in PROBES:
        monkeypatch.setattr(_memory, name, lambda value=values.get(name): value)


def test_available_memory_is_the_tightest_limit_and_never_negative(monkeypatch):
    _probes(monkeypatch, _meminfo_available=8_000_000_000, _cgroup_room=2_000_000_000, _physical_memory=64)
    assert _memory.available_memory_bytes() == 2_000_000_000
    _probes(monkeypatch, _meminfo_available=8_000_000_000, _address_space_room=-5)
    assert _memory.available_memory_bytes() == 0


def test_physical_memory_only_where_no_limit_is_known(monkeypatch):
    _probes(monkeypatch, _physical_memory=16_000_000_000)
    assert _memory.available_memory_bytes() == 16_000_000_000
    _probes(monkeypatch)
    assert _memory.available_memory_bytes() is None


def test_memory_needed_and_the_message():
    assert simulation_memory_bytes((4, 5, 6)) == 120 * SIMULATE_BYTES_PER_VOXEL
    check_simulation_memory((16, 128, 128), available=simulation_memory_bytes((16, 128, 128)))
    with pytest.raises(CellPolError, match=r"16 × 128 × 128 voxels .* needs about 9\.4 MB .* only 1\.0 MB"):
        check_simulation_memory((16, 128, 128), available=1_000_000)


def test_replacing_available_memory_on_the_package_reaches_simulate(monkeypatch):
    # Callers (and tests) replace the probe where it is exported; every check must see it, as it did
    # when the simulator was one module.
    monkeypatch.setattr(simulate_package, "available_memory_bytes", lambda: 1_000_000)
    with pytest.raises(CellPolError, match=r"only 1\.0 MB is available"):
        simulate_package.simulate(SimConfig(shape=(16, 128, 128)))
    monkeypatch.setattr(simulate_package, "available_memory_bytes", lambda: None)  # unknown: no check
    volume, _ = simulate_package.simulate(SimConfig(shape=(2, 32, 32), n_cells=1))
    assert volume.data.shape == (2, 2, 32, 32)
