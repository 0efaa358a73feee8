"""The predictor: a volume in, polarity vectors out (the pipeline of :mod:`app.core.inference`).

:class:`Predictor` runs one model or an ensemble: :meth:`~Predictor.run_network` (preparation, windows,
stitching: a :class:`NetworkOutput`), then :meth:`~Predictor.decode` (peaks, pairing, scores: a
:class:`~app.core.pairs.PairSet`); :meth:`~Predictor.predict` does both. The image's preparation on the
device and the out-of-memory messages live in :mod:`app.core.inference.staging`.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from app.core.device import autocast_dtype, select_device
from app.core.errors import CancelledError, CellPolError, ChannelError
from app.core.fileutil import sha256_file
from app.core.inference.pairing import (
    SCORE_FORMULA,
    Pairing,
    PairingRun,
    pair_by_distance_only,
    pair_by_embedding,
    vector_scores,
)
from app.core.inference.refine import refine_golgi
from app.core.inference.peaks import MAX_PEAKS, LocalMaxima, Peaks, device_local_maxima, find_peaks, ridge_scores
from app.core.inference.streaming import LazyVolume, as_lazy_volume, open_for_prediction, predict_lazy_job
from app.core.inference.staging import _is_oom, _oom_device, _out_of_memory, fuse_batchnorm, prepare_on_device
from app.core.inference.windows import WindowGrid, _round_up, plan_windows
from app.core.jobs import CancelToken, Job, Progress, ProgressCallback, Result, check_cancel, progress_to_callback
from app.core.jobs import run as run_job
from app.core.modelfile import DecodingSpec, ModelSpec, load_model, model_paths
from app.core.network import preferred_memory_format, required_multiple
from app.core.pairs import PairSet
from app.core.preprocess import Resampling
from app.core.volume import Volume

PathLike = Union[str, Path]

#: Context (µm) a pair should keep from a window's inner faces; the overlap is ``d_max + 2 × context``.
DEFAULT_CONTEXT_UM = 3.0
#: Mirror images test-time augmentation adds to each window (dims from the end: y, x, both); 2D and 3D alike.
TTA_FLIPS = ((-2,), (-1,), (-2, -1))
#: How provenance names it.
TTA_DESCRIPTION = "mirrored in y, x and both, averaged"
#: Largest default window along z and in-plane (voxels at the model's voxel size). Larger windows waste less
#: compute on overlaps: on the 64×768×768 benchmark, 9 windows of 20×368×368 took 22 s of network time
#: against 28.5 s for 25 windows of 20×240×240 (benchmarks/predict_speed.py, 2-core CPU).
DEFAULT_MAX_WINDOW_Z = 96
DEFAULT_MAX_WINDOW_YX = 512
#: Activation memory per voxel ≈ this × the full-resolution width × bytes per value (measured: a 16-filter
#: network on one 64×216×216 window peaks at about 1.4 GB RSS in fp32 on a CPU, ~375 bytes per voxel).
_ACTIVATION_VALUES_PER_CHANNEL = 6
#: Activation memory allowed for one batch of windows.
CPU_ACTIVATION_BUDGET = 1.3e9
MPS_ACTIVATION_BUDGET = 1.5e9
CUDA_FREE_MEMORY_FRACTION = 0.4
DEFAULT_BATCH_SIZE = {"cpu": 4, "cuda": 8, "mps": 2}

ProgressLike = Optional[ProgressCallback]
#: What a prediction polls for cancelling: a token, or a callable that returns True once cancelled.
CancelLike = Union[CancelToken, Callable[[], bool], None]


class _CallableCancel(CancelToken):
    """A cancel callable (True once the user cancelled) as a token :func:`~app.core.jobs.check_cancel` polls."""

    def __init__(self, is_cancelled: Callable[[], bool]) -> None:
        super().__init__()
        self._is_cancelled = is_cancelled

    @property
    def cancelled(self) -> bool:
        return super().cancelled or bool(self._is_cancelled())

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise CancelledError("Cancelled by the user.")


def as_cancel_token(cancel: CancelLike) -> Optional[CancelToken]:
    """``cancel`` as a :class:`~app.core.jobs.CancelToken` (a callable wrapped; None, or anything else that is
    neither a token nor callable, never cancels)."""
    if isinstance(cancel, CancelToken):
        return cancel
    if callable(cancel):
        return _CallableCancel(cancel)
    return None


@dataclass
class Member:
    """One model of a predictor (an ensemble has several)."""

    module: nn.Module
    spec: ModelSpec
    path: Optional[Path] = None
    weights_path: Optional[Path] = None
    weights_sha256: Optional[str] = None

    @property
    def name(self) -> str:
        if self.spec.name:
            return self.spec.name
        return self.path.stem if self.path is not None else "model"


@dataclass
class Prediction:
    """Everything :meth:`Predictor.predict` computed for one volume."""

    pairs: PairSet
    resampling: Resampling
    model_voxel_size: tuple[float, float, float]
    heatmap_nucleus: Optional[np.ndarray] = None  # stitched, at the model's voxel size (Z, Y, X)
    heatmap_golgi: Optional[np.ndarray] = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class NetworkOutput:
    """The network stage of a prediction, before decoding (see :meth:`Predictor.run_network`).

    Decoding it again with other thresholds (:meth:`Predictor.decode`) costs no network time, which is
    how decoding parameters are calibrated.
    """

    heatmap_nucleus: np.ndarray  # stitched, at the model's voxel size (Z, Y, X)
    heatmap_golgi: np.ndarray
    embeddings: list  # per member: {window index: raw (2, z, y, x) float16 embeddings}
    grid: WindowGrid
    resampling: Resampling
    image_shape: tuple[int, int, int]
    image_voxel_size: tuple[float, float, float]
    batch: int
    timings: dict[str, float] = field(default_factory=dict)
    #: Local maxima of (nucleus, Golgi) found on the GPU before the heatmaps came back (None on a CPU).
    maxima: Optional[tuple[LocalMaxima, LocalMaxima]] = None


@dataclass
class _NetworkRun:
    """One pass of every member over the windows of a prepared image (:meth:`Predictor.run_network`).

    Attributes
    ----------
    grid : WindowGrid
    batch : int
        Windows per network call.
    weights : list of list of Tensor
        Per axis, each window's 1D blending weights, on the staging device.
    heat_sum : tuple of Tensor
        The weighted (nucleus, Golgi) heatmaps summed so far, on the staging device.
    cancel : CancelToken or None
    total : int
        Windows to run, over all members.
    done : int
        Windows run so far.
    timings : dict
        Seconds per stage, accumulated.
    """

    grid: WindowGrid
    batch: int
    weights: list[list[torch.Tensor]]
    heat_sum: tuple[torch.Tensor, torch.Tensor]
    cancel: Optional[CancelToken]
    total: int
    done: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def add_time(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    def report(self, windows: int) -> Progress:
        """Count ``windows`` more as done; the progress event to yield."""
        self.done += windows
        return Progress(self.done, self.total, "windows")


def _maxima_on(staging: torch.device) -> bool:
    """Whether heatmaps staged on ``staging`` get their local maxima there (on a CPU numpy's sparse search
    is faster than a max-pool over the whole volume)."""
    return staging.type != "cpu"


def _mean_decoding(specs: Sequence[DecodingSpec]) -> DecodingSpec:
    if len(specs) == 1:
        return specs[0]
    values = {k: float(np.mean([getattr(s, k) for s in specs])) for k in asdict(specs[0])}
    return DecodingSpec(**values)


class Predictor:
    """Predict polarity vectors with one model or an ensemble (what :func:`app.core.batch.predict_batch` calls per image, as a job).

    Build it with :meth:`from_files` (model ``.json`` files) or :meth:`from_modules` (in-memory networks,
    e.g. fresh from training), then call it on a :class:`~app.core.volume.Volume`.

    Parameters
    ----------
    members : sequence of Member
        The models; several make an ensemble (same voxel size, architecture kind and dimensionality).
    device : torch.device
    window : (int, int, int), optional
        Largest window ``(z, y, x)`` in voxels at the model's voxel size. Default: the whole stack in z up
        to 96 slices, and in-plane the largest size (≤ 512) whose batch fits the memory budget. A window too
        small for the required overlap along an axis that needs tiling is enlarged along that axis.
    batch_size : int, optional
        Windows per network call (default: 4 on CPU, 8 on CUDA, capped by the memory budget).
    context_um : float
        Extra context a pair keeps from inner window faces; the overlap is ``d_max + 2 × context_um``.
    decoding : DecodingSpec, optional
        Overrides the models' decoding parameters (thresholds, minimum distances, Δ, d_max).
    amp : bool
        Mixed precision where it is fast (:func:`app.core.device.autocast_dtype` for inference: CPU bf16
        only on CPUs with native bf16; CUDA fp16/bf16).
    tta : bool
        Test-time augmentation: every window also runs mirrored in y, in x and in both, and the four
        outputs, mirrored back, are averaged (4× the network time).
    """

    def __init__(
        self,
        members: Sequence[Member],
        device: Union[str, torch.device] = "auto",
        window: Optional[Sequence[int]] = None,
        batch_size: Optional[int] = None,
        context_um: float = DEFAULT_CONTEXT_UM,
        decoding: Optional[DecodingSpec] = None,
        amp: bool = True,
        tta: bool = False,
    ) -> None:
        if not members:
            raise CellPolError("No model given.")
        self.members = list(members)
        self.device = device if isinstance(device, torch.device) else select_device(device)
        _check_compatible(self.members)
        first = self.members[0].spec
        self.config = first.network
        self.voxel_size: tuple[float, float, float] = first.voxel_size
        self.architecture = first.network.architecture
        self.spatial_dims = first.network.spatial_dims
        self.multiple = tuple(
            int(np.lcm.reduce([required_multiple(m.spec.network)[a] for m in self.members])) for a in range(3)
        )
        self._decoding_override = decoding
        self.decoding = decoding if decoding is not None else _mean_decoding([m.spec.decoding for m in self.members])
        if window is not None:
            if len(window) != 3 or any(int(w) < 1 for w in window):
                raise CellPolError(f"window must be three positive sizes Z Y X, got {window!r}.")
        self.window = tuple(int(w) for w in window) if window is not None else None
        if batch_size is not None and int(batch_size) < 1:
            raise CellPolError(f"batch size must be at least 1, got {batch_size}.")
        self.batch_size = int(batch_size) if batch_size is not None else None
        if not (math.isfinite(context_um) and context_um >= 0):
            raise CellPolError(f"context must be a non-negative number of µm, got {context_um!r}.")
        self.context_um = float(context_um)
        self.amp = bool(amp)
        self.tta = bool(tta)
        self.autocast_dtype = self._choose_autocast()
        self.memory_format = (
            preferred_memory_format(self.config) if self.device.type in ("cpu", "cuda") else torch.contiguous_format
        )
        for member in self.members:
            member.module = fuse_batchnorm(member.module, copy=member.path is None)
            member.module.to(self.device)
            if self.memory_format != torch.contiguous_format:
                member.module.to(memory_format=self.memory_format)

    # --- construction --------------------------------------------------------------------
    @classmethod
    def from_files(cls, paths: Sequence[PathLike] | PathLike, device: Union[str, torch.device] = "auto",
                   **options: Any) -> "Predictor":
        """Load one model (or several: an ensemble) from ``.json`` model files.

        Parameters
        ----------
        paths : path or sequence of paths
            Model ``.json`` files (their weights beside them).
        device : str or torch.device
            See :func:`app.core.device.select_device`.
        **options
            The other parameters of :class:`Predictor`.

        Returns
        -------
        Predictor

        Raises
        ------
        CellPolError
            Missing or damaged files (:class:`~app.core.errors.FileFormatError`), members that do not fit
            together, or a device that is not there.
        """
        if isinstance(paths, (str, Path)):
            paths = [paths]
        paths = [Path(p) for p in paths]
        if not paths:
            raise CellPolError("No model file given.")
        torch_device = select_device(device)
        members = []
        for path in paths:
            module, spec = load_model(path, "cpu")
            json_path, weights_path = model_paths(path)
            if not weights_path.is_file():
                named = json.loads(json_path.read_text(encoding="utf-8")).get("weights", "")
                weights_path = json_path.parent / str(named)
            checksum = sha256_file(weights_path)
            members.append(Member(module, spec, json_path.resolve(), weights_path.resolve(), checksum))
        return cls(members, torch_device, **options)

    @classmethod
    def from_modules(cls, models: Sequence[tuple[nn.Module, ModelSpec]], device: Union[str, torch.device] = "auto",
                     **options: Any) -> "Predictor":
        """A predictor from in-memory ``(module, spec)`` pairs (no files; provenance has no paths).

        The modules are switched to eval mode and moved to the device; BatchNorm folding works on a copy.
        """
        return cls([Member(module, spec) for module, spec in models], select_device(device), **options)

    # --- information -----------------------------------------------------------------------
    def _choose_autocast(self) -> Optional[torch.dtype]:
        return autocast_dtype(self.device, "inference", self.amp)

    def provenance(self) -> dict[str, Any]:
        """JSON-serialisable description of the models and settings (goes into every output sidecar)."""
        models = []
        for m in self.members:
            models.append({
                "name": m.name,
                "path": str(m.path) if m.path else None,
                "weights": str(m.weights_path) if m.weights_path else None,
                "weights_sha256": m.weights_sha256,
                "voxel_size_zyx_um": list(m.spec.voxel_size),
                "architecture": m.spec.network.architecture,
                "normalization": asdict(m.spec.normalization),
                "decoding": asdict(m.spec.decoding),
            })
        return {
            "method": "cellpol",
            "architecture": self.architecture,
            "models": models,
            "ensemble_size": len(self.members),
            "model_voxel_size_zyx_um": list(self.voxel_size),
            "decoding": asdict(self.decoding),
            "device": str(self.device),
            "autocast": str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else None,
            "window_max_zyx": list(self.window) if self.window else "auto",
            "batch_size": self.batch_size or "auto",
            "context_um": self.context_um,
            "test_time_augmentation": TTA_DESCRIPTION if self.tta else None,
            "probability": SCORE_FORMULA,
        }

    # --- planning --------------------------------------------------------------------------
    def _activation_budget(self) -> float:
        if self.device.type == "cuda":
            try:
                free, _ = torch.cuda.mem_get_info(self.device)
            except RuntimeError:
                free = 4e9
            return CUDA_FREE_MEMORY_FRACTION * float(free)
        if self.device.type == "mps":
            return MPS_ACTIVATION_BUDGET
        return CPU_ACTIVATION_BUDGET

    def _bytes_per_voxel(self) -> float:
        width = max(max(m.spec.network.filters[0], m.spec.network.branch_filters) for m in self.members)
        value_bytes = 2 if self.autocast_dtype is not None else 4
        return _ACTIVATION_VALUES_PER_CHANNEL * width * value_bytes

    def plan(self, shape: Sequence[int]) -> tuple[WindowGrid, int]:
        """The window grid and batch size for an image of ``shape`` (model voxels ``(Z, Y, X)``).

        Parameters
        ----------
        shape : sequence of int
            The image's shape at the model's voxel size.

        Returns
        -------
        grid : WindowGrid
        batch : int
            Windows per network call.
        """
        shape = tuple(int(s) for s in shape)
        reach_um = self.decoding.max_pair_distance_um + 2.0 * self.context_um
        overlap = [0 if n == 1 else int(math.ceil(reach_um / v - 1e-9)) for n, v in zip(shape, self.voxel_size)]
        multiple = self.multiple
        budget_voxels = max(1.0, self._activation_budget() / self._bytes_per_voxel())

        def smallest_tiling_window(axis: int) -> int:
            # A tiled axis needs a stride of at least half the overlap (and one pooling multiple).
            step = max(multiple[axis], int(math.ceil(overlap[axis] / 2)))
            return _round_up(overlap[axis] + step, multiple[axis])

        if self.window is not None:
            max_window = list(self.window)
        else:
            wz = min(_round_up(shape[0], multiple[0]), _round_up(DEFAULT_MAX_WINDOW_Z, multiple[0]))
            if shape[0] > wz:
                wz = max(wz, smallest_tiling_window(0))
            side = min(DEFAULT_MAX_WINDOW_YX, int(math.sqrt(budget_voxels / wz)))
            max_window = [wz, side, side]
        for axis in range(3):
            max_window[axis] = max(max_window[axis], multiple[axis])
            if shape[axis] > max_window[axis]:
                max_window[axis] = max(max_window[axis], smallest_tiling_window(axis))
        grid = plan_windows(shape, max_window, overlap, multiple)
        if self.batch_size is not None:
            batch = self.batch_size
        else:
            fits = int(budget_voxels // float(np.prod(grid.window)))
            batch = max(1, min(DEFAULT_BATCH_SIZE.get(self.device.type, 2), fits))
        return grid, max(1, min(batch, len(grid)))

    # --- running ---------------------------------------------------------------------------
    def __call__(self, volume: Volume, progress: ProgressLike = None, cancel: CancelLike = None) -> PairSet:
        """Polarity vectors of ``volume`` (input voxel coordinates; ``sources = "predicted"``)."""
        return self.predict(volume, progress=progress, cancel=cancel).pairs

    def _check_volume(self, volume: Volume) -> None:
        if volume.nucleus_channel is None or volume.golgi_channel is None:
            raise ChannelError(
                f"Prediction needs a nucleus and a Golgi channel; this image has {volume.n_channels} channel(s). "
                "Choose the nucleus and the Golgi channel.", settings={"nucleus_channel": None, "golgi_channel": None}
            )
        name = self.members[0].name
        if self.spatial_dims == 2 and not volume.is_2d:
            raise CellPolError(
                f"Model '{name}' is a 2D model but the image is a 3D stack ({volume.spatial_shape[0]} slices); "
                "use a 3D model, or predict single planes."
            )
        if self.spatial_dims == 3 and volume.is_2d and self.multiple[0] != 1:
            raise CellPolError(
                f"Model '{name}' is a 3D model that pools along z, so it cannot run on a single-plane (2D) "
                "image; use a 2D model or the classic method.", settings={"method": "classic"}
            )

    def _prepare(self, volume: Volume, where: torch.device) -> tuple[dict[tuple, torch.Tensor], Resampling]:
        """Resampled and normalised ``(2, Z, Y, X)`` input per distinct normalisation (channel 0 nucleus),
        as float32 tensors on ``where`` (:func:`prepare_on_device`)."""
        norms = {}
        for m in self.members:
            norm = m.spec.normalization
            norms.setdefault((norm.low_percentile, norm.high_percentile, norm.clip), norm)
        return prepare_on_device(np.stack([volume.nucleus, volume.golgi]), volume.voxel_size, self.voxel_size,
                                 list(norms), where)

    def _staging_devices(self) -> list[torch.device]:
        """Where the whole prepared image and the stitched heatmaps may live, in order of preference: the
        predictor's device, then host memory (windows then travel to the device one batch at a time)."""
        return list(dict.fromkeys([self.device, torch.device("cpu")]))

    def _prepare_staged(self, volume: Volume) -> tuple[dict[tuple, torch.Tensor], Resampling]:
        """:meth:`_prepare` on the first of :meth:`_staging_devices` with room for the image."""
        failed: list[torch.device] = []
        for where in self._staging_devices():
            try:
                return self._prepare(volume, where)
            except (MemoryError, RuntimeError) as exc:
                if not _is_oom(exc):
                    raise
                failed.append(_oom_device(exc, where))
                if where.type == "cuda":
                    torch.cuda.empty_cache()
        raise _out_of_memory(f"preparing the image ({volume.describe()}) for the network", failed,
                             "a smaller image (crop it)")

    def _run_member(self, member: Member, image: torch.Tensor, run: _NetworkRun) -> Job:
        """Run one member over every window, yielding progress after each batch; add its weighted heatmaps
        to ``run.heat_sum``; return its raw embedding windows (float16 ``(2, z, y, x)``, the part inside the
        image) keyed by window index."""
        roles = member.spec.channel_roles
        order = [0 if role == "nucleus" else 1 for role in roles]
        channels = image[order] if order != [0, 1] else image  # on the staging device (see run_network)
        embeddings: dict[int, np.ndarray] = {}
        indices = list(range(len(run.grid)))
        for first in range(0, len(indices), run.batch):
            check_cancel(run.cancel)
            chunk = indices[first:first + run.batch]
            t0 = time.perf_counter()
            tensor = self._gather_windows(channels, chunk, run.grid)
            t1 = time.perf_counter()
            out = self._forward(member.module, tensor, len(chunk), run.grid, channels.device)
            del tensor
            t2 = time.perf_counter()
            self._stitch_windows(out, chunk, run, embeddings)
            del out
            t3 = time.perf_counter()
            run.add_time("windows_in", t1 - t0)
            run.add_time("network", t2 - t1)
            run.add_time("stitch", t3 - t2)
            yield run.report(len(chunk))
        return embeddings

    def _gather_windows(self, channels: torch.Tensor, chunk: Sequence[int], grid: WindowGrid) -> torch.Tensor:
        """The network input for windows ``chunk``: their parts of ``channels``, padded to the window size by
        mirroring the image at its border (:func:`mirror_pad`), on the predictor's device in its memory format.

        Why mirrored, not zeros: a window reaching past the image (a stack thinner than the window in z, say)
        used to be filled with zeros, a flat black that training never shows next to real background; the
        starter model answered with false nuclei and Golgi on the slices next to it (on 6 outside-renderer
        volumes 460 vectors, mostly on the top and bottom slices; mirrored, 313, and TPR/FDR at τL = 0 went
        from 0.395 / 0.732 to 0.410 / 0.607).
        """
        tensor = torch.empty((len(chunk), channels.shape[0]) + grid.window, dtype=torch.float32,
                             device=channels.device)
        for b, index in enumerate(chunk):
            sl = grid.valid_slices(index)
            tensor[b] = mirror_pad(channels[(slice(None),) + sl], grid.window)
        if self.spatial_dims == 2:
            tensor = tensor[:, :, 0]
        return tensor.to(self.device).contiguous(memory_format=self.memory_format)

    def _forward(self, module: nn.Module, tensor: torch.Tensor, windows: int, grid: WindowGrid,
                 where: torch.device) -> dict[str, torch.Tensor]:
        """The network's float32 outputs for a batch of ``windows`` windows, moved to ``where`` (the staging
        device), each ``(B, 1, Z, Y, X)`` (2D networks too); running out of memory becomes one clear error."""
        try:
            autocast = (
                torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with torch.inference_mode(), autocast:
                out = module(tensor)
                if self.tta:
                    # Test-time augmentation: the mirror images in y, x and both, flipped back and averaged.
                    out = {k: v.float() for k, v in out.items()}
                    for dims in TTA_FLIPS:
                        flipped = module(tensor.flip(dims).contiguous(memory_format=self.memory_format))
                        for k, v in flipped.items():
                            out[k] += v.float().flip(dims)
                    out = {k: v / (1 + len(TTA_FLIPS)) for k, v in out.items()}
            out = {k: v.float().to(where) for k, v in out.items()}  # to where the stitching is
            if self.spatial_dims == 2:
                out = {k: v[:, :, None] for k, v in out.items()}  # (B, 1, 1, Y, X) like 3D
            return out
        except Exception as exc:  # noqa: BLE001 - only memory errors are translated
            if _is_oom(exc):
                raise _out_of_memory(
                    f"running the network on {windows} window{'s' if windows != 1 else ''} of "
                    f"{'×'.join(map(str, grid.window))} voxels at a time",
                    [_oom_device(exc, self.device)],
                    "a smaller window or batch size", {"window": None, "batch_size": None},
                ) from None
            raise

    def _stitch_windows(self, out: dict[str, torch.Tensor], chunk: Sequence[int], run: _NetworkRun,
                        embeddings: dict[int, np.ndarray]) -> None:
        """Add the weighted heatmaps of windows ``chunk`` to ``run.heat_sum``; keep their raw embeddings."""
        grid, weights = run.grid, run.weights
        for b, index in enumerate(chunk):
            sl = grid.valid_slices(index)
            extent = tuple(s.stop - s.start for s in sl)
            local = tuple(slice(0, e) for e in extent)
            gz, gy, gx = grid.index_to_grid(index)
            w3 = weights[0][gz][:, None, None] * weights[1][gy][None, :, None] * weights[2][gx][None, None, :]
            for key, target in zip(("heatmap_nucleus", "heatmap_golgi"), run.heat_sum):
                target[sl] += out[key][b, 0][local] * w3
            if self.architecture == "cellpol":
                e = torch.stack([out[k][b, 0][local] for k in ("embedding_nucleus", "embedding_golgi")])
                embeddings[index] = e.to(torch.float16).cpu().numpy()

    def predict(self, volume: Volume, progress: ProgressLike = None, cancel: CancelLike = None,
                keep_heatmaps: bool = False) -> Prediction:
        """:meth:`job` run to its end: the :class:`Prediction`; ``progress(done, total, "windows")`` hears it.

        Raises
        ------
        CellPolError
            Missing channel roles, a 2D/3D mismatch, or running out of memory.
        """
        return run_job(self.job(volume, cancel, keep_heatmaps), progress_to_callback(progress))

    def job(self, volume: Volume, cancel: CancelLike = None, keep_heatmaps: bool = False) -> Job:
        """Run the whole pipeline (:mod:`app.core.inference`) on ``volume``: a job (:mod:`app.core.jobs`).

        It yields :class:`~app.core.jobs.Progress` in windows (all members counted) before the first batch of
        windows and after each, checks ``cancel`` before each batch (so a cancel stops it inside the image),
        and ends with :class:`~app.core.jobs.Result` holding the :class:`Prediction` (also returned).

        Parameters
        ----------
        volume : Volume
        cancel : CancelToken or callable, optional
            Raises :class:`~app.core.errors.CancelledError` when set.
        keep_heatmaps : bool
            Return the stitched heatmaps (model voxel size) in the :class:`Prediction`.

        Raises
        ------
        CellPolError
            Missing channel roles, a 2D/3D mismatch, or running out of memory.
        """
        if isinstance(volume, LazyVolume):  # an image too big for memory: tile by tile
            return (yield from predict_lazy_job(self, volume, as_cancel_token(cancel)))
        output = yield from self._network_steps(volume, as_cancel_token(cancel))
        pairs = self.refine(self.decode(output), volume)
        prediction = Prediction(
            pairs, output.resampling, self.voxel_size,
            output.heatmap_nucleus if keep_heatmaps else None,
            output.heatmap_golgi if keep_heatmaps else None, output.timings,
        )
        yield Result(prediction, f"{len(pairs)} vector(s)")
        return prediction

    def predict_lazy(self, image: Any, nucleus_channel: int = 0, golgi_channel: int = 1,
                     voxel_size: Optional[Sequence[float]] = None, progress: ProgressLike = None,
                     cancel: CancelLike = None, **options: Any) -> Prediction:
        """Predict a :class:`~app.core.imageio.LazyImage` tile by tile, never holding it whole
        (:func:`~app.core.inference.streaming.predict_lazy_job`; :meth:`job` does the same for a
        :class:`~app.core.inference.streaming.LazyVolume`).

        Parameters
        ----------
        image : LazyImage
            From :func:`~app.core.imageio.open_lazy` (the caller closes it).
        nucleus_channel, golgi_channel : int
        voxel_size : (float, float, float), optional
            ``(z, y, x)`` µm; default the image's.
        progress, cancel
            As for :meth:`predict`.
        **options
            ``tile_bytes``, ``core``, ``record_dir`` of :func:`~app.core.inference.streaming.predict_lazy_job`.

        Returns
        -------
        Prediction
            Without heatmaps.
        """
        volume = as_lazy_volume(image, nucleus_channel, golgi_channel, voxel_size)
        return run_job(predict_lazy_job(self, volume, as_cancel_token(cancel), **options),
                       progress_to_callback(progress))

    def open_image(self, image: Any, read_options: Any, target: Optional[PathLike] = None) -> Any:
        """What batch prediction predicts for the file ``image``: the :class:`~app.core.volume.Volume`, or a
        :class:`~app.core.inference.streaming.LazyVolume` streamed tile by tile where predicting it whole
        would not fit the memory budget (:func:`~app.core.inference.streaming.open_for_prediction`); with
        ``target`` (the output CSV) a streamed prediction keeps resumable tile records beside it."""
        return open_for_prediction(image, read_options, self, target=target)

    def run_network(self, volume: Volume, progress: ProgressLike = None, cancel: CancelLike = None) -> NetworkOutput:
        """Preprocess, run every member over the windows and stitch the heatmaps (no decoding).

        Parameters
        ----------
        volume : Volume
        progress, cancel
            ``progress(done, total, "windows")`` after each batch of windows; cancel as for :meth:`job`.

        Returns
        -------
        NetworkOutput
        """
        return run_job(self._network_steps(volume, as_cancel_token(cancel)), progress_to_callback(progress))

    def _network_steps(self, volume: Volume, token: Optional[CancelToken]) -> Job:
        """:meth:`run_network` as steps: yields the windows' progress, returns the :class:`NetworkOutput`."""
        self._check_volume(volume)
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        prepared, mapping = self._prepare_staged(volume)
        shape = mapping.out_shape
        timings["preprocess"] = time.perf_counter() - t_start
        grid, batch = self.plan(shape)
        heat_np, maxima, member_embeddings = yield from self._network_on_prepared(
            prepared, grid, batch, token, timings, f"the image ({volume.describe()})")
        del prepared
        check_cancel(token)
        timings["network_total"] = time.perf_counter() - t_start
        return NetworkOutput(heat_np[0], heat_np[1], member_embeddings, grid, mapping,
                             tuple(volume.spatial_shape), tuple(volume.voxel_size), batch, timings, maxima)

    def _network_on_prepared(self, prepared: dict[tuple, torch.Tensor], grid: WindowGrid, batch: int,
                             token: Optional[CancelToken], timings: dict[str, float], what: str,
                             done_before: int = 0, total: Optional[int] = None) -> Job:
        """Every member over the windows of ``grid`` on ``prepared`` (:meth:`_prepare`'s tensors, which it
        releases), stitched: yields the windows' progress (``done_before`` + windows run, of ``total``,
        default this grid's windows), returns ``(heatmaps, maxima, member_embeddings)``. ``what`` names the
        image in an out-of-memory message. The streaming path (:mod:`app.core.inference.streaming`) calls
        it once per tile."""
        staging = next(iter(prepared.values())).device
        shape = grid.shape
        weights, totals = zip(*(grid.axis_weights(a) for a in range(3)))
        weights = [[torch.from_numpy(w.astype(np.float32)).to(staging) for w in axis] for axis in weights]
        try:
            heat_sum = tuple(torch.zeros(shape, dtype=torch.float32, device=staging) for _ in range(2))
            run = _NetworkRun(grid, batch, list(weights), heat_sum, token,  # type: ignore[arg-type]
                              total=total if total is not None else len(grid) * len(self.members),
                              done=done_before, timings=timings)
            del heat_sum
            yield Progress(run.done, run.total, "windows")
            member_embeddings = []
            for member in self.members:
                norm = member.spec.normalization
                image = prepared[(norm.low_percentile, norm.high_percentile, norm.clip)]
                member_embeddings.append((yield from self._run_member(member, image, run)))
            prepared.clear()
            del image
            heat_np, maxima = self._finish_stitching(run, totals, staging)
        except MemoryError:
            raise _out_of_memory(f"stitching the network's output for {what}",
                                 [torch.device("cpu")], "a smaller image (crop it)") from None
        except RuntimeError as exc:
            if _is_oom(exc):
                raise _out_of_memory(f"stitching the network's output for {what}",
                                     [_oom_device(exc, staging)], "a smaller image (crop it)") from None
            raise
        return heat_np, maxima, member_embeddings

    def _finish_stitching(self, run: _NetworkRun, totals: Sequence[np.ndarray], staging: torch.device
                          ) -> tuple[tuple[np.ndarray, np.ndarray], Optional[tuple[LocalMaxima, LocalMaxima]]]:
        """Divide ``run.heat_sum`` by the summed blending weights (and the member count), find the local
        maxima where the heatmaps are (on a GPU), and bring the heatmaps to the host; ``run.heat_sum`` is
        released."""
        t0 = time.perf_counter()
        shape = tuple(run.heat_sum[0].shape)
        plane = torch.from_numpy((totals[1][:, None] * totals[2][None, :]).astype(np.float32)).to(staging)
        for z in range(shape[0]):
            scale = float(1.0 / (totals[0][z] * len(self.members)))
            for h in run.heat_sum:
                h[z] /= plane
                h[z] *= scale
        # On a GPU the local maxima are found there (a max-pool) rather than on the host afterwards.
        maxima = tuple(device_local_maxima(h) for h in run.heat_sum) if _maxima_on(staging) else None
        heat_np = tuple(h.cpu().numpy() for h in run.heat_sum)
        run.heat_sum = ()  # type: ignore[assignment]
        run.add_time("stitch", time.perf_counter() - t0)
        return heat_np, maxima  # type: ignore[return-value]

    def decode(self, output: NetworkOutput, decoding: Optional[DecodingSpec] = None) -> PairSet:
        """Peaks, pairing and mapping back to the input's voxels, with ``decoding`` (default: the model's).

        Parameters
        ----------
        output : NetworkOutput
            From :meth:`run_network` (decoding it again costs no network time).
        decoding : DecodingSpec, optional
            Other decoding parameters; its Δ then applies to every member.

        Returns
        -------
        PairSet
            In the input's voxel coordinates, with scores and the prediction's provenance.
        """
        timings = dict(output.timings)
        t_start = time.perf_counter()
        dec = decoding if decoding is not None else self.decoding
        nuclei, golgi = self.peaks(output, dec)
        timings["peaks"] = time.perf_counter() - t_start

        t0 = time.perf_counter()
        explicit_delta = decoding is not None or self._decoding_override is not None
        pairing = self._pair(self._pairing_run(output, nuclei, golgi, dec, explicit_delta))
        timings["pairing"] = time.perf_counter() - t0

        rows, cols = pairing.nucleus_index, pairing.golgi_index
        mapping = output.resampling
        nuclei_in = _clip_points(mapping.to_input(nuclei.positions[rows]) if len(rows) else np.zeros((0, 3)),
                                 output.image_shape)
        golgi_in = _clip_points(mapping.to_input(golgi.positions[cols]) if len(cols) else np.zeros((0, 3)),
                                output.image_shape)
        scores = vector_scores(nuclei.heights[rows], golgi.heights[cols], pairing.confidence)
        timings["total"] = timings.get("network_total", 0.0) + time.perf_counter() - t_start
        output.timings.update({k: timings[k] for k in ("peaks", "pairing", "total")})
        meta = self._decode_meta(output, dec if decoding is not None else None, len(nuclei.positions),
                                 len(golgi.positions), timings, pairing)
        return PairSet(nuclei_in, golgi_in, voxel_size=output.image_voxel_size, scores=scores, sources="predicted",
                       meta=meta)

    def _decode_meta(self, output: NetworkOutput, decoding: Optional[DecodingSpec], n_nuclei: int, n_golgi: int,
                     timings: dict[str, float], pairing: Pairing) -> dict[str, Any]:
        """The provenance of a decoded prediction: :meth:`provenance`, ``decoding`` where given, the grid, the
        detections, the timings and the pairing's own entries."""
        grid = output.grid
        meta = self.provenance()
        if decoding is not None:
            meta["decoding"] = asdict(decoding)
        meta.update({
            "image_shape_zyx": list(output.image_shape),
            "model_grid_shape_zyx": list(output.resampling.out_shape),
            "windows": len(grid),
            "window_shape_zyx": list(grid.window),
            "window_overlap_zyx": list(grid.overlap),
            "batch_size": output.batch,
            "detected_nuclei": int(n_nuclei),
            "detected_golgi": int(n_golgi),
            "peaks_capped": bool(max(n_nuclei, n_golgi) >= MAX_PEAKS),
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            **pairing.meta,
        })
        return meta

    def refine(self, pairs: PairSet, volume: Volume, decoding: Optional[DecodingSpec] = None) -> PairSet:
        """``pairs`` (decoded from ``volume``) with their Golgi ends moved to the Golgi channel's intensity
        centroid around them (:func:`~app.core.inference.refine.refine_golgi`), where the decoding asks for it."""
        radius = (decoding or self.decoding).golgi_refine_radius_um
        if radius <= 0 or len(pairs) == 0 or volume.golgi_channel is None:
            return pairs
        refined = pairs.subset(slice(None))
        refined.golgi = refine_golgi(volume.data[volume.golgi_channel], pairs.golgi, volume.voxel_size, radius)
        return refined

    def peaks(self, output: NetworkOutput, decoding: Optional[DecodingSpec] = None) -> tuple[Peaks, Peaks]:
        """Every nucleus and every Golgi peak :meth:`decode` pairs from, before pairing.

        Parameters
        ----------
        output : NetworkOutput
        decoding : DecodingSpec, optional
            Default: the predictor's.

        Returns
        -------
        nuclei, golgi : Peaks
            ``(positions, voxels, heights)`` per class, in the model's grid (``output.resampling.to_input``
            maps positions to the input's voxels), as :func:`find_peaks`.
        """
        dec = decoding if decoding is not None else self.decoding
        maxima = output.maxima or (None, None)
        return (Peaks(*find_peaks(output.heatmap_nucleus, dec.peak_threshold_nucleus, dec.min_distance_nucleus_um,
                                  self.voxel_size, valley_ratio=dec.peak_valley_nucleus, maxima=maxima[0])),
                Peaks(*find_peaks(output.heatmap_golgi, dec.peak_threshold_golgi, dec.min_distance_golgi_um,
                                  self.voxel_size, valley_ratio=dec.peak_valley_golgi, maxima=maxima[1])))

    def _pairing_run(self, output: NetworkOutput, nuclei: Peaks, golgi: Peaks, dec: DecodingSpec,
                     explicit_delta: bool) -> PairingRun:
        """What pairing ``nuclei`` with ``golgi`` needs: the windows, each member's embeddings and push
        margin (``dec``'s for all where ``explicit_delta``, else each member's own) and the Golgi peaks'
        ridge scores (where the ridge weight counts)."""
        ridge = (ridge_scores(output.heatmap_golgi, golgi.voxels, golgi.heights, dec.ridge_radius_um,
                              self.voxel_size)
                 if dec.pairing_ridge_weight > 0 else np.zeros(len(golgi.positions)))
        deltas = [dec.embedding_delta if explicit_delta else m.spec.decoding.embedding_delta for m in self.members]
        return PairingRun(output.grid, output.embeddings, deltas, nuclei, golgi, ridge, dec, self.voxel_size)

    def _pair(self, run: PairingRun) -> Pairing:
        """The accepted pairs: by embedding (:func:`pair_by_embedding`), or by distance for ``ctrdet``."""
        if self.architecture != "cellpol":
            return pair_by_distance_only(run.nuclei, run.golgi, self.voxel_size, run.decoding.max_pair_distance_um)
        return pair_by_embedding(run)


def mirror_pad(part: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """``part`` ``(C, z, y, x)`` grown at the far end of each axis to ``window`` by reflecting it at its
    border (repeatedly where the window is more than twice as long; an axis one voxel long is repeated)."""
    out = part.float()
    for axis, size in enumerate(window):
        dim = axis + 1
        while out.shape[dim] < size:
            have = out.shape[dim]
            take = min(size - have, have - 1) if have > 1 else size - have
            index = (torch.arange(have - 2, have - 2 - take, -1, device=out.device) if have > 1
                     else torch.zeros(take, dtype=torch.long, device=out.device))
            out = torch.cat([out, out.index_select(dim, index)], dim=dim)
    return out


def _clip_points(points: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Keep mapped positions inside the image (half a voxel of rounding at the faces)."""
    if len(points) == 0:
        return np.zeros((0, 3))
    upper = np.asarray(shape, dtype=np.float64) - 1.0
    return np.clip(points, 0.0, upper)


def _check_compatible(members: Sequence[Member]) -> None:
    first = members[0]
    for other in members[1:]:
        a, b = first.spec, other.spec
        problems = []
        if not np.allclose(a.voxel_size, b.voxel_size, rtol=1e-6, atol=0):
            problems.append(f"voxel size {list(a.voxel_size)} vs {list(b.voxel_size)} µm")
        if a.network.architecture != b.network.architecture:
            problems.append(f"architecture {a.network.architecture} vs {b.network.architecture}")
        if a.network.spatial_dims != b.network.spatial_dims:
            problems.append(f"{a.network.spatial_dims}D vs {b.network.spatial_dims}D")
        if problems:
            raise CellPolError(
                f"Models '{first.name}' and '{other.name}' cannot form an ensemble: different "
                + "; ".join(problems) + ". Ensemble members must be trained at the same voxel size with the same "
                "kind of network."
            )
