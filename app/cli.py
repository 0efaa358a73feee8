"""The ``cellpol`` command: the same jobs as the desktop app, headless, with progress bars.

Every problem the user can cause (bad file, wrong channel, missing voxel size) ends as one line on
stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

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


def _channel_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nucleus-channel", type=int, metavar="N", help="0-based index of the nucleus channel")
    parser.add_argument("--golgi-channel", type=int, metavar="G", help="0-based index of the Golgi channel")
    parser.add_argument(
        "--axes", metavar="AXES",
        help="axis order of a plain TIFF or .npy without metadata, e.g. ZCYX, CZYX, ZYX, YXZC (authors' RGB layout)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellpol",
        description="CellPol Studio: nucleus→Golgi polarity vectors in 3D microscopy. "
        "Without a command, opens the desktop app.",
    )
    parser.add_argument("--version", action="version", version=f"cellpol {__version__}")
    parser.add_argument("--demo", action="store_true", help="open the desktop app on a simulated demo volume")
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

    p = sub.add_parser("predict", help="predict polarity vectors for images or folders of images")
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    p.add_argument("--out", required=True, help="output folder for <stem>.vectors.csv files")
    p.add_argument("--method", choices=("auto", "cellpol", "classic"), default="auto",
                   help="cellpol = learned model, classic = Otsu peer; auto = the learned model when one is "
                        "available, otherwise classic")
    p.add_argument("--model", action="append", metavar="PATH", help="model file (.json); repeat for an ensemble")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--overwrite", action="store_true", help="recompute images whose output already exists")
    p.add_argument("--window", nargs=3, type=int, metavar=("Z", "Y", "X"),
                   help="largest sliding window in voxels at the model's voxel size (smaller = less memory)")
    p.add_argument("--batch-size", type=int, metavar="N", help="windows per network call")
    _voxel_size_arg(p, help_extra="; overrides the file's metadata, required where it has none")
    _channel_args(p)

    p = sub.add_parser("evaluate", help="score predictions against ground truth (the paper's protocol)")
    p.add_argument("--gt", required=True, help="folder of ground-truth <stem>.vectors.csv")
    p.add_argument("--pred", required=True, help="folder of predicted <stem>.vectors.csv")
    p.add_argument("--out", help="folder for the CSV tables and the curves PNG (default: PRED/evaluation)")
    p.add_argument("--border-margin", type=float, default=7.0, metavar="UM",
                   help="leave out pairs within this many µm of the image border in x/y (0 = keep all)")
    _voxel_size_arg(p, help_extra="; needed when the CSV sidecars carry none")

    p = sub.add_parser("import-legacy", help="convert the authors' header-less vectors CSV or 3DNGMic .npy")
    p.add_argument("source", help="legacy CSV (YN,XN,YG,XG,ZN,ZG) or 3DNGMic vectors .npy")
    p.add_argument("--out", required=True, help="output <name>.vectors.csv")
    p.add_argument("--zero-based", action="store_true",
                   help="coordinates are 0-based (files saved by the annotation tool); default: 1-based Crop files")
    _voxel_size_arg(p)

    p = sub.add_parser("info", help="describe an image: shape, channels, voxel size")
    p.add_argument("image")
    _voxel_size_arg(p)
    _channel_args(p)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        None: _cmd_gui, "gui": _cmd_gui, "synth": _cmd_synth, "predict": _cmd_predict,
        "evaluate": _cmd_evaluate, "import-legacy": _cmd_import_legacy, "info": _cmd_info,
    }
    try:
        return handlers[args.command](args)
    except CellPolError as exc:
        print(f"cellpol: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("cellpol: interrupted", file=sys.stderr)
        return 130


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True)


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
    with _progress_bar(args.n, "synth") as bar:
        def progress(done: int, total: int, message: str = "") -> None:
            bar.n = done
            bar.refresh()

        paths = simulate.synthesize_dataset(
            args.out, args.n, preset=args.preset, seed=args.seed, progress=progress, **options
        )
    print(f"Wrote {len(paths)} volumes with ground-truth vectors to {args.out}")
    return EXIT_OK


def _make_predictor(args: argparse.Namespace):
    """Return (predictor, provenance) for the chosen method."""
    from app.core.classic import ClassicParams, predict_classic

    method = args.method
    if method == "auto":
        method = "cellpol" if args.model or _starter_model_available() else "classic"
        print(f"Method: {method}" + ("" if method == "cellpol" else " (no learned model available)"),
              file=sys.stderr)
    if method == "cellpol":
        from app.core.inference import Predictor, find_starter_model

        paths = list(args.model or [])
        if not paths:
            starter = find_starter_model()
            if starter is None:
                raise CellPolError("No learned model found: pass --model PATH or use --method classic")
            paths = [starter]
        predictor = Predictor.from_files(paths, args.device, window=args.window, batch_size=args.batch_size)
        print(f"Model: {', '.join(m['name'] for m in predictor.provenance()['models'])} on {predictor.device}",
              file=sys.stderr)
        return predictor, predictor.provenance()
    params = ClassicParams()
    from dataclasses import asdict

    return (lambda volume: predict_classic(volume, params)), {"method": "classic", "parameters": asdict(params)}


def _starter_model_available() -> bool:
    from app.core.inference import find_starter_model

    return find_starter_model() is not None


def _cmd_predict(args: argparse.Namespace) -> int:
    from app.core.batch import ReadOptions, predict_batch, write_summary
    from app.core.imageio import find_images
    from app.core.volume import parse_voxel_size

    options = ReadOptions(parse_voxel_size(args.voxel_size), args.axes, args.nucleus_channel, args.golgi_channel)
    images = find_images(args.inputs)
    if not images:
        raise CellPolError("No images found in the given inputs (looked for .tif, .tiff, .ome.tif, .npy, .czi).")
    predictor, provenance = _make_predictor(args)
    records = []
    with _progress_bar(len(images), "predict") as bar:
        for record in predict_batch(images, args.out, predictor, options, provenance, overwrite=args.overwrite):
            records.append(record)
            bar.update(1)
            if record.status == "failed":
                bar.write(f"FAILED {record.image}: {record.error}", file=sys.stderr)
    summary = write_summary(records, Path(args.out) / "predict_summary.csv")
    done = sum(r.status == "ok" for r in records)
    skipped = sum(r.status == "skipped" for r in records)
    failed = sum(r.status == "failed" for r in records)
    print(f"{done} predicted, {skipped} skipped (output existed; --overwrite to redo), {failed} failed. "
          f"Summary: {summary}")
    return EXIT_FAILED_ITEMS if failed else EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from app.core import evaluate
    from app.core.volume import parse_voxel_size

    result = evaluate.evaluate_folders(
        args.gt, args.pred, voxel_size=parse_voxel_size(args.voxel_size), border_margin_um=args.border_margin
    )
    print(evaluate.format_table(result))
    out = Path(args.out) if args.out else Path(args.pred) / "evaluation"
    written = evaluate.write_evaluation(result, out)
    for path in written.values():
        print(f"wrote {path}")
    return EXIT_OK


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
    from app.core.imageio import read_volume

    volume = read_volume(args.image, voxel_size=args.voxel_size, axes=args.axes,
                         nucleus_channel=args.nucleus_channel, golgi_channel=args.golgi_channel)
    print(f"{args.image}: {volume.describe()}")
    print("channels: " + ", ".join(f"{i}={n}" for i, n in enumerate(volume.channel_names)))
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
