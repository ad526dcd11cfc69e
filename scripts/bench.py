"""Speed benchmark: prints one table, writes <out>/bench-<device>.{json,png} and the table.

    python scripts/bench.py                      # CPU default: H=128, B=32, ~10 min on 2 loaded cores
    python scripts/bench.py --full --compile     # + H=384 and B=256 rows, torch.compile on CPU too
    python scripts/bench.py --threads 1 --sections train
See diffnorm.bench.suite for what each row measures.
"""

import argparse
import logging
from pathlib import Path

from diffnorm.bench.suite import BenchSettings, format_table, run_bench, write_outputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (and CPU shard threads; default: 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per row (default: 5)")
    p.add_argument("--full", action="store_true", help="CPU: add H=384 and B=256 rows, full planning at H=384")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile rows (default: on for CUDA, off for CPU)")
    p.add_argument("--sections", default="train,plan,probe,data", help="comma-separated (default: all four)")
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes: checks the code path only")
    p.add_argument("--out", type=Path, default=Path("docs/results"),
                   help="folder for bench-<device>.json, -table.md, .png (default: docs/results, the repository's record)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = BenchSettings(device=args.device, threads=args.threads, repeats=args.repeats, full=args.full,
                             compile=args.compile, sections=tuple(args.sections.split(",")), tiny=args.tiny)
    record = run_bench(settings)
    paths = write_outputs(record, args.out)
    print(format_table(record))
    print(*paths.values(), sep="\n")


if __name__ == "__main__":
    main()
