"""Recompute an evaluation's statistics from its own per-image values, measuring nothing again.

    python -m colorization.restate docs/results/cpu-small-cpu/evaluation [more evaluation folders]

When the way a table summarises its images changes (:func:`colorization.evaluation.summarize`), an evaluation
folder's ``table.md``, ``table.csv`` and ``results.json`` are rewritten from its ``per_image.csv`` with the
evaluation's own bootstrap seed, so every number that did not change comes out identical and every corrected
one comes from the same images. ``per_image.csv`` and the grid are left as they are. Two things cannot be
recomputed and are carried over, as the restated table says: the ab distance (it needs each image's ab
histogram, which ``per_image.csv`` does not keep) and the costs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np

from colorization import report
from colorization.config import HelpFormatter, existing_folder
from colorization.errors import ColorizationError, cli_entry_point
from colorization.evaluation import summarize
from colorization.files import atomic_write
from colorization.report import TRUTH

# the per-image values measure() writes only for a row with K samples (on the images that have them)
SAMPLE_KEYS = ("psnr_mean", "ssim_mean", "diversity", "spread2", "error2", "num_samples", "colorfulness_crps")
CARRIED_OVER = ("ab_distance",)  # summary entries that need values per_image.csv does not keep


def read_per_image(folder: str) -> tuple[dict, dict]:
    """per_image.csv -> (values, samples) as :func:`~colorization.evaluation.summarize` takes them: per row, each
    metric's per-image values in image order (float32, as measured); per stochastic row, its K-sample values on
    the images that have them, with their ``index``."""
    with open(os.path.join(folder, "per_image.csv"), newline="") as handle:
        records = list(csv.DictReader(handle))
    if not records:
        raise ColorizationError(f"{folder}/per_image.csv holds no images")
    images = sorted({int(r["image_index"]) for r in records})
    position = {image: i for i, image in enumerate(images)}
    columns = [c for c in records[0] if c not in ("image_index", "model")]
    rows: dict[str, dict[str, dict[int, float]]] = {}
    for record in records:
        row = rows.setdefault(record["model"], {})
        for column in columns:
            if record[column] not in ("", None):
                row.setdefault(column, {})[int(record["image_index"])] = float(record[column])
    values, samples = {}, {}
    for name, found in rows.items():
        main = {k: v for k, v in found.items() if k not in SAMPLE_KEYS}
        if any(len(v) != len(images) for v in main.values()):
            raise ColorizationError(f"{folder}/per_image.csv: row {name!r} lacks some images")
        values[name] = {k: np.array([v[i] for i in images], np.float32) for k, v in main.items()}
        sampled = {k: v for k, v in found.items() if k in SAMPLE_KEYS}
        if sampled:
            where = sorted(next(iter(sampled.values())))
            samples[name] = {k: np.array([v[i] for i in where], np.float32) for k, v in sampled.items()}
            samples[name]["index"] = np.array(where)
            samples[name].update({k: values[name][k][[position[i] for i in where]] for k in ("psnr", "ssim")})
    values.setdefault(TRUTH, {})["index"] = np.array(images)
    return values, samples


def restate(folder: str) -> str:
    """Rewrite ``folder``'s table.md, table.csv and results.json from its per_image.csv -> the new table."""
    try:
        with open(os.path.join(folder, "results.json")) as handle:
            results = json.load(handle)
        settings, before = results["settings"], results["summary"]
        values, samples = read_per_image(folder)
    except (OSError, KeyError, ValueError) as error:
        raise ColorizationError(f"{folder} is not an evaluate.py output folder: {error}") from None
    summary = summarize(values, settings["seed"], samples or None)
    for row, stats in summary.items():
        for key in CARRIED_OVER:
            if key in before.get(row, {}):
                stats[key] = before[row][key]
    notes = [n for n in settings.get("notes", []) if not n.startswith("Restated")]
    settings["notes"] = notes + [
        "Restated from per_image.csv by python -m colorization.restate (nothing measured again); the ab distance "
        "and the costs are carried over from the evaluation itself."
    ]
    table = report.markdown_table(summary, settings)

    def write_table(temporary: str) -> None:
        with open(temporary, "w") as handle:
            handle.write(table + "\n")

    atomic_write(os.path.join(folder, "table.md"), write_table)
    atomic_write(
        os.path.join(folder, "table.csv"),
        lambda temporary: report.write_table_csv(temporary, summary, settings.get("costs", {})),
    )
    atomic_write(
        os.path.join(folder, "results.json"),
        lambda temporary: report.write_results_json(temporary, settings, summary),
    )
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m colorization.restate", description=__doc__.split("\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("evaluations", nargs="+", type=existing_folder, help="evaluate.py output folders")
    return parser


def run(argv=None) -> int:
    for folder in build_parser().parse_args(argv).evaluations:
        print(f"{folder}:\n{restate(folder)}\n", flush=True)
    return 0


def main(argv=None) -> None:
    sys.exit(cli_entry_point(run)(argv))


if __name__ == "__main__":
    main()
