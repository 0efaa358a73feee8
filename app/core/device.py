"""Where torch runs and in which precision: one choice for prediction and training alike.

:func:`select_device` turns a user's ``--device`` (``auto``, ``cpu``, ``cuda[:N]``, ``mps``) into a
:class:`torch.device`, with one clear :class:`~app.core.errors.CellPolError` where that device is absent.
:func:`autocast_dtype` is the mixed-precision rule for both jobs:

=========  ==========================================  ==========================================
device     ``purpose="inference"``                     ``purpose="training"``
=========  ==========================================  ==========================================
CPU        bf16 where the CPU has native bf16          none (fp32): see :func:`autocast_dtype`
           (:func:`cpu_bf16_is_fast`), else none
CUDA       bf16 where the GPU supports it, else fp16   the same (fp16 trains with a gradient scaler)
MPS        none                                        none
=========  ==========================================  ==========================================
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from app.core.errors import CellPolError

#: What an autocast dtype is chosen for (see :func:`autocast_dtype`).
PURPOSES = ("inference", "training")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(name: Union[str, torch.device, None] = "auto") -> torch.device:
    """The torch device for ``name``.

    Parameters
    ----------
    name : str or torch.device or None
        ``"auto"`` (or None: CUDA, else Apple MPS, else CPU), ``"cpu"``, ``"cuda"`` (optionally
        ``"cuda:N"``) or ``"mps"``; case and surrounding blanks do not matter.

    Returns
    -------
    torch.device

    Raises
    ------
    CellPolError
        If the requested GPU is not present, or ``name`` is not a device.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise CellPolError("No CUDA GPU found; choose the CPU as the device.", settings={"device": "cpu"})
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CellPolError(
                f"No CUDA GPU number {device.index} (found {torch.cuda.device_count()}); choose the first GPU.",
                settings={"device": "cuda"})
        return device
    if name == "mps":
        if not _mps_available():
            raise CellPolError("No Apple GPU (MPS) found; choose the CPU as the device.", settings={"device": "cpu"})
        return torch.device("mps")
    raise CellPolError(f"Unknown device {name!r}; use auto, cpu, cuda or mps.")


def cpu_bf16_is_fast() -> bool:
    """Whether bf16 autocast speeds up convolutions on this CPU.

    Only CPUs with native bf16 (AVX512-BF16 or AMX) gain (about ×2, platform notes §5). Elsewhere oneDNN
    falls back to a reference path that was ~40× *slower* than fp32 on a 2-core AVX2 EPYC, so callers
    should enable ``torch.autocast("cpu", dtype=torch.bfloat16)`` only when this returns True.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private API; absent in some builds
        return False


def autocast_dtype(device: torch.device, purpose: str = "inference", amp: bool = True) -> Optional[torch.dtype]:
    """The ``torch.autocast`` dtype for ``purpose`` on ``device``, or None to run in fp32.

    Parameters
    ----------
    device : torch.device
    purpose : {"inference", "training"}
        What the network runs for (the table in the module docstring).
    amp : bool
        False: always None (mixed precision switched off).

    Returns
    -------
    torch.dtype or None
        ``torch.bfloat16``, ``torch.float16`` or None.

    Raises
    ------
    ValueError
        If ``purpose`` is not one of :data:`PURPOSES`.

    Notes
    -----
    Training on a CPU stays in fp32, also where the CPU has native bf16 (prediction still uses it there):
    on an AMD EPYC with AVX512-BF16 the tiny training of the tests diverged to NaN under bf16 autocast and
    a resumed run no longer reproduced the uninterrupted one, both fine in fp32.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    if not amp:
        return None
    if device.type == "cpu":
        if purpose == "training":
            return None
        return torch.bfloat16 if cpu_bf16_is_fast() else None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def describe_device(device: Union[str, torch.device, None] = "auto") -> str:
    """One line saying what ``device`` (as :func:`select_device` takes it) runs on.

    A CUDA GPU: its name and memory (``"CUDA:0 NVIDIA H100, 79.1 GiB"``); an Apple GPU: ``"Apple GPU (MPS)"``;
    the CPU: its threads and whether it has native bf16 (``"CPU, 8 threads, bf16 native"``), which decides
    whether prediction there runs in bf16 (:func:`autocast_dtype`).

    Raises
    ------
    CellPolError
        As :func:`select_device`, if the device is not present.
    """
    resolved = select_device(device)
    if resolved.type == "cuda":
        index = resolved.index if resolved.index is not None else torch.cuda.current_device()
        properties = torch.cuda.get_device_properties(index)
        return f"CUDA:{index} {properties.name}, {properties.total_memory / 2 ** 30:.1f} GiB"
    if resolved.type == "mps":
        return "Apple GPU (MPS)"
    bf16 = "bf16 native" if cpu_bf16_is_fast() else "bf16 not native"
    return f"CPU, {torch.get_num_threads()} threads, {bf16}"
