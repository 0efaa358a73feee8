"""The ``cellpol`` command: the same jobs as the desktop app, headless, with progress bars.

Every problem the user can cause (bad file, wrong channel, missing voxel size) ends as one line on
stderr and a non-zero exit status, never a traceback. Core messages name settings; :func:`flag_hint`
adds the flags that set them.

Each command imports what it needs inside its function, deliberately: ``cellpol --help``, ``cellpol
info`` or a typo should not wait for torch, Qt and VTK to load (seconds on a cold disk), and a command
pays only for its own dependencies.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator, Optional, Sequence

from app import __version__
from app.core.errors import CellPolError

EXIT_OK = 0
EXIT_FAILED_ITEMS = 1  # the command ran, but some items (e.g. images of a batch) failed
EXIT_USAGE = 2  # the command could not run at all


def _voxel_size_arg(parser: argparse.ArgumentParser, required: bool = False, help_extra: str = "") -> None:
    parser.add_argument(
        "--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"), required=required,
        help="voxel size in µm (z y x)" + help_extra,
    )


def _series_arg(parser: argparse.ArgumentParser, help_text: str, allow_all: bool = True) -> None:
    """``--series N|all`` (``--scene`` is the same option under its older name)."""

    def parse(text: str):
        if allow_all and text.strip().lower() == "all":
            return "all"
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0:
            raise argparse.ArgumentTypeError(
                f"expected a series number from 0{' or all' if allow_all else ''}, got {text!r}")
        return value

    parser.add_argument("--series", "--scene", dest="series", type=parse, default=None,
                        metavar="N|all" if allow_all else "N", help=help_text)


def _cluster_args(parser: argparse.ArgumentParser, item: str) -> None:
    """``--workers N`` / ``--scheduler ADDRESS`` / ``--worker-threads T``: run the batch on a Dask cluster."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help=f"run on a local Dask cluster of N worker processes, one {item} per task")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help=f"run on a running Dask cluster (e.g. tcp://host:8786), one {item} per task; its workers "
                            "must reach the inputs, the models and --out by the same paths (shared storage) and "
                            "have CellPol Studio installed")
    parser.add_argument("--worker-threads", type=int, metavar="T",
                        help="torch threads per worker (default: the cores divided by --workers; on a --scheduler "
                             "worker, its CPUs divided by the tasks it runs at once)")


def _cluster_options(args: argparse.Namespace):
    """The :class:`~app.core.cluster.ClusterOptions` the flags ask for, or None (run here, serially)."""
    if args.workers is None and args.scheduler is None:
        if args.worker_threads is not None:
            raise CellPolError("--worker-threads needs --workers N or --scheduler ADDRESS.")
        return None
    from app.core.cluster import ClusterOptions

    options = ClusterOptions(workers=args.workers, scheduler=args.scheduler, torch_threads=args.worker_threads)
    options.check()
    return options


def _channel_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nucleus-channel", type=int, metavar="N", help="0-based index of the nucleus channel")
    parser.add_argument("--golgi-channel", type=int, metavar="G", help="0-based index of the Golgi channel")
    parser.add_argument(
        "--axes", metavar="AXES",
        help="axis order of a plain TIFF or .npy without metadata, e.g. ZCYX, CZYX, ZYX, YXZC (authors' RGB layout)",
    )


#: How each setting that core messages name (CellPolError.settings) is given on the command line.
SETTING_FLAGS = {
    "voxel_size": "--voxel-size Z Y X", "axes": "--axes AXES", "nucleus_channel": "--nucleus-channel N",
    "golgi_channel": "--golgi-channel G", "device": "--device", "window": "--window Z Y X",
    "batch_size": "--batch-size N", "method": "--method", "model": "--model PATH", "overwrite": "--overwrite",
    "images_dir": "--images DIR", "border_margin_um": "--border-margin", "zero_based": "--zero-based",
    "init": "--init", "calibrate": "--calibrate", "images": "--images DIR", "project": "--project DIR",
    "val_images": "--val-images DIR", "val_vectors": "--val-vectors DIR",
    "n_boot": "--bootstrap N", "n_perm": "--permutations N",
    "workers": "--workers N", "scheduler": "--scheduler ADDRESS", "torch_threads": "--worker-threads T",
}


