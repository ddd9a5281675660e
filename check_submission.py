"""Check a records folder, ours or any participant's, against the challenge's rules (see golf/check.py).

    python check_submission.py records/track_10min_16mb/<name>                  # one line per check
    python check_submission.py DIR --against OTHER_DIR                          # + the 0.005-nat t-test
    python check_submission.py DIR --against-values 2.0727,2.0731 --json        # one JSON object
    python check_submission.py DIR --data data/datasets/fineweb10B_sp1024       # + val spans found in train

Exit status: 0 every check passes, 1 one fails, 3 none fails but one could not be decided (unknown),
2 the folder cannot be read.
"""
import argparse
import json
import sys

from golf.check import format_report, judge
from golf.errors import cli_main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="the records folder (holding submission.json, README.md, logs, train_gpt.py)")
    base = p.add_mutually_exclusive_group()
    base.add_argument("--against", metavar="DIR", help="the records folder to beat (its counted runs' val_loss)")
    base.add_argument("--against-values", metavar="V1,V2,...", help="the val_loss values (nats) to beat")
    p.add_argument("--data", metavar="DATA_PATH", help="the dataset folder: share of val spans found in train")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    return p.parse_args(argv)


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    report = judge(args.folder, args.against, args.against_values, args.data)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return report["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
