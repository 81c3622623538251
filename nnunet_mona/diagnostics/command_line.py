"""What the diagnostic commands share: checkpoints in, one report per checkpoint, a markdown table on the console
and optionally a JSON file."""
import argparse
import json
import os
from typing import Callable, List


def checkpoint_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("checkpoints", nargs="+", help="training checkpoints (checkpoint_final.pth / _latest.pth)")
    parser.add_argument("--preprocessed", default=os.environ.get("nnUNet_preprocessed"),
                        help="nnUNet_preprocessed folder the models were trained from (default: $nnUNet_preprocessed;"
                             " for a benchmark output OUTPUT/labeled_N/nnUNet_preprocessed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", help="also write the reports to this JSON file")
    return parser


def parse_checkpoint_arguments(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if not args.preprocessed:
        parser.error("--preprocessed is required when nnUNet_preprocessed is not set")
    missing = [p for p in args.checkpoints if not os.path.isfile(p)]
    if missing:
        parser.error(f"checkpoint(s) not found: {', '.join(missing)}")
    return args


def report_checkpoints(args: argparse.Namespace, label: str, measure: Callable[[str], dict],
                       table: Callable[[List[dict]], str]) -> List[dict]:
    """``measure(path)`` for every checkpoint (progress on the console), then the table and the JSON file."""
    reports = []
    for index, path in enumerate(args.checkpoints, 1):
        print(f"[{label} {index}/{len(args.checkpoints)}] {path}", flush=True)
        reports.append(measure(path))
    print(table(reports))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(reports, f, indent=1)
        print(f"written: {args.output}")
    return reports
