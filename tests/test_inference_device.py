"""Device choice and mixed precision (app.core.device): one rule for prediction and training."""

from __future__ import annotations

import pytest
import torch

import app.core.device as device_module
from app.core.device import autocast_dtype, cpu_bf16_is_fast, select_device
from app.core.errors import CellPolError
from app.core.inference import Predictor
from app.core.modelfile import ModelSpec
from app.core.network import NetworkConfig, build_network
from app.training.trainer import choose_autocast_dtype


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")
    assert select_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(CellPolError, match="No CUDA GPU found; choose the CPU as the device"):
            select_device("cuda")
    with pytest.raises(CellPolError, match="Unknown device"):
        select_device("tpu")


def _predictor(amp: bool = True) -> Predictor:
    config = NetworkConfig(levels=1, base_filters=4)
    return Predictor.from_modules([(build_network(config), ModelSpec(network=config, voxel_size=(1.0, 1.0, 1.0)))],
                                  "cpu", amp=amp)


@pytest.mark.parametrize("fast", [True, False])
def test_a_cpu_predicts_in_bf16_only_where_it_has_native_bf16_and_never_trains_in_it(monkeypatch, fast):
    monkeypatch.setattr(device_module, "cpu_bf16_is_fast", lambda: fast)
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "inference") == (torch.bfloat16 if fast else None)
    assert _predictor().autocast_dtype == (torch.bfloat16 if fast else None)
    assert autocast_dtype(cpu, "training") is None and choose_autocast_dtype(cpu, True) is None
    # amp off: fp32 everywhere.
    assert autocast_dtype(cpu, "inference", amp=False) is None and _predictor(amp=False).autocast_dtype is None


@pytest.mark.parametrize("bf16", [True, False])
def test_a_cuda_gpu_uses_bf16_where_supported_else_fp16_for_both(monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    cuda = torch.device("cuda")
    expected = torch.bfloat16 if bf16 else torch.float16
    assert autocast_dtype(cuda, "inference") == autocast_dtype(cuda, "training") == expected
    assert choose_autocast_dtype(cuda, True) == expected and choose_autocast_dtype(cuda, False) is None
    assert autocast_dtype(torch.device("mps"), "inference") is None
    assert choose_autocast_dtype(torch.device("mps"), True) is None


def test_autocast_purpose_is_checked_and_the_old_import_still_works():
    with pytest.raises(ValueError, match="purpose"):
        autocast_dtype(torch.device("cpu"), "evaluation")
    from app.core.network import cpu_bf16_is_fast as from_network

    assert from_network is cpu_bf16_is_fast and isinstance(cpu_bf16_is_fast(), bool)
