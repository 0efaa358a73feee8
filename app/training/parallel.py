"""Patches simulated and cut in worker processes, for training on machines where one core cannot feed the GPU.

:class:`WorkerPatches` stands in for :class:`~app.training.data.PatchSampler` (the trainer only calls
``sample(rng)``): each worker process simulates a pool of its own, cuts augmented patches from it, and
replaces a quarter of its pool every ``refresh_every`` patches, so the model keeps seeing new scenes
without the training loop ever waiting for the simulator. On an H100 the network step takes tens of
milliseconds while one simulated volume takes about half a second and one augmented 32×128×128 patch
about 20 ms on one core: a single process would leave the GPU idle most of the time.

Patches arrive in whatever order the workers finish them, so a run with workers is not step-for-step
reproducible (each worker's stream is seeded, the interleaving is not); a run without them is. The
workers are started with ``spawn`` (safe whether or not CUDA is initialised in the parent), and only
numpy arrays and :class:`~app.core.pairs.PairSet` objects pass between our own processes.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_module
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from app.core.errors import CellPolError
from app.core.pairs import PairSet
from app.training.data import AugmentConfig, PatchSampler, synthetic_pool


@dataclass
class PoolRecipe:
    """What each worker simulates: keyword arguments of :func:`~app.training.data.synthetic_pool` (all but
    ``n`` and ``seed``), the pool size per worker and how often (in patches) a quarter of it is renewed."""

    voxel_size: tuple[float, float, float]
    pool_per_worker: int = 8
    refresh_every: int = 200
    options: dict[str, Any] = field(default_factory=dict)


def _worker(recipe: PoolRecipe, patch_shape: tuple[int, int, int], augment: AugmentConfig, seed: int,
            out: "mp.Queue", stop: "mp.Event") -> None:
    import torch

    torch.set_num_threads(1)
    try:
        pool = synthetic_pool(recipe.pool_per_worker, recipe.voxel_size, seed * 1000, **recipe.options)
        sampler = PatchSampler(pool, patch_shape, augment)
        rng = np.random.default_rng([seed, 17])
        made = 0
        while not stop.is_set():
            image, pairs = sampler.sample(rng)
            while not stop.is_set():
                try:
                    out.put((image, pairs.nuclei, pairs.golgi, pairs.voxel_size), timeout=0.5)
                    break
                except queue_module.Full:
                    continue
            made += 1
            if made % recipe.refresh_every == 0:
                fresh = synthetic_pool(max(1, recipe.pool_per_worker // 4), recipe.voxel_size,
                                       seed * 1000 + made, **recipe.options)
                start = (made // recipe.refresh_every) * len(fresh) % len(sampler.volumes)
                for i, volume in enumerate(fresh):
                    sampler.volumes[(start + i) % len(sampler.volumes)] = volume
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        out.put(("error", f"{type(exc).__name__}: {exc}"))


class WorkerPatches:
    """``workers`` processes simulating and cutting patches; ``sample(rng)`` returns the next one.

    Use as a context manager (or call :meth:`close`) so the workers end with the run.
    """

    def __init__(self, workers: int, recipe: PoolRecipe, patch_shape: Sequence[int],
                 augment: Optional[AugmentConfig] = None, seed: int = 0, queue_size: int = 64,
                 timeout_s: float = 600.0) -> None:
        if workers < 1:
            raise CellPolError(f"WorkerPatches needs at least one worker, got {workers}.")
        context = mp.get_context("spawn")
        self.patch_shape = tuple(int(p) for p in patch_shape)
        self.timeout_s = timeout_s
        self._queue = context.Queue(maxsize=queue_size)
        self._stop = context.Event()
        self._processes = [
            context.Process(target=_worker, args=(recipe, self.patch_shape, augment or AugmentConfig(),
                                                  seed * 100 + k, self._queue, self._stop), daemon=True)
            for k in range(workers)
        ]
        for process in self._processes:
            process.start()
        self.waited_s = 0.0  # time sample() spent waiting for a patch (the workers were too slow)

    def sample(self, rng: Optional[np.random.Generator] = None) -> tuple[np.ndarray, PairSet]:
        """The next patch ``(2, Z, Y, X)`` and its pairs in patch coordinates; ``rng`` is ignored."""
        started = time.perf_counter()
        deadline = started + self.timeout_s
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue_module.Empty:
                if not any(p.is_alive() for p in self._processes):
                    raise CellPolError("Every patch worker has stopped; see the log for why.") from None
                if time.perf_counter() > deadline:
                    raise CellPolError(f"No training patch arrived in {self.timeout_s:.0f} s.") from None
        self.waited_s += time.perf_counter() - started
        if isinstance(item[0], str):  # ("error", message)
            self.close()
            raise CellPolError(f"A patch worker failed: {item[1]}")
        image, nuclei, golgi, voxel_size = item
        return image, PairSet(nuclei, golgi, voxel_size=voxel_size)

    def close(self) -> None:
        self._stop.set()
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        self._queue.cancel_join_thread()

    def __enter__(self) -> "WorkerPatches":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