def flag_hint(exc: BaseException) -> str:
    """`` (command line: --device cpu)`` for the settings an error names; ``""`` when it names none."""
    flags = []
    for name, value in (getattr(exc, "settings", None) or {}).items():
        flag = SETTING_FLAGS.get(name)
        if flag is None:
            continue
        if value is True or value is None:
            flags.append(flag)
        else:
            flags.append(f"{flag.split()[0]} {value}")
    return f" (command line: {' or '.join(flags)})" if flags else ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellpol",
        description="CellPol Studio: nucleus→Golgi polarity vectors in 3D microscopy. "
        "Without a command, opens the desktop app.",
    )
    parser.add_argument("--version", action="version", version=f"cellpol {__version__}")
    parser.add_argument("--demo", action="store_true", help="open the desktop app on a simulated demo volume")
    parser.add_argument("--selftest", action="store_true",
                        help="check this installation: open the window, predict the demo with the starter model, "
                             "check the vectors; exit 0, or 1 with the reason")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("gui", help="open the desktop app")
    p.add_argument("files", nargs="*", help="images to open")
    p.add_argument("--demo", action="store_true", help="open a simulated demo volume")
    p.add_argument("--screenshot", metavar="PNG",
                   help="render, save a full-window screenshot to PNG and exit (without FILE: the demo)")

    p = sub.add_parser("synth", help="write simulated two-channel volumes with ground-truth vectors")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, required=True, help="number of volumes")
    p.add_argument("--shape", nargs=3, type=int, metavar=("Z", "Y", "X"), default=None,
                   help="volume shape in voxels (Z=1 for 2D); default 64 256 256")
    _voxel_size_arg(p, help_extra="; default from the preset")
    p.add_argument("--preset", default="confocal", help="microscope preset (see --list-presets)")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    p.add_argument("--seed", type=int, default=0, help="random seed (volume k uses seed and k)")
    p.add_argument("--shapes-dir", help="folder with 3DNGMic object masks (nuclei_shapes.npz, Golgi_shapes.npz)")
    p.add_argument("--vary-samples", action="store_true",
                   help="each volume draws its cell density, distractors, stain brightness and optics from wide "
                        "ranges instead of the preset's fixed amounts (broader training data)")
    p.add_argument("--polarity-direction", nargs=3, type=float, metavar=("Z", "Y", "X"),
                   help="preferred nucleus→Golgi direction (z y x; e.g. 0 0 1 = +x, image right); default: none "
                        "(in-plane directions uniform, a few Golgi on top of their nucleus)")
    p.add_argument("--polarity-concentration", type=float, metavar="K",
                   help="von Mises–Fisher concentration κ around --polarity-direction (0 = uniform on the sphere, "
                        "5 = strong, 20 = tight; default 4)")
    _cluster_args(p, "volume")

    p = sub.add_parser("predict", help="predict polarity vectors for images or folders of images")
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    p.add_argument("--out", required=True,
                   help="output folder for <stem>.pred.vectors.csv files (never taken for annotations)")
    p.add_argument("--method", choices=("auto", "cellpol", "classic"), default="auto",
                   help="cellpol = learned model, classic = Otsu peer; auto = the learned model when one is "
                        "available, otherwise classic")
    p.add_argument("--model", action="append", metavar="PATH", help="model file (.json); repeat for an ensemble")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--overwrite", action="store_true", help="recompute images whose output already exists")
    p.add_argument("--window", nargs=3, type=int, metavar=("Z", "Y", "X"),
                   help="largest sliding window in voxels at the model's voxel size (smaller = less memory)")
    p.add_argument("--batch-size", type=int, metavar="N", help="windows per network call")
    p.add_argument("--tta", action="store_true",
                   help="average the network over the image and its mirror images in y, x and both: about 3-4x "
                        "the time, fewer false vectors on images unlike the training data (docs/models)")
    _series_arg(p, "which series (scene) of multi-series files (LIF, CZI, ND2, OME-TIFF, OME-Zarr) to predict: N "
                   "(0-based) or all, each written as <stem>_s<N>-<name>.pred.vectors.csv; default 0")
    _voxel_size_arg(p, help_extra="; overrides the file's metadata, required where it has none")
    _channel_args(p)
    _cluster_args(p, "image")

    p = sub.add_parser(
        "train", help="train or fine-tune a model on your annotated images",
        description="Fine-tune the starter model (or train from scratch with --init none) on images with "
                    "<name>.vectors.csv annotations. Validation uses whole images: --val-images, else a held-out "
                    "image, else (one image) the training image itself. A killed run resumes when the same "
                    "command is run again.",
    )
    p.add_argument("--images", nargs="+", metavar="DIR", help="training images: folders and/or files")
    p.add_argument("--project", metavar="DIR",
                   help="train on the annotated images of a CellPol project (instead of --images/--vectors)")
    p.add_argument("--vectors", metavar="DIR", help="folder of <name>.vectors.csv (default: beside the images)")
    p.add_argument("--out", required=True, metavar="MODEL", help="model to write (MODEL.json + MODEL.safetensors)")
    p.add_argument("--val-images", nargs="+", metavar="DIR", help="validation images (other images than the training ones)")
    p.add_argument("--val-vectors", metavar="DIR", help="folder of the validation vectors (default: beside the images)")
    p.add_argument("--steps", type=int, default=500, metavar="N", help="training steps (batches); default 500")
    p.add_argument("--init", default="starter", metavar="MODEL|none",
                   help="model to fine-tune (default: the bundled starter model); 'none' trains from scratch")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (split, initialisation, batches)")
    p.add_argument("--batch-size", type=int, default=4, metavar="N", help="patches per step (default 4)")
    p.add_argument("--lr", type=float, metavar="LR", help="peak learning rate (default 3e-4 fine-tuning, 2e-3 from scratch)")
    p.add_argument("--patch", nargs=3, type=int, metavar=("Z", "Y", "X"),
                   help="patch size in voxels at the model's voxel size (default: about 16×48×48 µm)")
    p.add_argument("--epoch-steps", type=int, metavar="N", help="steps between validations (default 100)")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="mix N simulated volumes into training (the paper's Synthetic+Real recipe)")
    p.add_argument("--synthetic-dir", metavar="DIR", help="mix in simulated volumes from DIR (cellpol synth output)")
    p.add_argument("--synthetic-fraction", type=float, default=0.5, metavar="F",
                   help="share of patches drawn from the simulated volumes (default 0.5)")
    p.add_argument("--model-voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"),
                   help="from scratch only: voxel size (µm) the model works at (default: from the images)")
    p.add_argument("--base-filters", type=int, default=8, metavar="N", help="from scratch only: network width (default 8)")
    p.add_argument("--augment", nargs="+", metavar="NAME=P",
                   help="augmentation probabilities, e.g. rotate90=0.5 noise=0 (flip_y, flip_x, rotate90, flip_z, "
                        "intensity, gamma, noise, appearance)")
    p.add_argument("--no-augment", action="store_true", help="no augmentation at all")
    p.add_argument("--embedding-weight", type=float, default=None, metavar="W",
                   help="weight of the pull/push embedding loss (default 0.5 fine-tuning, 1 = the paper's from scratch)")
    p.add_argument("--calibrate", choices=("auto", "always", "never"), default="auto",
                   help="re-choose the decoding thresholds on the validation images: auto = from scratch, or "
                        "when the validation images hold at least 100 pairs (else the initial model's are kept)")
    p.add_argument("--keep", choices=("auto", "best", "last"), default="auto",
                   help="which weights become the model: the epoch with the best validation score, the last, or "
                        "auto = the best when the validation images hold at least 100 pairs, else the last")
    p.add_argument("--encoder-lr-scale", type=float, default=1.0, metavar="S",
                   help="learning rate of the network's encoder against the rest's, 0 to 1 (default 1: alike; "
                        "0 freezes the encoder's weights)")
    p.add_argument("--init-share", type=float, default=None, metavar="S",
                   help="fine-tuning: average the kept weights with the initial model's, this share of the latter "
                        "(WiSE-FT, e.g. 0.5; default 0: the fine-tuned weights alone)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model and discard its checkpoints")
    _voxel_size_arg(p, help_extra="; overrides the files' metadata, required where they have none")
    _channel_args(p)

    p = sub.add_parser(
        "vox2vox", help="learn to synthesise images from your annotated images, and generate new ones",
        description="Vox2Vox (3DNGMic): object masks from your annotations train a 3D pix2pix generator masks → "
                    "image; new random layouts of your objects then become new images with exact vectors.",
    )
    vox = p.add_subparsers(dest="vox2vox_command", metavar="ACTION", required=True)
    q = vox.add_parser(
        "train", help="train a generator on images with <name>.vectors.csv annotations",
        description="Train a Vox2Vox generator. The 3D SSIM between held-out real images and the generator's "
                    "output from their masks is reported as it trains. A killed run resumes when the same command "
                    "is run again.",
    )
    q.add_argument("--images", nargs="+", required=True, metavar="DIR", help="training images: folders and/or files")
    q.add_argument("--vectors", metavar="DIR", help="folder of <name>.vectors.csv (default: beside the images)")
    q.add_argument("--out", required=True, metavar="G", help="generator to write (G.json + G.safetensors)")
    q.add_argument("--val-images", nargs="+", metavar="DIR",
                   help="images for the SSIM (default: a held-out training image)")
    q.add_argument("--val-vectors", metavar="DIR", help="folder of the validation vectors (default: beside them)")
    q.add_argument("--steps", type=int, default=2000, metavar="N", help="training steps (default 2000)")
    q.add_argument("--patch", nargs=3, type=int, metavar=("Z", "Y", "X"),
                   help="patch size in voxels at the model's voxel size (default about 12×32×32 µm)")
    q.add_argument("--batch-size", type=int, default=2, metavar="N", help="patches per step (default 2)")
    q.add_argument("--lr", type=float, default=2e-4, metavar="LR", help="Adam learning rate (default 2e-4)")
    q.add_argument("--l1-weight", type=float, default=100.0, metavar="W", help="λ of the L1 term (default 100)")
    q.add_argument("--eval-every", type=int, default=100, metavar="N", help="steps between SSIM evaluations")
    q.add_argument("--levels", type=int, default=4, metavar="N", help="generator depth (default 4)")
    q.add_argument("--base-filters", type=int, default=16, metavar="N", help="generator width (default 16)")
    q.add_argument("--model-voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"),
                   help="voxel size (µm) the generator works at (default: the images', within 0.25–1 µm in x/y)")
    q.add_argument("--nucleus-box", nargs=3, type=float, metavar=("Z", "Y", "X"), default=None,
                   help="box (µm) for each nucleus's Otsu mask (default 9 16 16, the paper's)")
    q.add_argument("--golgi-box", nargs=3, type=float, metavar=("Z", "Y", "X"), default=None,
                   help="box (µm) for each Golgi's Otsu mask (default 5 8 8, the paper's)")
    q.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    q.add_argument("--seed", type=int, default=0, metavar="S")
    q.add_argument("--overwrite", action="store_true", help="replace an existing generator and discard its checkpoints")
    _voxel_size_arg(q, help_extra="; overrides the files' metadata, required where they have none")
    _channel_args(q)
    q = vox.add_parser(
        "generate", help="generate volumes with exact ground-truth vectors from a generator",
        description="Write the 3DNGMic layout (inputs/, outputs/, vectors/, heatmaps/ as k.npy) and gen_kkkk.tif + "
                    "gen_kkkk.vectors.csv, which `cellpol train --synthetic-dir DIR` mixes into training.",
    )
    q.add_argument("--model", required=True, metavar="G", help="generator file (G.json)")
    q.add_argument("--n", type=int, required=True, metavar="N", help="number of volumes")
    q.add_argument("--out", required=True, metavar="DIR", help="output folder")
    q.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (volume k uses seed and k)")
    q.add_argument("--shape", nargs=3, type=int, metavar=("Z", "Y", "X"),
                   help="volume size in voxels at the generator's voxel size (default: its training images')")
    q.add_argument("--dropout", action="store_true", help="keep the generator's dropout on for more variety")
    q.add_argument("--start-index", type=int, default=0, metavar="K", help="number of the first volume (default 0)")
    q.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))

    p = sub.add_parser("evaluate", help="score predictions against ground truth (the paper's protocol)")
    p.add_argument("--gt", required=True, help="folder of ground-truth <stem>.vectors.csv (annotations)")
    p.add_argument("--pred", required=True,
                   help="folder of predicted <stem>.pred.vectors.csv (or <stem>.vectors.csv from older versions)")
    p.add_argument("--images", metavar="DIR",
                   help="folder of the images: their sizes for the border exclusion where the vectors' sidecars "
                        "do not record them")
    p.add_argument("--axes", metavar="AXES", help="axis order of those images where their files do not say it")
    p.add_argument("--out", help="folder for the CSV tables and the curves PNG (default: PRED/evaluation)")
    p.add_argument("--border-margin", type=float, default=7.0, metavar="UM",
                   help="leave out pairs within this many µm of the image border in x/y (0 = keep all)")
    _voxel_size_arg(p, help_extra="; needed when the CSV sidecars carry none")

    p = sub.add_parser(
        "stats", help="polarity statistics, figures and a PDF report of vectors files (per image, per group, "
                      "between groups)",
        description="Statistics of nucleus→Golgi vectors: per vector (lengths in µm, azimuth, elevation, angle to a "
                    "reference), per image and per group (mean direction, mean resultant length, Rayleigh and V "
                    "tests, bootstrap CIs with the image as the unit) and between groups (permutation tests over "
                    "images or animals, and the per-cell Watson-Williams test with its caveat). Writes vectors.csv, "
                    "summary.csv, tests.csv (each with a JSON sidecar of provenance), rose / elevation / "
                    "equal-area / length figures (PNG and SVG) and report.pdf into --out. "
                    "Azimuth convention: the in-plane angle from the image's +x axis (to the right), "
                    "counter-clockwise as the image is displayed (rows grow downwards), 0-360°; elevation: the "
                    "angle out of the image plane, positive towards deeper slices (increasing z); the full "
                    "statement is in every output.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUTS",
                   help="vectors CSVs (<name>.vectors.csv annotations, <name>.pred.vectors.csv predictions) and/or "
                        "folders of them")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _voxel_size_arg(p, help_extra="; for files whose sidecar records none (a sidecar's value wins)")
    reference = p.add_mutually_exclusive_group()
    reference.add_argument("--reference-axis", nargs=3, type=float, metavar=("X", "Y", "Z"),
                           help="one reference direction for every image (e.g. the flow): a direction x y z, not a "
                                "position (x to the right, y along the rows, z towards deeper slices; any length)")
    reference.add_argument("--reference-point", nargs=3, type=float, metavar=("X", "Y", "Z"),
                           help="a reference point in voxels (x = column, y = row, z = slice, 0-based), e.g. the "
                                "optic nerve head; each cell's reference is the direction from the point to its "
                                "nucleus (radial polarity)")
    reference.add_argument("--reference-csv", metavar="F",
                           help="a reference per image: CSV image,kind,x,y,z with kind axis (a direction) or point "
                                "(voxels), as the two options above")
    p.add_argument("--groups", metavar="F",
                   help="CSV image,group[,animal]: the condition of each image (and its animal, then the unit of the "
                        "between-group tests); default: one group 'all'")
    p.add_argument("--min-score", type=float, metavar="S",
                   help="leave out predicted pairs scoring below S (manual and corrected pairs are kept)")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N",
                   help="bootstrap resamples for the confidence intervals (default 2000)")
    p.add_argument("--permutations", type=int, default=5000, metavar="N",
                   help="permutations for the between-group tests (default 5000)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed of bootstrap and permutations")

    p = sub.add_parser("import-legacy", help="convert the authors' header-less vectors CSV or 3DNGMic .npy")
    p.add_argument("source", help="legacy CSV (YN,XN,YG,XG,ZN,ZG) or 3DNGMic vectors .npy")
    p.add_argument("--out", required=True, help="output <name>.vectors.csv")
    p.add_argument("--zero-based", action="store_true",
                   help="coordinates are 0-based (files saved by the annotation tool); default: 1-based Crop files")
    _voxel_size_arg(p)

    p = sub.add_parser("info", help="describe an image: its series (scenes), shape, channels, voxel size")
    p.add_argument("image")
    _series_arg(p, "the series (scene) described in detail (0-based; default 0)", allow_all=False)
    _voxel_size_arg(p)
    _channel_args(p)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.selftest:
        from app.ui.selftest import run_selftest

        return run_selftest()
    handlers = {
        None: _cmd_gui, "gui": _cmd_gui, "synth": _cmd_synth, "predict": _cmd_predict,
        "evaluate": _cmd_evaluate, "stats": _cmd_stats, "train": _cmd_train, "vox2vox": _cmd_vox2vox, "import-legacy": _cmd_import_legacy, "info": _cmd_info,
    }
    try:
        with _warnings_as_lines():
            return handlers[args.command](args)
    except CellPolError as exc:
        print(f"cellpol: error: {exc}{flag_hint(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # a read or write the job did not expect to fail: still one clear line
        from app.core.fileutil import describe_os_error

        print(f"cellpol: error: {describe_os_error(exc, action='read or write')}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print("cellpol: error: out of memory: the computer's memory is too small for this job. Use smaller "
              "images or settings, or a machine with more memory.", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("cellpol: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """The app's own warnings (implausible input) as one ``cellpol: warning:`` line each, not Python's
    file:line form; other warnings as usual."""
    import warnings

    from app.core.volume import ImplausibleInputWarning

    with warnings.catch_warnings():
        default = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, ImplausibleInputWarning):
                print(f"cellpol: warning: {message}", file=sys.stderr)
            else:
                default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def _drive(job, desc: str, unit: str, show_warnings: bool = True, per_item: bool = False, on_event=None):
    """Run a job (:mod:`app.core.jobs`) with a progress bar; Notes and warnings as lines (``cellpol:
    warning:``); ``on_event`` sees every event too. Returns the job's result.

    The bar counts the job's Progress events, or with ``per_item`` its ItemDone events only (the items of a
    batch), the progress inside an item then showing beside it."""
    from tqdm import tqdm

    from app.core.jobs import ItemDone, JobWarning, Note, Progress
    from app.core.jobs import run as run_job

    bar = None

    def say(line: str) -> None:
        (bar.write(line, file=sys.stderr) if bar is not None else print(line, file=sys.stderr))

    def on_any(event) -> None:
        nonlocal bar
        if isinstance(event, Progress):
            counted = isinstance(event, ItemDone) or not per_item
            if bar is None:
                bar = tqdm(total=event.total if counted else None, desc=desc, unit=unit, file=sys.stderr,
                           dynamic_ncols=True)
            if counted:
                bar.total = event.total
                bar.update(event.done - bar.n)
                bar.set_postfix_str("", refresh=False)
            else:
                bar.set_postfix_str(f"{event.message} {event.done}/{event.total}".strip())
        elif isinstance(event, Note):
            say(event.message)
        elif isinstance(event, JobWarning) and show_warnings:
            say(f"cellpol: warning: {event.message}")
        if on_event is not None:
            on_event(event, say)

    try:
        return run_job(job, on_any)
    finally:
        if bar is not None:
            bar.close()


# --- commands -----------------------------------------------------------------------------
def _cmd_gui(args: argparse.Namespace) -> int:
    from app.ui.main_window import run_app

    return run_app(files=getattr(args, "files", []) or [], demo=bool(args.demo),
                   screenshot=getattr(args, "screenshot", None))


def _cmd_synth(args: argparse.Namespace) -> int:
    from app.core import simulate

    if args.list_presets:
        for name, preset in simulate.PRESETS.items():
            print(f"{name}: {getattr(preset, 'description', '')}".rstrip(": "))
        return EXIT_OK
    if args.n < 1:
        raise CellPolError("--n must be at least 1.")
    if args.preset not in simulate.PRESETS:
        raise CellPolError(f"Unknown preset {args.preset!r}; choose one of {', '.join(simulate.PRESETS)}.")
    if args.shape is not None and min(args.shape) < 1:
        raise CellPolError(f"--shape must be positive, got {args.shape}.")
    options = {}
    if args.shape is not None:
        options["shape"] = tuple(args.shape)
    if args.voxel_size is not None:
        from app.core.volume import parse_voxel_size

        options["voxel_size"] = parse_voxel_size(args.voxel_size)
    if args.shapes_dir:
        options["shapes_dir"] = args.shapes_dir
    options.update(_polarity_options(args))
    cluster = _cluster_options(args)
    if cluster is None:
        job = simulate.synthesize_job(args.out, args.n, preset=args.preset, seed=args.seed,
                                      vary_samples=args.vary_samples, **options)
    else:
        from app.core.cluster import synthesize_cluster_job

        job = synthesize_cluster_job(args.out, args.n, cluster, preset=args.preset, seed=args.seed,
                                     vary_samples=args.vary_samples, **options)
    paths = _drive(job, "synth", "vol")
    print(f"Wrote {len(paths)} volumes with ground-truth vectors to {args.out}")
    if len(paths) < args.n:
        print(f"{args.n - len(paths)} volume(s) failed (see the warnings above); run again to write them.",
              file=sys.stderr)
        return EXIT_FAILED_ITEMS
    return EXIT_OK


def _polarity_options(args: argparse.Namespace) -> dict:
    """``SimConfig.polarity_direction`` / ``polarity_concentration`` from ``synth``'s flags (none given: the
    simulator's own default, no preferred direction)."""
    options: dict = {}
    if args.polarity_concentration is not None:
        if args.polarity_direction is None:
            raise CellPolError("--polarity-concentration needs --polarity-direction Z Y X (the direction it "
                               "concentrates around).")
        if not 0.0 <= args.polarity_concentration < float("inf"):
            raise CellPolError(f"--polarity-concentration must be a number >= 0, got {args.polarity_concentration}.")
        options["polarity_concentration"] = args.polarity_concentration
    if args.polarity_direction is not None:
        options["polarity_direction"] = tuple(args.polarity_direction)
    return options


def _predictor_spec(args: argparse.Namespace):
    """The :class:`~app.core.batch.PredictorSpec` the flags ask for (``--method auto`` decided here)."""
    from app.core.batch import PredictorSpec

    method = args.method
    if method == "auto":
        method = "cellpol" if args.model or _starter_model_available() else "classic"
        print(f"Method: {method}" + ("" if method == "cellpol" else " (no learned model available)"),
              file=sys.stderr)
    models = tuple(str(Path(m).resolve()) for m in args.model or ()) if method == "cellpol" else ()
    if getattr(args, "tta", False) and method != "cellpol":
        print("Note: --tta applies to the learned model only; the classic method ignores it.", file=sys.stderr)
    return PredictorSpec(method, models, args.device, tuple(args.window) if args.window else None, args.batch_size,
                         tta=bool(getattr(args, "tta", False)))


def _make_predictor(args: argparse.Namespace):
    """Return (predictor, provenance) for the chosen method."""
    from app.core.batch import describe_provenance

    spec = _predictor_spec(args)
    predictor, provenance = spec.build()  # one clear error when no starter is installed or a model is damaged
    if spec.method == "cellpol":
        print(describe_provenance(provenance), file=sys.stderr)
    return predictor, provenance


def _starter_model_available() -> bool:
    from app.core.inference import find_starter_model

    return find_starter_model(spatial_dims=None) is not None


def _cmd_predict(args: argparse.Namespace) -> int:
    from app.core.batch import SUMMARY_NAME, ReadOptions, predict_batch
    from app.core.errors import OutputError
    from app.core.fileutil import ensure_folder
    from app.core.imageio import find_images
    from app.core.jobs import ItemDone
    from app.core.volume import parse_voxel_size

    options = ReadOptions(parse_voxel_size(args.voxel_size), args.axes, args.nucleus_channel, args.golgi_channel)
    images = find_images(args.inputs)
    if not images:
        raise CellPolError("No images found in the given inputs (looked for .tif, .tiff, .ome.tif, .npy, .czi, "
                           ".lif, .nd2 and OME-Zarr folders).")
    images = _series_items(images, args.series)
    cluster = _cluster_options(args)
    ensure_folder(args.out)  # before loading a model
    if cluster is None:
        predictor, provenance = _make_predictor(args)
        job = predict_batch(images, args.out, predictor, options, provenance, overwrite=args.overwrite)
    else:  # each worker builds the predictor itself
        from app.core.cluster import predict_batch_cluster

        job = predict_batch_cluster(images, args.out, _predictor_spec(args), cluster, options,
                                    overwrite=args.overwrite)
    records = []
    summary = Path(args.out) / SUMMARY_NAME

    def on_event(event, say) -> None:
        if isinstance(event, ItemDone):
            records.append(event.item)
            if event.item.status == "failed":
                say(f"FAILED {event.item.image}: {event.item.error}{flag_hint(event.item)}")

    try:
        _drive(job, "predict", "img", per_item=True, on_event=on_event)
    except OutputError:
        done = sum(r.status in ("ok", "skipped") for r in records)
        print(f"Stopped: {done} image(s) done are listed in {summary}.", file=sys.stderr)
        raise
    done = sum(r.status == "ok" for r in records)
    skipped = sum(r.status == "skipped" for r in records)
    failed = sum(r.status == "failed" for r in records)
    print(f"{done} predicted, {skipped} skipped (output existed; --overwrite to redo), {failed} failed. "
          f"Summary: {summary}")
    return EXIT_FAILED_ITEMS if failed else EXIT_OK


def _series_items(images: list, series) -> list:
    """The batch's items: each image, or with ``--series`` one :class:`~app.core.batch.SeriesItem` per chosen series
    of a multi-series file (a file that cannot be listed stays as it is; the batch then reports its error)."""
    from app.core.batch import SeriesItem
    from app.core.imageio import list_series

    items: list = []
    for image in images:
        if series is None:
            if Path(image).suffix.lower() in (".lif", ".czi", ".nd2", ".zarr"):
                with contextlib.suppress(CellPolError):
                    found = list_series(image)
                    if len(found) > 1:
                        print(f"{image}: {len(found)} series; predicting series 0 ({found[0].name}). Use "
                              "--series N or --series all for the others.", file=sys.stderr)
            items.append(image)
            continue
        try:
            found = list_series(image)
        except CellPolError:
            items.append(image if series in (0, "all") else SeriesItem(Path(image), series))
            continue
        if series == "all":
            items += [SeriesItem(Path(image), s.index, s.name) for s in found] if len(found) > 1 else [image]
        elif len(found) == 1 and series == 0:
            items.append(image)
        else:
            name = found[series].name if series < len(found) else ""
            items.append(SeriesItem(Path(image), series, name))
    return items


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from app.core import evaluate
    from app.core.volume import parse_voxel_size

    job = evaluate.evaluate_job(
        args.gt, args.pred, voxel_size=parse_voxel_size(args.voxel_size), border_margin_um=args.border_margin,
        images_dir=args.images, image_axes=args.axes,
    )
    result = _drive(job, "evaluate", "img", show_warnings=False)  # the table ends with the warnings
    print(evaluate.format_table(result))
    out = Path(args.out) if args.out else Path(args.pred) / "evaluation"
    written = evaluate.write_evaluation(result, out)
    for path in written.values():
        print(f"wrote {path}")
    return EXIT_OK


def _cmd_stats(args: argparse.Namespace) -> int:
    from app.core.stats import Reference
    from app.core.stats.command import CSV_FILES, REPORT_FILE, format_summary, stats_job
    from app.core.stats.figures import FIGURES
    from app.core.volume import parse_voxel_size

    reference = None
    if args.reference_axis is not None:
        reference = Reference("axis", tuple(args.reference_axis))
    elif args.reference_point is not None:
        reference = Reference("point", tuple(args.reference_point))
    job = stats_job(args.inputs, args.out, voxel_size=parse_voxel_size(args.voxel_size), reference=reference,
                    reference_csv=args.reference_csv, groups_csv=args.groups, min_score=args.min_score,
                    n_boot=args.bootstrap, n_perm=args.permutations, seed=args.seed)
    result = _drive(job, "stats", "step")
    print(format_summary(result))
    print(f"\nWrote to {result.out_dir}: {', '.join(CSV_FILES.values())} (each with a .json sidecar of provenance), "
          f"{', '.join(FIGURES)} (.png and .svg) and {REPORT_FILE}")
    return EXIT_OK


def _fmt_rate(value) -> str:
    return "—" if value is None or value != value else f"{value:.3f}"


def _cmd_train(args: argparse.Namespace) -> int:
    from app.core import evaluate
    from app.core.volume import parse_voxel_size
    from app.training.finetune import TrainingOptions, output_paths, run_training

    options = TrainingOptions(
        augment=_augment_arg(args.augment, args.no_augment), embedding_weight=args.embedding_weight,
        images=args.images, out=args.out, vectors=args.vectors, project=args.project, val_images=args.val_images,
        val_vectors=args.val_vectors, steps=args.steps, init=args.init, device=args.device, seed=args.seed,
        voxel_size=parse_voxel_size(args.voxel_size), axes=args.axes, nucleus_channel=args.nucleus_channel,
        golgi_channel=args.golgi_channel, batch_size=args.batch_size, learning_rate=args.lr,
        patch_shape=tuple(args.patch) if args.patch else None, epoch_steps=args.epoch_steps,
        synthetic=args.synthetic, synthetic_dir=args.synthetic_dir, synthetic_fraction=args.synthetic_fraction,
        model_voxel_size=args.model_voxel_size, base_filters=args.base_filters, calibrate=args.calibrate, keep=args.keep,
        init_share=args.init_share, encoder_lr_scale=args.encoder_lr_scale, overwrite=args.overwrite,
    )
    paths = output_paths(args.out)
    baseline = {}

    def report(event, say) -> None:
        kind = event.kind
        if kind == "info":
            say(event.message)
        elif kind == "baseline":
            baseline.update(event.metrics)
            say("Initial model on the validation images: " + _metrics_line(event.metrics))
        elif kind == "epoch":
            say(f"epoch {event.epoch} (step {event.step}): loss {event.losses.get('total', float('nan')):.4f}"
                + (f", validation loss {event.metrics['val_loss']:.4f}" if "val_loss" in event.metrics else "")
                + (", " + _metrics_line(event.metrics) if "tpr0" in event.metrics else "")
                + ("  *best" if event.best else ""))
        elif kind == "calibration":
            m = event.metrics
            say(f"Calibrated decoding: peak thresholds nucleus {m['peak_threshold_nucleus']:g}, Golgi "
                f"{m['peak_threshold_golgi']:g}; minimum distances {m['min_distance_nucleus_um']:g} / "
                f"{m['min_distance_golgi_um']:g} µm; vessel (ridge) weight {m.get('pairing_ridge_weight', 0.0):g} "
                f"(TPR − FDR at τL=5: {_fmt_rate(m.get('j'))})")
        elif kind == "done":
            print(f"\nValidation ({event.message})")
            if event.data is not None:
                print(evaluate.format_table(event.data))
            if baseline:
                print("before: " + _metrics_line(baseline))
            print("after:  " + _metrics_line(event.metrics))
            minutes = event.seconds / 60
            print(f"{event.total_steps} steps in {minutes:.1f} min ({event.seconds / max(1, event.total_steps):.2f} "
                  f"s/step). Model: {event.path}")
            print(f"Losses: {paths['log']}; validation per epoch: {paths['validation_log']}")
            print(f"Predict with: cellpol predict IMAGES --model {event.path} --out OUTPUT_FOLDER")

    return _run_training_job(lambda cancel: run_training(options, cancel=cancel), report, paths["checkpoints"],
                             lambda e: {"loss": f"{e.losses['total']:.4f}"})


def _cmd_vox2vox(args: argparse.Namespace) -> int:
    if args.vox2vox_command == "generate":
        from app.training.vox2vox import generate_job

        if args.n < 1:
            raise CellPolError("--n must be at least 1.")
        paths = _drive(generate_job(args.model, args.n, args.out, seed=args.seed, shape=args.shape,
                                    dropout=args.dropout, device=args.device, start_index=args.start_index),
                       "generate", "vol")
        print(f"Wrote {len(paths)} volumes with ground-truth vectors to {args.out} (3DNGMic folders inputs/, outputs/, "
              f"vectors/, heatmaps/ and gen_*.tif + gen_*.vectors.csv). Mix them into training with: "
              f"cellpol train ... --synthetic-dir {args.out}")
        return EXIT_OK
    return _vox2vox_train(args)


def _vox2vox_train(args: argparse.Namespace) -> int:
    from app.core.volume import parse_voxel_size
    from app.training.vox2vox import GOLGI_BOX_UM, NUCLEUS_BOX_UM, Vox2VoxOptions, output_paths, train_vox2vox

    options = Vox2VoxOptions(
        images=args.images, vectors=args.vectors, out=args.out, val_images=args.val_images,
        val_vectors=args.val_vectors, steps=args.steps, patch_shape=tuple(args.patch) if args.patch else None,
        batch_size=args.batch_size, learning_rate=args.lr, l1_weight=args.l1_weight, seed=args.seed,
        device=args.device, voxel_size=parse_voxel_size(args.voxel_size), axes=args.axes,
        nucleus_channel=args.nucleus_channel, golgi_channel=args.golgi_channel,
        model_voxel_size=args.model_voxel_size, eval_every=args.eval_every, levels=args.levels,
        base_filters=args.base_filters, nucleus_box_um=args.nucleus_box or NUCLEUS_BOX_UM,
        golgi_box_um=args.golgi_box or GOLGI_BOX_UM, overwrite=args.overwrite,
    )
    paths = output_paths(args.out)

    def report(event, say) -> None:
        if event.kind == "info":
            say(event.message)
        elif event.kind == "epoch":
            m = event.metrics
            say(f"step {event.step}: SSIM {m['ssim']:.3f} (nucleus {m['ssim_nucleus']:.3f}, Golgi {m['ssim_golgi']:.3f}) "
                f"on the held-out volumes; L1 {m['l1']:.3f}")
        elif event.kind == "done":
            m = event.metrics
            print(f"\nSSIM between the held-out real volumes and the generator's output from their masks: "
                  f"{m.get('ssim', float('nan')):.3f} (nucleus {m.get('ssim_nucleus', float('nan')):.3f}, Golgi "
                  f"{m.get('ssim_golgi', float('nan')):.3f}); {event.message}")
            print(f"{event.total_steps} steps in {event.seconds / 60:.1f} min. Generator: {event.path}")
            print(f"Losses: {paths['log']}; SSIM per evaluation: {paths['eval_log']}")
            print(f"Generate with: cellpol vox2vox generate --model {event.path} --n 20 --out OUTPUT_FOLDER")

    return _run_training_job(lambda cancel: train_vox2vox(options, cancel=cancel), report, paths["checkpoints"],
                             lambda e: {"G": f"{e.losses['g_total']:.2f}", "D": f"{e.losses['d']:.3f}"})


@contextlib.contextmanager
def _stop_on_ctrl_c(cancel) -> Iterator[None]:
    """First Ctrl+C cancels ``cancel`` (the job saves a checkpoint and stops); a second stops at once."""
    def on_interrupt(signum, frame):
        cancel.cancel()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nStopping after this step and saving a checkpoint (Ctrl+C again to stop at once)...",
              file=sys.stderr)

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_interrupt) if in_main_thread else None
    try:
        yield
    finally:
        if in_main_thread and previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run_training_job(job, report, checkpoints, postfix) -> int:
    """Drive a training job (``job(cancel)`` → events) with a step progress bar; ``report(event, say)``
    handles every other event. Ctrl+C stops it with a checkpoint (exit 130)."""
    from tqdm import tqdm

    from app.core.errors import CancelledError
    from app.core.jobs import CancelToken

    cancel = CancelToken()
    bar = reading = None
    step = 0

    def say(message: str) -> None:
        (bar.write(message, file=sys.stderr) if bar is not None else print(message, file=sys.stderr))

    with _stop_on_ctrl_c(cancel):
        try:
            for event in job(cancel):
                step = max(step, event.step)
                if event.kind == "loading":  # reading the images: a bar of its own when there are a few
                    if event.total_steps > 3 and reading is None:
                        reading = tqdm(total=event.total_steps, desc="read", unit="img", file=sys.stderr,
                                       dynamic_ncols=True)
                    if reading is not None:
                        reading.update(event.step - reading.n)
                        if event.step == event.total_steps:
                            reading.close()
                            reading = None
                    continue
                if event.kind == "step":
                    if bar is None:
                        bar = tqdm(total=event.total_steps, initial=event.step - 1, desc="train", unit="step",
                                   file=sys.stderr, dynamic_ncols=True)
                    bar.update(event.step - bar.n)
                    bar.set_postfix(postfix(event), refresh=False)
                    continue
                if event.kind in ("calibration", "done") and bar is not None:
                    bar.close()
                    bar = None
                report(event, say)
        except CancelledError:
            print(f"\nStopped at step {step}; checkpoint saved in {checkpoints}. Run the same command again to "
                  "resume.", file=sys.stderr)
            return 130
        finally:
            for progress_bar in (bar, reading):
                if progress_bar is not None:
                    progress_bar.close()
    return EXIT_OK


