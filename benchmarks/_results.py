"""Rows: the one shape every benchmark group returns, and RESULTS.md, written from them.

Every group module (dispatch, kernels, scaling, overhead, data, comm) exposes

    run(quick=False) -> list[dict]          # tiny=False may be accepted too

and each dict is one of three things::

    a measured row  {"table": "Threads, N = 8", "tool": "ThreadPoolExecutor, warm",
                     "min": 1.2e-5, "median": 1.5e-5}
    a row not measured (a peer missing or broken: never silently dropped)
                    {"table": "Threads, N = 8", "tool": "loky reusable executor",
                     "status": "skipped: loky not installed"}      # or "failed: <error>"
    prose           {"table": "Threads, N = 8", "text": "A paragraph under that table."}
                    (no "table": the paragraph goes under the group's heading;
                    "before": True puts it between the table's heading and the table)

Optional keys of a measured row:

    unit       "s" (default: seconds, shown in s/ms/us), "x" (a ratio), "fraction" (0..1)
               or any other word (the number is shown as it is, with the word)
    better     "lower" (default) or "higher": which way is best, for the ratio
    reference  True: the table's named reference; ratios are to it (else to the best row)
    ratio      a number: shown instead of the computed ratio (None: no ratio, "-")
    goal       the goal this row is judged on, as the issue states it ("<= 1.5x warm TPE")
    met        True / False / None (not judged: inconclusive, or the reference is missing)
    verdict    the words shown for the goal; default "met" / "missed" from ``met``
    extra      {"column": value}: more columns for this table, in order of appearance
    note       a short remark, in the last column

Tables keep the order in which their first row appears; so do the rows. The
ratio column is median / reference median (lower is better) or reference /
median (higher is better), for rows whose unit is a time; other units show a
ratio only when the row gives one.

The same rows print as text tables (``print_rows``) for the groups' own
``main()``, and become RESULTS.md (``write_markdown``) under ``python -m benchmarks``.
"""
import datetime
import math
import os
import platform
import sys

try:                                             # python -m benchmarks
    from . import _util
except ImportError:                              # python benchmarks/<group>.py
    import _util

__all__ = ["GROUPS", "PACKAGES", "skipped", "failed", "text", "normalise", "is_number",
           "format_value", "tables_of", "print_rows", "machine_header", "write_markdown",
           "goal_rows", "judge", "stats_row"]

#: The groups of issue 6, in the order they run and appear in RESULTS.md.
GROUPS = ("dispatch", "kernels", "scaling", "overhead", "data", "comm")

#: Distribution names whose versions head RESULTS.md: ours and the core
#: dependencies first, then every peer of the ``bench`` extra (and Dask's,
#: which the ``dask`` extra brings).
PACKAGES = ("concmagic", "numpy", "Cython", "cloudpickle", "ipython",
            "numba", "loky", "joblib", "gilknocker", "ipyparallel", "distributed", "dask")


# ---------------------------------------------------------------------------
# Making rows
# ---------------------------------------------------------------------------
def skipped(table, tool, reason, **more):
    """A row for a peer that did not run: ``reason`` says why (not installed, --tiny...)."""
    return {"table": table, "tool": tool, "status": f"skipped: {reason}", **more}


def failed(table, tool, error, **more):
    """A row for a peer that raised: the error's type and first line."""
    if isinstance(error, BaseException):
        first = (str(error).strip().splitlines() or [""])[0]
        error = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return {"table": table, "tool": tool, "status": f"failed: {error}", **more}


def text(paragraph, table=None, before=False):
    """A paragraph: under ``table`` (above it if ``before``), or under the group's heading."""
    row = {"text": paragraph}
    if table is not None:
        row["table"] = table
    if before:
        row["before"] = True
    return row


#: Keys of a row that say where and what it is, not a figure.
_LABEL_KEYS = ("group", "table")


def normalise(row):
    """A row the writer can show, whatever shape a group returned.

    Rows in the documented shape pass unchanged. A dict without "tool" and
    "text" (a group that returns its own records, e.g. ``{"kernel": ...,
    "model": ..., "path": ..., "workers": 2, "min": ..., "median": ...,
    "speedup": ...}``) is shown as well as can be guessed: its first two text
    values name the table, the other text values and its integers name the
    row, "min"/"median" are the figure (seconds), and every other number
    becomes a column (as a time where its key says median/min/seconds, else
    with 3 significant digits).
    """
    if not isinstance(row, dict):
        return failed("", repr(row)[:60], "a row that is not a dict")
    if "tool" in row or "text" in row:
        return row
    words = [(k, v) for k, v in row.items() if isinstance(v, str) and k not in _LABEL_KEYS]
    ints = [(k, v) for k, v in row.items()
            if isinstance(v, int) and not isinstance(v, bool) and k not in ("min", "median")]
    table = row.get("table") or ", ".join(str(v) for _, v in words[:2])
    tool = ", ".join([str(v) for _, v in words[2:]] + [f"{k}={v}" for k, v in ints]) or "?"
    out = {"table": table, "tool": tool}
    for key in ("min", "median", "goal", "met", "verdict", "note", "status", "reference"):
        if key in row:
            out[key] = row[key]
    extra = {}
    for k, v in row.items():
        if k in out or k in _LABEL_KEYS or (k, v) in words or (k, v) in ints:
            continue
        if is_number(v):
            timelike = any(w in k for w in ("median", "min", "seconds", "time"))
            extra[k] = _util.fmt_time(v) if timelike else f"{v:.3g}"
    if extra:
        out["extra"] = extra
    return out


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------
def format_value(value, unit="s"):
    """A figure in its unit: 1.23 ms, 0.93x, 0.91, 12.3 MiB/s."""
    if not is_number(value):
        return "-"
    if unit == "s":
        return _util.fmt_time(value) if value else "0 s"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "fraction":
        return f"{value:.2f}"
    return f"{value:.3g} {unit}"


