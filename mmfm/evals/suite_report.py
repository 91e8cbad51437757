"""A suite's results as a markdown table, a JSON file and a row of an open_clip-style CSV.

    write_suite_results(result, out_dir, name="demo", pretrained="runs/demo", csv_path=None,
                        params_m=1.2, flops_b=0.05)

The CSV has open_clip's `openclip_results.csv` layout: `name, pretrained, params (M), FLOPs (B),
Average perf. on N datasets`, then one column per task in the suite's order, values as fractions
with 4 decimals; a task that did not run is an empty cell, and so is the average when any task is
missing. Writing to an existing CSV adds a row, or replaces the row of the same (name, pretrained);
a CSV of another suite (other columns) is refused, never rewritten.
"""
from __future__ import annotations

import csv
import io
import json
import math
from typing import Optional

from mmfm import fileio

__all__ = ["RESULTS_JSON", "RESULTS_MD", "csv_header", "markdown_table", "write_suite_results"]

RESULTS_JSON = "suite_results.json"
RESULTS_MD = "suite_results.md"


def csv_header(result: dict) -> list[str]:
    return (["name", "pretrained", "params (M)", "FLOPs (B)",
             f"Average perf. on {result['num_tasks']} datasets"]
            + [r["column"] for r in result["rows"]])


def _cell(value: Optional[float]) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.4f}"


def csv_row(result: dict, name: str, pretrained: str, params_m: Optional[float],
            flops_b: Optional[float]) -> list[str]:
    # Two decimals as open_clip writes them; three significant digits for models under 1M / 1B.
    size = lambda v: "" if v is None else f"{v:.2f}" if v >= 1 else f"{v:.3g}"
    return ([name, pretrained, size(params_m), size(flops_b), _cell(result["average"])]
            + [_cell(r["value"]) for r in result["rows"]])


def append_csv(path: str, header: list[str], row: list[str]) -> None:
    """Adds `row` to the CSV at `path` (created with `header`), replacing a same-model row."""
    rows = []
    if fileio.exists(path):
        existing = list(csv.reader(io.StringIO(fileio.read_text(path))))
        if existing and existing[0] != header:
            raise ValueError(f"{path}: its columns are not this suite's ({len(existing[0])} vs "
                             f"{len(header)} columns; first differing: "
                             f"{next((a, b) for a, b in zip(existing[0] + [''], header) if a != b)}); "
                             f"write this suite to another --csv file")
        rows = [r for r in existing[1:] if r[:2] != row[:2]]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows + [row])
    fileio.write_atomic(path, buf.getvalue())


def markdown_table(result: dict, *, groups: bool = True) -> str:
    """The suite's tasks (value or "missing: why"), its average, and for `shapes` the details."""
    lines = [f"### Suite `{result['suite']}`", "", "| task | metric | value |", "|---|---|---|"]
    for r in result["rows"]:
        value = f"{r['value']:.4f}" if r["status"] == "ok" else f"{r['status']}: {r.get('detail', '')}"
        if r.get("note"):  # where the setup differs from the published benchmark
            value += f" (note: {r['note']})"
        lines.append(f"| {r['column']} | {r['metric']} | {value} |")
    if result["average"] is not None:
        lines.append(f"| **average of {result['num_tasks']}** | | {result['average']:.4f} |")
    else:
        present = result["num_tasks"] - len(result["missing"])
        avg = result["average_of_present"]
        note = f"; {present} present average {avg:.4f}" if avg is not None else ""
        lines.append(f"| **average** | | not computed: {len(result['missing'])} of "
                     f"{result['num_tasks']} tasks missing or failed{note} |")
    if groups and result.get("metrics") and result["suite"] == "shapes":
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(result["metrics"].items())]
    if groups and result.get("groups"):
        lines += ["", "| evaluation / grouped by | worst group | worst | spread | per group |",
                  "|---|---|---|---|---|"]
        for key, g in result["groups"].items():
            per = ", ".join(f"{k} {v['accuracy']:.2f} ({v['count']})"
                            for k, v in g["groups"].items())
            lines.append(f"| {key} | {g['worst_group']} | {g['worst']:.4f} | {g['spread']:.4f} "
                         f"| {per} |")
    lines.append("")
    lines.append(f"wall time {result['seconds']:.1f} s")
    return "\n".join(lines) + "\n"


def write_suite_results(result: dict, out_dir: str, *, name: str, pretrained: str = "",
                        csv_path: Optional[str] = None, params_m: Optional[float] = None,
                        flops_b: Optional[float] = None, source: Optional[dict] = None) -> str:
    """OUT/suite_results.{json,md}, and the CSV row (OUT/suite_results.csv unless `csv_path`).
    Returns the markdown table."""
    fileio.makedirs(out_dir)
    table = markdown_table(result)
    header = csv_header(result)
    row = csv_row(result, name, pretrained, params_m, flops_b)
    csv_path = csv_path or fileio.join(out_dir, f"{result['suite']}_results.csv")
    append_csv(csv_path, header, row)
    payload = {k: v for k, v in result.items()}
    payload.update(name=name, pretrained=pretrained, params_m=params_m, flops_b=flops_b,
                   source=source or {}, csv=fileio.absolute(csv_path))
    fileio.write_atomic(fileio.join(out_dir, RESULTS_JSON), json.dumps(payload, indent=1,
                                                                         default=str))
    fileio.write_atomic(fileio.join(out_dir, RESULTS_MD), table)
    return table
