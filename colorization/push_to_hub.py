"""Share an exported model on the Hugging Face Hub, with a model card; never its checkpoints.

    python -m colorization.push_to_hub runs/cnn you/cats-colorizer-cnn [--private] [--revision BRANCH]
    python -m colorization.push_to_hub runs/cnn you/cats-colorizer-cnn --dry_run --output_dir upload/

``--dry_run`` writes exactly the folder that would be uploaded (the export and its README.md card) and uploads
nothing. Log in first with ``hf auth login`` (or set HF_TOKEN).
"""

from __future__ import annotations

import argparse
import sys

from colorization.config import HelpFormatter, existing_folder, hub_repo_id, output_folder
from colorization.errors import cli_entry_point
from colorization.hub import DEFAULT_LICENSE, push, write_upload_folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m colorization.push_to_hub", description=__doc__.split("\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("export_dir", type=existing_folder, help="an exported model (a training run's output_dir)")
    parser.add_argument("repo_id", type=hub_repo_id, help="the Hub repository, owner/name (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", default=None, help="the branch to push to (created if missing; default: main)")
    parser.add_argument(
        "--license",
        default=DEFAULT_LICENSE,
        help="the weights' license in the card (the default suits AFHQ, CC BY-NC 4.0; use your data's)",
    )
    parser.add_argument("--dry_run", action="store_true", help="write the upload into --output_dir; upload nothing")
    parser.add_argument("--output_dir", type=output_folder, default=None, help="with --dry_run: a new or empty folder")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dry_run != (args.output_dir is not None):
        parser.error("--dry_run and --output_dir go together (the dry run writes the upload there)")
    return args


def run(argv=None) -> None:
    args = parse_args(argv)
    if args.dry_run:
        files = write_upload_folder(args.export_dir, args.output_dir, args.repo_id, args.license)
        print(f"dry run: {len(files)} file(s) that would be uploaded to {args.repo_id} are in {args.output_dir}")
        return
    print(
        f"pushed {args.export_dir} to {push(args.export_dir, args.repo_id, args.private, args.revision, args.license)}"
    )


def main(argv=None) -> None:
    cli_entry_point(run)(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
