"""Quantize a checkpoint into the challenge's int6 artifact and report its size against the 16,000,000-byte cap.

    python quantize.py checkpoints/<RUN_ID>.pt [--out FILE] [--compressor auto|zstd|lzma]

Attention/MLP matrices: int6 per row; embeddings: int8 per row; small tensors: fp16 (seed-factsheet 6).
The code bytes counted are those of the generated single-file train_gpt.py (see golf/bundle.py). The artifact
is checked to load back to exactly the dequantized weights before the command reports success.
"""
import argparse
import os

import torch

from golf.checkpoint import load_checkpoint
from golf.errors import GolfError, cli_main
from golf.export import artifact_path_for, export_artifact
from golf.quant import dequantize_state_dict, quantize_state_dict, read_artifact

REPO = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint written by train_gpt.py / distill.py / train_teacher.py")
    p.add_argument("--out", default="", help="artifact path (default: beside the checkpoint, .int6.ptz)")
    p.add_argument("--compressor", default="auto", choices=["auto", "zstd", "lzma"])
    return p.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    out = args.out or artifact_path_for(args.checkpoint)
    sizes = export_artifact(ckpt["model"], out, args.compressor, os.path.join(REPO, "train_gpt.py"), print)
    expect = dequantize_state_dict(quantize_state_dict({k: v.cpu() for k, v in ckpt["model"].items()}))
    got = dequantize_state_dict(read_artifact(out))
    if got.keys() != expect.keys() or not all(torch.equal(got[k], expect[k]) for k in expect):
        raise GolfError(f"{out} does not load back to the dequantized weights; the file system may be faulty")
    print(f"saved artifact {out} roundtrip:exact")
    return sizes


if __name__ == "__main__":
    main()
