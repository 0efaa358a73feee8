"""Average the weights of models of one lineage (a "model soup"): one network, the time of one.

    .venv/bin/python benchmarks/weight_average.py --model A.json --model B.json [--weight 0.7 0.3] --out SOUP

The models must share the architecture; each tensor of the result is the weighted mean of the members'
(:func:`app.training.average.average_models`). The result keeps the first model's voxel size, normalisation
and decoding; re-choose its decoding with ``python -m app.training.starter --out SOUP --calibrate-only …``.
Averaging only makes sense for models fine-tuned from one another (one loss basin), as the starter chain is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", type=Path, required=True, help="member model .json (repeat)")
    parser.add_argument("--weight", type=float, nargs="+", default=None, help="one weight per model (default equal)")
    parser.add_argument("--out", type=Path, required=True, help="model path stem")
    args = parser.parse_args(argv)
    from app.training.average import average_models

    weights = args.weight or [1.0] * len(args.model)
    print(f"wrote {average_models(args.model, weights, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