def _ratio_text(row, ref_row, best):
    """The ratio cell of a measured row."""
    if "ratio" in row:
        r = row["ratio"]
        return "-" if not is_number(r) else f"{r:.2f}x"
    if row.get("unit", "s") != "s" or not is_number(row.get("median")):
        return "-"
    if ref_row is not None:
        if row is ref_row:
            return "1.00x (reference)"
        base = ref_row.get("median")
    else:
        base = best
        if row.get("median") == best:
            return "1.00x (best)"
    if not is_number(base) or base <= 0 or row["median"] <= 0:
        return "-"
    r = (row["median"] / base if row.get("better", "lower") == "lower"
         else base / row["median"])
    return f"{r:.2f}x"


def _verdict_text(row):
    if not row.get("goal"):
        return ""
    if row.get("verdict"):
        return row["verdict"]
    met = row.get("met")
    return "met" if met is True else "missed" if met is False else "not judged"


def tables_of(rows):
    """``(group_texts, [(title, texts_before, rows, texts_after)])`` in first-seen order."""
    group_texts, order, tables = [], [], {}
    for row in map(normalise, rows):
        if "text" in row and "tool" not in row:
            if row.get("table") is None:
                group_texts.append(row["text"])
                continue
        title = row.get("table") or ""
        if title not in tables:
            order.append(title)
            tables[title] = ([], [], [])
        if "tool" in row:
            tables[title][1].append(row)
        else:
            tables[title][0 if row.get("before") else 2].append(row["text"])
    return group_texts, [(t, *tables[t]) for t in order]


def _table_cells(table_rows):
    """Header and cells (strings) of one table."""
    measured = [r for r in table_rows if not r.get("status", "ok").startswith(("skipped",
                                                                              "failed"))]
    refs = [r for r in measured if r.get("reference")]
    ref_row = refs[0] if refs else None
    times = [r["median"] for r in measured if r.get("unit", "s") == "s"
             and is_number(r.get("median")) and r["median"] > 0 and "ratio" not in r]
    higher = any(r.get("better") == "higher" for r in measured)
    best = (max(times) if higher else min(times)) if times else None
    ratio_head = "ratio to reference" if ref_row is not None else "ratio to best"
    extras = []
    for r in table_rows:
        for k in r.get("extra") or {}:
            if k not in extras:
                extras.append(k)
    has_goal = any(r.get("goal") for r in table_rows)
    has_note = any(r.get("note") for r in table_rows)
    header = ["tool", "min", "median", ratio_head, *extras]
    if has_goal:
        header += ["goal", "met?"]
    if has_note:
        header.append("note")
    cells = []
    for r in table_rows:
        status = r.get("status", "ok")
        if status.startswith(("skipped", "failed")):
            line = [r["tool"], status, "", "", *([""] * len(extras))]
        else:
            unit = r.get("unit", "s")
            line = [r["tool"], format_value(r.get("min"), unit),
                    format_value(r.get("median"), unit), _ratio_text(r, ref_row, best)]
            for k in extras:
                v = (r.get("extra") or {}).get(k, "")
                line.append(format_value(v, unit) if is_number(v) and unit == "s"
                            else f"{v:.3g}" if is_number(v) else str(v))
        if has_goal:
            line += [r.get("goal", ""), _verdict_text(r)]
        if has_note:
            line.append(r.get("note", ""))
        cells.append(line)
    return header, cells


# ---------------------------------------------------------------------------
# Text (the groups' own main())
# ---------------------------------------------------------------------------
def print_rows(rows, out=None):
    """The rows as plain-text tables, for a terminal."""
    import textwrap
    write = (out or sys.stdout).write
    group_texts, tables = tables_of(rows)
    for paragraph in group_texts:
        write(textwrap.fill(paragraph, 100) + "\n\n")
    for title, before, table_rows, texts in tables:
        if title:
            write(f"{title}\n")
        for paragraph in before:
            write(textwrap.indent(textwrap.fill(paragraph, 98), "  ") + "\n")
        if table_rows:
            header, cells = _table_cells(table_rows)
            widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header))]
            for line in [header, *cells]:
                write("  " + "  ".join(f"{str(c):<{w}}" for c, w in zip(line, widths)).rstrip()
                      + "\n")
        for paragraph in texts:
            write(textwrap.indent(textwrap.fill(paragraph, 98), "  ") + "\n")
        write("\n")


