"""Paired differences between two rows of an evaluation, from its folder, with the table's own bootstrap.

    python -m colorization.compare results/cpu-small/evaluation "Diffusion refining CNN (DPM-20)" CNN
    python -m colorization.compare results/cpu-small/evaluation CNN CNN --against docs/results/cpu-small-cpu/evaluation

For each per-image metric both rows have (PSNR, SSIM, LPIPS, the per-image colorfulness gap |row - truth|;
where both rows have K samples, the PSNR of the mean of K; where one has, the colorfulness CRPS, which is a
deterministic row's per-image gap), the mean over the images of row A's value
minus row B's on the same image, with the 95% bootstrap interval from the same resampled images as the
table (``resample_counts`` with the evaluation's seed). Then, in the MSE domain, the pooled dB row A gains
over row B (10 log10 of B's mean MSE over A's, over the same images): for one prediction, for the mean of K
and for the posterior mean (a stochastic row's own, estimated without bias per image and pooled before the
log; a deterministic row's posterior mean is its prediction). A difference whose interval crosses zero is
not a result; the output says which do not.

With ``--against OTHER``, row B is read from another evaluation of the same images (e.g. the same recipe
retrained at another commit): the two must agree on the split, resolution, image count and the images left out,
and their ground truths must be the same image by image (their per-image colorfulness), or it refuses.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Optional

import numpy as np

from colorization.config import HelpFormatter, existing_folder
from colorization.errors import ColorizationError, cli_entry_point
from colorization.metrics import mse_from_psnr, percentile_interval, pooled_gain, posterior_mean_mse, resample_counts
from colorization.report import TRUTH

METRICS = ("psnr", "ssim", "lpips", "colorfulness_gap", "psnr_mean", "colorfulness_crps")
# pooled comparisons in the MSE domain: name -> which of a row's per-image MSEs
POOLED = ("pooled_one", "pooled_mean", "pooled_posterior")


def _per_image(folder: str) -> tuple[dict, int]:
    """per_image.csv -> {row: {metric: {image_index: value}}}, and the evaluation's seed."""
    try:
        with open(os.path.join(folder, "results.json")) as handle:
            seed = json.load(handle)["settings"]["seed"]
        with open(os.path.join(folder, "per_image.csv"), newline="") as handle:
            records = list(csv.DictReader(handle))
    except (OSError, KeyError, ValueError) as error:
        raise ColorizationError(f"{folder} is not an evaluate.py output folder: {error}") from None
    values: dict = {}
    for record in records:
        row = values.setdefault(record["model"], {})
        for metric, text in record.items():
            if metric not in ("model", "image_index") and text not in ("", None):
                row.setdefault(metric, {})[int(record["image_index"])] = float(text)
    return values, int(seed)


# what two evaluations must agree on for their rows to be compared image by image (--against); not the data's
# description, whose wording changes between releases: their ground truths are compared image by image instead
SAME_IMAGES = ("split", "resolution", "num_images")


def _settings(folder: str) -> dict:
    with open(os.path.join(folder, "results.json")) as handle:
        return json.load(handle)["settings"]


def _two_evaluations(folder: str, first: str, other: str, second: str) -> tuple[dict, int]:
    """Row ``first`` of ``folder`` and row ``second`` of ``other`` as one evaluation's values (the second named
    "SECOND (OTHER)"), after checking that the two evaluated the same images."""
    values, seed = _per_image(folder)
    theirs, _ = _per_image(other)
    mine_settings, their_settings = _settings(folder), _settings(other)
    differing = [key for key in SAME_IMAGES if mine_settings.get(key) != their_settings.get(key)]
    skipped = [[note for note in s.get("notes", []) if "left out" in note] for s in (mine_settings, their_settings)]
    if differing or skipped[0] != skipped[1]:
        what = ", ".join(differing + (["the images left out"] if skipped[0] != skipped[1] else []))
        raise ColorizationError(f"{folder} and {other} did not evaluate the same images: they differ in {what}")
    truths = [v.get(TRUTH, {}).get("colorfulness", {}) for v in (values, theirs)]
    if (
        not truths[0]
        or truths[0].keys() != truths[1].keys()
        or any(abs(truths[0][i] - truths[1][i]) > 1e-3 for i in truths[0])
    ):
        raise ColorizationError(f"{folder} and {other} did not evaluate the same images: their ground truths differ")
    for row, found, where in ((first, values, folder), (second, theirs, other)):
        if row not in found:
            raise ColorizationError(f"no row {row!r} in {where}; its rows: {', '.join(found)}")
    return {first: values[first], f"{second} ({other})": theirs[second], TRUTH: values[TRUTH]}, seed


