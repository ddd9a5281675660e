"""Quantize a checkpoint into the challenge's int6 artifact and report its size against the 16,000,000-byte cap,
or dump the challenge's records folder for the arm that trained it.

    python quantize.py checkpoints/<RUN_ID>.pt [--out FILE] [--compressor auto|zstd|lzma]
    python quantize.py runs/demo/baseline/baseline.pt --submission DIR [--name N --author A --github ID --blurb B]

Attention/MLP matrices: int6 per row; embeddings: int8 per row; small tensors: fp16 (seed-factsheet 6).
The code bytes counted are those of the generated single-file train_gpt.py for the checkpoint's arm (see
golf/bundle.py). The artifact is checked to load back to exactly the dequantized weights before the command
reports success. `--submission DIR` writes README.md, submission.json, the arm's train logs (all its seeds),
the artifact and that single file into DIR (see golf/submission.py); run it where the training run started.
It then checks DIR by the challenge's rules (check_submission.py, golf/check.py) and prints the report; the
exit status is that of the dump, which a failed check does not undo (check_submission.py DIR says it again).
"""
import argparse
import os

import torch

from golf.check import format_report, judge
from golf.checkpoint import load_checkpoint
from golf.config import Config
from golf.errors import GolfError, cli_main
from golf.export import artifact_path_for, export_artifact
from golf.quant import dequantize_state_dict, quantize_state_dict, read_artifact
from golf.submission import ARTIFACT_NAME, write_submission

REPO = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint written by train_gpt.py / distill.py / train_teacher.py")
    p.add_argument("--out", default="", help="artifact path (default: beside the checkpoint, .int6.ptz)")
    p.add_argument("--compressor", default="auto", choices=["auto", "zstd", "lzma"])
    s = p.add_argument_group("records folder")
    s.add_argument("--submission", default="", metavar="DIR", help="write the challenge's records folder into DIR")
    s.add_argument("--name", default="", help="submission name (default: distill-golf <arm>)")
    s.add_argument("--author", default="", help="author's name")
    s.add_argument("--github", default="", help="author's GitHub id")
    s.add_argument("--blurb", default="", help="one-paragraph description (default: generated from the arm)")
    return p.parse_args(argv)


def entry_script(ckpt: dict) -> str:
    """The script that wrote a checkpoint, from what it saved beside the weights."""
    if ckpt.get("role") == "teacher":
        return "train_teacher.py"
    return "distill.py" if "teacher_sha256" in ckpt else "train_gpt.py"


def _verify(ckpt: dict, path: str):
    expect = dequantize_state_dict(quantize_state_dict({k: v.cpu() for k, v in ckpt["model"].items()}))
    got = dequantize_state_dict(read_artifact(path))
    if got.keys() != expect.keys() or not all(torch.equal(got[k], expect[k]) for k in expect):
        raise GolfError(f"{path} does not load back to the dequantized weights; the file system may be faulty")
    print(f"saved artifact {path} roundtrip:exact")


@cli_main
def main(argv=None):
    args = parse_args(argv)
    if args.submission:
        info = write_submission(args.checkpoint, args.submission, name=args.name, author=args.author,
                                github=args.github, blurb=args.blurb)
        _verify(load_checkpoint(args.checkpoint), os.path.join(args.submission, ARTIFACT_NAME))
        print(format_report(judge(args.submission)), flush=True)
        return info
    ckpt = load_checkpoint(args.checkpoint)
    out = args.out or artifact_path_for(args.checkpoint)
    sizes = export_artifact(ckpt["model"], out, args.compressor, os.path.join(REPO, entry_script(ckpt)), print,
                            Config.from_dict(ckpt["config"]))
    _verify(ckpt, out)
    return sizes


if __name__ == "__main__":
    main()