# ---------------------------------------------------------------------------
# RESULTS.md
# ---------------------------------------------------------------------------
def _version(dist):
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_header(command, repo=None):
    """The lines saying what ran the benchmarks (markdown bullet list)."""
    cpus = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    load = _util.load_average()
    versions = ", ".join(f"{d} {_version(d) or 'not installed'}" for d in PACKAGES)
    lines = [
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Command: `{command}`",
        f"- Machine: {_util._cpu_model()}; {cpus} logical CPUs, {usable} usable by this "
        f"process; {platform.system()} {platform.release()} {platform.machine()}",
        f"- Python {platform.python_version()} ({sys.implementation.name}, "
        f"{'GIL enabled' if getattr(sys, '_is_gil_enabled', lambda: True)() else 'free-threaded, GIL off'})",
        f"- Packages: {versions}",
        f"- Load average at start: {'n/a' if load is None else f'{load:.2f}'}",
    ]
    if repo is not None:
        state = _util._git_state(repo)
        if state:
            lines.append(f"- Code: git {state}")
    return lines


def _md_escape(cell):
    return str(cell).replace("|", "\\|").replace("\n", " ")


def goal_rows(results):
    """Every judged row, over all groups: ``(group, table, row)``."""
    return [(group, row.get("table") or "", row)
            for group, (rows, _) in results.items() for row in map(normalise, rows)
            if row.get("goal") and "tool" in row]


def write_markdown(path, results, header_lines, intro=()):
    """Write RESULTS.md: the machine, a summary of the goals, then each group.

    ``results`` maps group -> (rows, seconds it took or None), in order.
    """
    out = ["# concmagic benchmarks: results", ""]
    out += list(intro)
    if intro:
        out.append("")
    out += header_lines
    out.append("")
    goals = goal_rows(results)
    if goals:
        out += ["## Goals (issue 6)", "",
                "| group | table | tool | goal | measured (median) | met? |",
                "|---|---|---|---|---|---|"]
        for group, table, row in goals:
            status = row.get("status", "ok")
            measured = (status if status.startswith(("skipped", "failed"))
                        else format_value(row.get("median"), row.get("unit", "s")))
            if "ratio" in row and is_number(row["ratio"]) and row.get("unit", "s") == "s":
                measured += f" ({row['ratio']:.2f}x)"
            out.append("| " + " | ".join(_md_escape(c) for c in (
                group, table, row["tool"], row["goal"], measured, _verdict_text(row))) + " |")
        out.append("")
    for group, (rows, took) in results.items():
        out.append(f"## {group}")
        out.append("")
        if took is not None:
            out.append(f"_Took {took:.1f} s._")
            out.append("")
        group_texts, tables = tables_of(rows)
        for paragraph in group_texts:
            out += [paragraph, ""]
        for title, before, table_rows, texts in tables:
            if title:
                out += [f"### {title}", ""]
            for paragraph in before:
                out += [paragraph, ""]
            if table_rows:
                header, cells = _table_cells(table_rows)
                out.append("| " + " | ".join(_md_escape(h) for h in header) + " |")
                out.append("|" + "|".join("---" if i == 0 else "---:"
                                          for i in range(len(header))) + "|")
                for line in cells:
                    out.append("| " + " | ".join(_md_escape(c) for c in line) + " |")
                out.append("")
            for paragraph in texts:
                out += [paragraph, ""]
    text_out = "\n".join(out).rstrip() + "\n"
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text_out)
    os.replace(tmp, path)
    return text_out


# ---------------------------------------------------------------------------
# Goals and samples
# ---------------------------------------------------------------------------
def judge(value, limit, fmt, *, value_min=None, higher=False):
    """``(met, verdict)`` for a figure against a goal's limit.

    ``value`` comes from medians, ``value_min`` (optional) is the same figure
    from the mins: when the two fall on different sides of the limit the
    verdict is "inconclusive" (met None) rather than a coin toss. ``higher``:
    the goal is value >= limit. Within NOISE of the limit, the verdict says so.
    """
    def ok(v):
        return v >= limit if higher else v <= limit

    def words(v):
        if ok(v):
            return "met"
        return f"missed by {fmt(abs(v - limit))}"

    if not is_number(value):
        return None, "not measured"
    met, verdict = ok(value), words(value)
    if is_number(value_min) and ok(value_min) != met:
        return None, (f"inconclusive: the medians say {verdict}, the mins say "
                      f"{words(value_min)} ({fmt(value_min)}); rerun on a quieter machine")
    if limit and abs(value - limit) < _util.NOISE * abs(limit):
        verdict += " (within noise of the limit)"
    return met, verdict


def stats_row(table, tool, stats, **more):
    """A measured row from a ``_util.Stats`` (seconds), with mean, p99 and count as extras."""
    extra = {"mean": stats.mean, "p99": stats.quantile(0.99), "samples": str(stats.runs)}
    extra.update(more.pop("extra", {}))
    return {"table": table, "tool": tool, "min": stats.min, "median": stats.median,
            "extra": extra, **more}