def _augment_arg(items, off: bool):
    from app.training.data import AugmentConfig

    if off:
        return AugmentConfig.off()
    values = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            values[name.strip()] = float(value)
        except ValueError:
            raise CellPolError(f"--augment takes NAME=PROBABILITY pairs, e.g. noise=0.3; got {item!r}.") from None
        if not sep:
            raise CellPolError(f"--augment takes NAME=PROBABILITY pairs, e.g. noise=0.3; got {item!r}.")
    return AugmentConfig.from_dict({**AugmentConfig().to_dict(), **values})


def _metrics_line(metrics: dict) -> str:
    return (f"TPR {_fmt_rate(metrics.get('tpr0'))} FDR {_fmt_rate(metrics.get('fdr0'))} at τL=0, "
            f"TPR {_fmt_rate(metrics.get('tpr5'))} FDR {_fmt_rate(metrics.get('fdr5'))} at τL=5")


def _cmd_import_legacy(args: argparse.Namespace) -> int:
    from app.core.pairs import read_3dngmic_vectors, read_legacy_csv, write_pairs

    source = Path(args.source)
    if source.suffix.lower() == ".npy":
        pairs = read_3dngmic_vectors(source, voxel_size=args.voxel_size)
    else:
        pairs = read_legacy_csv(source, one_based=not args.zero_based, voxel_size=args.voxel_size)
    out = write_pairs(args.out, pairs)
    print(f"Imported {len(pairs)} pairs → {out}")
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    from app.core.imageio import list_series, read_volume

    series = args.series or 0
    found = list_series(args.image)
    print(f"{args.image}: {len(found)} series" + (" (choose with --series N):" if len(found) > 1 else ":"))
    for item in found:
        print("  " + _series_line(item))
    if series >= len(found):
        raise CellPolError(f"{args.image}: series {series} does not exist; the file has {len(found)} "
                               "series, numbered from 0.")
    volume = read_volume(args.image, voxel_size=args.voxel_size, axes=args.axes, scene=series,
                         nucleus_channel=args.nucleus_channel, golgi_channel=args.golgi_channel)
    label = f" [series {series}: {found[series].name}]" if len(found) > 1 else ""
    print(f"{args.image}{label}: {volume.describe()}")
    print("channels: " + ", ".join(f"{i}={n}" for i, n in enumerate(volume.channel_names)))
    return EXIT_OK


def _series_line(item) -> str:
    """``2  "Position 3"  2×31×512×512 (C×Z×Y×X)  voxel 1×0.2×0.2 µm  channels DAPI, GM130``"""
    shape = "×".join(str(n) for n in item.shape) + " (C×Z×Y×X)" if item.shape else "axes unknown"
    voxel = ("voxel " + "×".join(f"{v:g}" for v in item.voxel_size) + " µm") if item.voxel_size else \
        f"no voxel size ({item.voxel_size_problem})"
    channels = ", ".join(item.channel_names) if item.channel_names else "unnamed"
    return f"{item.index}  \"{item.name}\"  {shape}  {voxel}  channels {channels}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
