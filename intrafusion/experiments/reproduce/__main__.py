"""``python -m intrafusion.experiments.reproduce {report,publish} RESULTS_DIR [DOCS_DIR]``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .report import publish, write_results_markdown


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m intrafusion.experiments.reproduce",
                                description="Regenerate or publish the report of a reproduction run.")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("report", help="rewrite RESULTS_DIR/RESULTS.md from its CSV/JSON files")
    a.add_argument("results_dir")
    a = sub.add_parser("publish", help="copy the report and its plots into DOCS_DIR (keeps annotations)")
    a.add_argument("results_dir")
    a.add_argument("docs_dir", nargs="?", default="docs")
    args = p.parse_args(argv)
    if args.command == "report":
        print(write_results_markdown(args.results_dir, Path(args.results_dir) / "RESULTS.md"))
    else:
        print(publish(args.results_dir, args.docs_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