def paired_differences(folder: str, first: str, second: str, against: Optional[str] = None) -> dict:
    """{metric: {"mean", "ci95", "images"}} of ``first`` minus ``second`` over the images both have; ``second``
    from the evaluation ``against`` where given (of the same images)."""
    if against is not None:
        values, seed = _two_evaluations(folder, first, against, second)
        second = f"{second} ({against})"
    else:
        values, seed = _per_image(folder)
    for row in (first, second):
        if row not in values:
            raise ColorizationError(f"no row {row!r} in {folder}; its rows: {', '.join(values)}")
    truth = values.get(TRUTH, {}).get("colorfulness", {})
    for row in (first, second):
        colorfulness = values[row].get("colorfulness", {})
        values[row]["colorfulness_gap"] = {i: abs(v - truth[i]) for i, v in colorfulness.items() if i in truth}
    if any("colorfulness_crps" in values[row] for row in (first, second)):
        for row in (first, second):  # a deterministic row's CRPS is its per-image gap
            values[row].setdefault("colorfulness_crps", values[row]["colorfulness_gap"])
    result = {}
    for metric in METRICS:
        a, b = values[first].get(metric, {}), values[second].get(metric, {})
        images = sorted(set(a) & set(b))
        if len(images) < 2:
            continue
        differences = np.array([a[i] - b[i] for i in images])
        counts = resample_counts(len(images), seed)
        result[metric] = {
            "mean": float(differences.mean()),
            "ci95": percentile_interval(counts @ differences / len(images)),
            "images": len(images),
        }
    mse = {row: _mse_forms(values[row]) for row in (first, second)}
    for form in POOLED:
        a, b = mse[first].get(form, {}), mse[second].get(form, {})
        images = sorted(set(a) & set(b))
        sampled = any("spread2" in values[row] for row in (first, second))
        if len(images) < 2 or (form != "pooled_one" and not sampled):  # two deterministic rows: one form
            continue
        counts = resample_counts(len(images), seed)
        gain = pooled_gain(np.array([a[i] for i in images]), np.array([b[i] for i in images]), counts)
        result[form] = {**gain, "images": len(images)}
    return result


def _mse_forms(row: dict) -> dict:
    """A row's per-image MSEs by form -> {"pooled_one"|"pooled_mean"|"pooled_posterior": {image: MSE}}: one
    prediction's; the mean of K's; the posterior mean's (a stochastic row's unbiased estimate, a deterministic
    row's prediction). Where a row has no mean of K, its prediction stands for it only if it is deterministic."""
    one = {i: float(mse_from_psnr(v)) for i, v in row.get("psnr", {}).items()}
    forms = {"pooled_one": one}
    if "spread2" in row:
        images = [i for i in row["spread2"] if i in row["error2"] and i in row["num_samples"]]
        estimate = posterior_mean_mse(
            [row["spread2"][i] for i in images],
            [row["error2"][i] for i in images],
            [row["num_samples"][i] for i in images],
        )
        forms["pooled_posterior"] = dict(zip(images, estimate.tolist()))
        forms["pooled_mean"] = {i: float(mse_from_psnr(v)) for i, v in row.get("psnr_mean", {}).items()}
    else:
        forms["pooled_posterior"] = forms["pooled_mean"] = one
    return forms


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m colorization.compare", description=__doc__.split("\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("evaluation", type=existing_folder, help="an evaluate.py --output_dir")
    parser.add_argument("first", help="a row of its table (the model name as in the table)")
    parser.add_argument("second", help="the row to compare it with")
    parser.add_argument(
        "--against",
        type=existing_folder,
        help="read the second row from this other evaluation of the same images (e.g. the same model retrained)",
    )
    return parser


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    found = paired_differences(args.evaluation, args.first, args.second, args.against)
    second = args.second + (f" of {args.against}" if args.against else "")
    print(f"{args.first} minus {second}, paired over the same images (mean [95% bootstrap interval]):")
    pooled = {metric: stat for metric, stat in found.items() if metric in POOLED}
    for metric, stat in found.items():
        if metric == POOLED[0] and pooled:
            print(f"Pooled in the MSE domain, the dB {args.first} gains (10 log10 of the ratio of mean MSEs):")
        low, high = stat["ci95"]
        verdict = "" if low > 0 or high < 0 else "   (interval crosses 0: no difference shown)"
        print(f"  {metric:<17} {stat['mean']:+.4f} [{low:+.4f}, {high:+.4f}] on {stat['images']} images{verdict}")
    return 0


def main(argv=None) -> None:
    sys.exit(cli_entry_point(run)(argv))


if __name__ == "__main__":
    main()
