"""Procedural simulator of two-channel nucleus + Golgi fluorescence volumes with ground truth.

The idea of NucGen3D / 3DMSL, without a GAN: lay out a flat monolayer of cells in µm, render textured
nuclei and Golgi (analytic shapes, or real 3DNGMic masks), add distractors, an uneven background, the
microscope's blur and camera noise, and record each cell's nucleus→Golgi pair where an annotator would
click it (the centroid of the object as rendered and visible in the volume).

Everything is specified in µm and converted by the voxel size, so that the same seed gives physically the
same scene at any voxel size (0.2–0.8 µm in xy, 0.25–1 µm in z). ``Z == 1`` gives a 2D image.
``SimConfig.layout_um`` replaces the random layout by given nucleus and Golgi centroids (e.g. real
annotations), which then are the ground truth.

Main entry points
-----------------
:func:`simulate`
    One :class:`~app.core.volume.Volume` (channel 0 = nuclei, 1 = Golgi) and its
    :class:`~app.core.pairs.PairSet`.
:func:`synthesize_dataset`
    ``n`` volumes written as ImageJ TIFF + vectors CSV (+ JSON sidecar), reproducible item by item.
:data:`PRESETS`
    Microscope presets: ``confocal``, ``confocal-low-snr``, ``widefield``, ``retina``.

Speed comes from rendering each object into its own bounding box, blurring each channel once and
drawing shot noise from a lookup table (``float32`` throughout): a 64×256×256×2 volume takes about
0.8 s on one core of a 2-core CPU (``benchmarks/synth_speed.py``).

Layout of the package (private modules; import from ``app.core.simulate``):

- ``_config``: :class:`Preset`, :data:`PRESETS`, the sample and layout variation ranges, :class:`SimConfig`.
- ``_shapes``: loading and transforming the real 3DNGMic masks.
- ``_scene``: the scene description (nuclei, Golgi, vessels, specks, fragments, in µm) and its sampling.
- ``_render``: rendering objects into local boxes, the cytoplasm, and the ground truth.
- ``_optics``: illumination, blur and haze, background, shot and read noise, the camera.
- ``_memory``: how much memory a simulation needs, and whether it is available.
- ``_dataset``: :func:`simulate`, :func:`item_seed`, :func:`synthesize_dataset` (:func:`synthesize_job`).
"""

from app.core.simulate._config import (
    LAYOUT_SCALES,
    LAYOUT_VARIATION,
    MAX_PAIR_LENGTH_UM,
    PRESETS,
    SAMPLE_SCALES,
    SAMPLE_VARIATION,
    Preset,
    SimConfig,
    scene_layout_options,
    varied_layout_options,
    varied_sample_options,
)
from app.core.simulate._dataset import GENERATOR, item_seed, simulate, synthesize_dataset, synthesize_job
from app.core.simulate._memory import (
    SIMULATE_BYTES_PER_VOXEL,
    available_memory_bytes,
    check_simulation_memory,
    simulation_memory_bytes,
)
from app.core.simulate._shapes import GOLGI_SHAPES_FILE, NUCLEUS_SHAPES_FILE, SHAPES_VOXEL_SIZE_3DNGMIC

__all__ = [
    "GENERATOR",
    "GOLGI_SHAPES_FILE",
    "LAYOUT_SCALES",
    "LAYOUT_VARIATION",
    "MAX_PAIR_LENGTH_UM",
    "NUCLEUS_SHAPES_FILE",
    "PRESETS",
    "Preset",
    "SAMPLE_SCALES",
    "SAMPLE_VARIATION",
    "SHAPES_VOXEL_SIZE_3DNGMIC",
    "SIMULATE_BYTES_PER_VOXEL",
    "SimConfig",
    "available_memory_bytes",
    "check_simulation_memory",
    "item_seed",
    "scene_layout_options",
    "simulate",
    "simulation_memory_bytes",
    "synthesize_dataset",
    "synthesize_job",
    "varied_layout_options",
    "varied_sample_options",
]
