"""One-shot conversion of a legacy OPUS-MT directory (pytorch_model.bin) to model.safetensors.

    python -m model.convert DIR --trust-pickle

The pickle is read with torch.load(weights_only=True) only because you said it is trusted;
afterwards the directory loads from safetensors with no opt-in.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safetensors.torch import save_file

from model.checkpoint import read_tensors
from model.errors import CheckpointError


def convert(path: str | Path, *, trust_pickle: bool) -> Path:
    path = Path(path)
    tensors = read_tensors(path, trust_pickle=trust_pickle)
    out = path / "model.safetensors"
    # safetensors refuses tensors that share memory (tied weights): store independent copies.
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(out), metadata={"format": "pt"})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--trust-pickle", action="store_true", help="I trust this pytorch_model.bin")
    args = parser.parse_args(argv)
    try:
        print(convert(args.path, trust_pickle=args.trust_pickle))
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
