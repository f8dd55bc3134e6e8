"""CI: compare the table README command 1 printed (its log, argument 1) with the one the README shows.

The Quick start's 300 fp32-and-bf16 training steps carry each CPU's kernel rounding into the second decimal, so
the two tables agree within a tolerance, not exactly. The tolerance is twice the largest spread measured
between three kernel paths on 2026-12-02/03 (AMD EPYC with AVX512-BF16; Intel Xeon with AMX; the same Intel
with ONEDNN_MAX_CPU_ISA=AVX2), the same command and releases: 0.06 dB PSNR, 0.0016 SSIM, 0.46 colorfulness.
The gray and ground-truth rows depend on the data alone. A change that moves the Quick start's result by more
fails CI until the README shows what the command now prints.
"""

import re
import sys

MEASURED_SPREAD = {"PSNR": 0.06, "SSIM": 0.0016, "Colorfulness": 0.46}
TOLERANCE = {name: 2 * spread for name, spread in MEASURED_SPREAD.items()}
COLUMNS = ("PSNR", "SSIM", "Colorfulness")
ROWS = ("model", "gray (ab = 0)", "ground truth")


def parse(text: str) -> dict:
    """The last 'Validation after N steps' table in ``text`` -> {row: {column: value}}."""
    start = text.rfind("Validation after")
    if start < 0:
        raise ValueError("no 'Validation after ...' table")
    table = {}
    for line in text[start:].splitlines()[2:5]:
        name = next((row for row in ROWS if line.strip().startswith(row)), None)
        if name is None:
            raise ValueError(f"unexpected line in the table: {line!r}")
        numbers = [float(x) for x in re.findall(r"-?\d+\.\d+", line[line.index(name) + len(name) :])]
        columns = COLUMNS[-len(numbers) :] if name == "ground truth" else COLUMNS
        table[name] = dict(zip(columns, numbers))
    return table


def main(log_path: str, readme_path: str = "README.md") -> int:
    with open(readme_path) as handle:
        readme = handle.read()
    with open(log_path, errors="replace") as handle:
        printed = parse(handle.read())
    expected = parse(readme[readme.index("## Quick start") :])
    failures = []
    for row, values in expected.items():
        for column, want in values.items():
            got = printed[row][column]
            # the data-only rows: the printed digits, up to the last one's rounding
            tolerance = TOLERANCE[column] if row == "model" else 10 ** -(4 if column == "SSIM" else 2)
            verdict = "ok" if abs(got - want) <= tolerance + 1e-9 else "DIFFERS"
            within = f"within {tolerance:g}: {verdict}"
            print(f"CI: quickstart {row:<14} {column:<13} README {want:>9} printed {got:>9}  ({within})")
            if verdict != "ok":
                failures.append(f"{row} {column}")
    if failures:
        print(
            "CI: README command 1 printed a table that differs from the README's beyond the kernel tolerance ("
            + ", ".join(failures)
            + "): update the README's Quick start table from a real run of the command",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
