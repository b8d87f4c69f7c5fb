"""The HTML report of one pulled run: RESULTS/RUN/index.html plus its pictures in RESULTS/RUN/_report/.

What an engineer looks at first after a run: one table (per model: state, run time, cores, files, size,
cost, its log) and the recorder outputs as curves, so nobody opens forty .out files to see whether the
analysis did what it should. Static files only (no script, no server, relative links), so the folder
opens the same from a local disk, a network share or a zip.

Everything comes from the pulled folders themselves (each model's MANIFEST.json and its files); what
the PC knew while the run was followed (cores, cost, VM) is passed in as `rows` and kept in
_report/run.json, so `bin/report` rebuilds the same report later. A bad recorder file becomes a note
in the report, never an error; only the run folder itself being absent is an error.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lib import manifest
from lib import report_plots as plots
from lib.errors import OpsError, UsageError
from lib.log import Log, quiet
from lib.units import human

INDEX = "index.html"
REPORT_DIR = "_report"
RUN_JSON = "run.json"  # in REPORT_DIR: the rows the PC knew (cores, cost, VM), for rebuilds
RECORDER_SUFFIXES = (".out", ".txt")
LOG_NAME = "opensees.log"
LOG_TAIL = 25  # lines of a failed model's log shown in the report
# Pictures per model: drawing costs ~0.1 s each, and a model with 600 recorders would hold up every pull
# for a minute and give a page nobody reads. The rest are listed; `bin/report --max-figures 0` draws all.
MAX_FIGURES = 24


@dataclass
class ModelReport:
    """One model's part of the report: its summary row, pictures and notes."""

    name: str
    row: dict[str, Any]
    figures: list[dict[str, Any]] = field(default_factory=list)  # {"src", "w", "h", "caption", "file"}
    pushover: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    notes: list[str] = field(default_factory=list)
    log_tail: str = ""


def latest_run(results_dir: Path) -> str:
    """The run folder in `results_dir` whose newest model manifest is the newest (for `bin/report` without RUN)."""
    best: tuple[float, str] | None = None
    for run in _subfolders(Path(results_dir)):
        stamps = [(run / m / manifest.NAME).stat().st_mtime for m in _model_names(run)
                  if (run / m / manifest.NAME).is_file()]
        if stamps and (best is None or max(stamps) > best[0]):
            best = (max(stamps), run.name)
    if best is None:
        raise UsageError(f"no pulled run in {results_dir} (a folder RUN/MODEL/ with a MANIFEST.json); "
                         "pull one first (make pull, or make demo)")
    return best[1]


def _model_names(run: Path) -> list[str]:
    """The result folders of a run: MODEL, or MODEL/ROW for each run of a sweep (a folder without a manifest
    whose subfolders have one)."""
    out = []
    for folder in _subfolders(run):
        rows = [r for r in _subfolders(folder) if (r / manifest.NAME).is_file()]
        if rows and not (folder / manifest.NAME).is_file():
            out += [f"{folder.name}/{r.name}" for r in rows]
        else:
            out.append(folder.name)
    return out


def _subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.is_symlink() and not p.name.startswith(("_", ".")))


def write_report(results_dir: Path, run_id: str, *, rows: Iterable[dict[str, Any]] | None = None,
                 plots_by_model: dict[str, list[str | plots.Pair]] | None = None,
                 max_bytes: int = plots.MAX_BYTES, max_points: int = plots.MAX_POINTS,
                 max_figures: int = MAX_FIGURES, now: float | None = None, on_log: Log = quiet) -> Path:
    """Write RESULTS/RUN/index.html and RESULTS/RUN/_report/; returns the index's path.

    rows: what the PC knew of each model while following the run ({"model", and any of "cores",
      "cost", "vm", "state", "note", "seconds"}); kept in _report/run.json for later rebuilds.
    plots_by_model: {model or "*": ["x_file:col,y_file:col" or Pair, ...]}: curves to draw besides
      the pushover pair found from the file names.
    max_figures: recorder files drawn per model (0: all); the others are named in a note.
    Raises UsageError when the run folder does not exist or a plot option is malformed.
    """
    run = Path(results_dir) / run_id
    if not run.is_dir():
        raise UsageError(f"{run} is not a folder: no pulled results for run {run_id!r}")
    wanted = _pairs(plots_by_model or {})
    known = _known_rows(run, rows)
    names = sorted(set(_model_names(run)) | set(known))
    staging = run / f"{REPORT_DIR}.new"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        models = []
        for name in names:
            on_log(f"report: {run_id}/{name}")
            models.append(_model(run, name, known.get(name, {}), staging,
                                 wanted.get(name, []) + wanted.get("*", []), max_bytes, max_points, max_figures))
        (staging / RUN_JSON).write_text(json.dumps({"rows": list(known.values())}, indent=2, sort_keys=True,
                                                   default=str) + "\n", encoding="utf-8")
        page = render(run_id, models, now=time.time() if now is None else now)
        tmp = run / f"{INDEX}.tmp"
        tmp.write_text(page, encoding="utf-8")
        old = run / f"{REPORT_DIR}.old"
        shutil.rmtree(old, ignore_errors=True)
        if (run / REPORT_DIR).exists():
            os.replace(run / REPORT_DIR, old)
        os.replace(staging, run / REPORT_DIR)
        os.replace(tmp, run / INDEX)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return run / INDEX


def refresh_after_pull(results_dir: Path, set_ids: Iterable[str], *, on_log: Log = quiet) -> list[Path]:
    """Rebuild the report of every run a pull just brought sets of ("RUN/MODEL" ids; other ids are not runs).

    A report that cannot be written is one line through on_log, never an error: the results are safe
    on disk whatever happens to their pictures.
    """
    written = []
    for run_id in sorted({i.split("/", 1)[0] for i in set_ids if "/" in i}):
        try:
            written.append(write_report(Path(results_dir), run_id))
        except Exception as exc:  # the pull succeeded; only the report is missing
            on_log(f"report of {run_id} not written: {exc}")
            continue
        on_log(f"report: {written[-1]}")
    return written


def _pairs(spec: dict[str, list[str | plots.Pair]]) -> dict[str, list[plots.Pair]]:
    out: dict[str, list[plots.Pair]] = {}
    for model, items in spec.items():
        for item in items:
            try:
                out.setdefault(model, []).append(item if isinstance(item, plots.Pair) else plots.parse_pair(item))
            except plots.PlotSpecError as exc:
                raise UsageError(str(exc)) from None
    return out


def _known_rows(run: Path, rows: Iterable[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """The rows given now, else the ones kept by the previous build of this report."""
    if rows is None:
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            rows = json.loads((run / REPORT_DIR / RUN_JSON).read_text(encoding="utf-8"))["rows"]
    keep = ("model", "cores", "cost", "vm", "state", "note", "seconds")
    return {str(r["model"]): {k: r[k] for k in keep if k in r} for r in rows or [] if isinstance(r, dict)
            and r.get("model")}


def _model(run: Path, name: str, known: dict[str, Any], out: Path, pairs: list[plots.Pair],
           max_bytes: int, max_points: int, max_figures: int = MAX_FIGURES) -> ModelReport:
    folder = run / name
    man: dict[str, Any] | None = None
    notes = []
    if not folder.is_dir():
        notes.append("no results on this PC" + (f": {known['note']}" if known.get("note") else ""))
    else:
        try:
            man = manifest.read(folder)
        except OpsError as exc:
            notes.append(f"{exc}")
        if man is None and not notes:
            notes.append(f"no {manifest.NAME}: not a complete result set")
    files = man["files"] if man else []
    seconds = (man or {}).get("seconds", known.get("seconds"))
    row = {
        "model": name, "state": (man or {}).get("state") or known.get("state") or "?",
        "seconds": float(seconds) if isinstance(seconds, (int, float)) else None,
        "cores": known.get("cores"), "cost": known.get("cost"), "vm": (man or {}).get("vm") or known.get("vm"),
        "files": len(files), "bytes": sum(f["size"] for f in files), "exit_code": (man or {}).get("exit_code"),
        "started": (man or {}).get("started"), "finished": (man or {}).get("finished"),
        "log": f"{name}/{LOG_NAME}" if (folder / LOG_NAME).is_file() else None, "folder": folder.is_dir(),
    }
    report = ModelReport(name, row, notes=notes)
    if not folder.is_dir():
        return report
    if row["log"] and row["state"] not in ("ok", "?"):
        report.log_tail = _tail(folder / LOG_NAME, LOG_TAIL)
    tables: dict[str, plots.Table] = {}
    undrawn: list[str] = []
    for rel in _recorder_files(folder):
        table = plots.read_table(folder / rel, rel, max_bytes=max_bytes)
        if isinstance(table, str):
            report.skipped.append((rel, table))
            continue
        tables[rel] = table
        if max_figures and len(report.figures) >= max_figures:
            undrawn.append(rel)
            continue
        picture = out / _picture_name(name, rel)
        try:
            drawn = plots.draw_columns(table, picture, max_points=max_points)
        except Exception as exc:  # a file matplotlib cannot draw is a note, not a failed report
            report.skipped.append((rel, f"could not be drawn ({type(exc).__name__}: {exc})"))
            continue
        report.figures.append(_figure(picture, name, rel, table, drawn))
    if undrawn:
        report.notes.append(f"{len(undrawn)} more recorder file(s) not drawn ({undrawn[0]} ... {undrawn[-1]}): "
                            "`bin/report RUN --max-figures 0` draws them all")
    auto = plots.find_pushover(list(tables.values()))
    for pair in ([auto] if auto else []) + pairs:
        values = plots.pair_values(pair, tables)
        if isinstance(values, str):
            if pair is not auto:
                report.notes.append(f"plot {pair.x_file},{pair.y_file}: {values}")
            continue
        picture = out / _picture_name(name, f"pair-{pair.x_file}-{pair.y_file}-{pair.x_cols}-{pair.y_cols}")
        drawn = plots.draw_pair(pair, *values, picture, max_points=max_points)
        report.pushover.append({**_size(picture), "src": _src(picture), "caption": pair.why,
                                "decimated": drawn["decimated"], "rows": len(values[0])})
    return report


def _recorder_files(folder: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not (Path(dirpath) / d).is_symlink())
        for f in filenames:
            full = Path(dirpath) / f
            if f.lower().endswith(RECORDER_SUFFIXES) and not full.is_symlink():
                out.append(full.relative_to(folder).as_posix())
    return sorted(out)


def _picture_name(model: str, rel: str) -> str:
    """A safe, unique PNG name for one model's file (readable part + checksum of the exact names)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model}--{rel}")[:80]
    return f"{readable}-{zlib.crc32(f'{model}/{rel}'.encode()):08x}.png"


def _src(picture: Path) -> str:
    return f"{REPORT_DIR}/{quote(picture.name)}"


def _size(picture: Path) -> dict[str, int]:
    """Pixel size from the PNG header, so the page reserves the space before the image loads."""
    with open(picture, "rb") as fh:
        head = fh.read(24)
    return {"w": int.from_bytes(head[16:20], "big"), "h": int.from_bytes(head[20:24], "big")}


def _figure(picture: Path, model: str, rel: str, table: plots.Table, drawn: dict[str, Any]) -> dict[str, Any]:
    bits = [f"{table.total_rows} rows, {table.columns} column(s)"]
    if drawn["decimated"]:
        bits.append(f"drawn from {drawn['rows_drawn']} rows (every peak kept; the file is unchanged)")
    if drawn["restarts"]:
        bits.append("rows before the first column last restarts (e.g. gravity) in grey")
    if drawn["not_drawn"]:
        bits.append(f"first {drawn['panels']} value columns shown, {drawn['not_drawn']} more in the file")
    return {**_size(picture), "src": _src(picture), "file": rel, "href": _href(model, rel), "caption": "; ".join(bits)}


def _href(model: str, rel: str) -> str:
    return "/".join(quote(part) for part in [model, *rel.split("/")])


def _tail(path: Path, n: int) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - 64 * 1024))
        return "\n".join(fh.read().decode("utf-8", errors="replace").splitlines()[-n:])
    return ""


# -- the page -----------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;color:#1d232b;margin:0;background:#f5f6f8}
main{max-width:1240px;margin:0 auto;padding:20px 28px 40px;background:#fff;min-height:100vh}
h1{font-size:22px;margin:0 0 2px}h2{font-size:18px;margin:28px 0 8px;padding-top:12px;border-top:1px solid #e3e6ea}
h3{font-size:14px;margin:16px 0 6px;color:#46505c}
.meta{color:#5c6773;margin:0 0 12px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:6px 10px;border-bottom:1px solid #e3e6ea;text-align:left;white-space:nowrap}
th{background:#eef1f4;font-weight:600;font-size:13px}td.n{text-align:right}th.n{text-align:right}
tr:hover td{background:#fafbfc}
.state{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;background:#e3e6ea}
.state.ok{background:#dcf2e3;color:#16643a}.state.failed,.state.lost,.state.upload_failed{background:#fbe0de;color:#9b1c13}
.state.timeout{background:#fdf0d2;color:#8a5a00}
.grid{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;border:1px solid #e3e6ea;border-radius:6px;padding:8px;background:#fff;max-width:100%}
figure img{display:block;max-width:100%;height:auto}
figcaption{font-size:12px;color:#5c6773;margin-top:4px;max-width:640px}
.notes{color:#8a5a00;font-size:13px}.notes code{color:#1d232b}
pre{background:#f3f4f6;padding:8px;overflow:auto;font-size:12px;max-height:320px}
a{color:#1f5fa8}nav a{margin-right:12px}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any, fmt: str = "{}", numeric: bool = False) -> str:
    text = "&ndash;" if value is None or value == "" else _esc(fmt.format(value))
    return f"<td class=\"n\">{text}</td>" if numeric else f"<td>{text}</td>"


def render(run_id: str, models: list[ModelReport], *, now: float) -> str:
    """The whole page as text (exposed for tests: it depends only on its arguments)."""
    states: dict[str, int] = {}
    for m in models:
        states[m.row["state"]] = states.get(m.row["state"], 0) + 1
    costs = [m.row["cost"] for m in models if isinstance(m.row["cost"], (int, float))]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now))
    out = ["<!doctype html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
           f"<title>ops-hpc run {_esc(run_id)}</title><style>{_CSS}</style></head><body><main>",
           f"<h1>Run {_esc(run_id)}</h1>",
           f"<p class=\"meta\">{len(models)} model(s): "
           + ", ".join(f"{n} {_esc(s)}" for s, n in sorted(states.items()))
           + (f" &middot; cost ${sum(costs):.4f} (list prices)" if costs else "")
           + f" &middot; report written {when} by ops-hpc (<code>bin/report {_esc(run_id)}</code> rebuilds it)</p>"]
    out += ["<table><thead><tr><th>model</th><th>state</th><th class=\"n\">run time</th><th class=\"n\">cores</th>"
            "<th class=\"n\">files</th><th class=\"n\">size</th><th class=\"n\">cost</th><th>log</th><th>VM</th>"
            "</tr></thead><tbody>"]
    for m in models:
        r = m.row
        log = f"<td><a href=\"{_href(m.name, LOG_NAME)}\">{LOG_NAME}</a></td>" if r["log"] else _cell(None)
        out.append(
            f"<tr><td><a href=\"#m-{quote(m.name)}\">{_esc(m.name)}</a></td>"
            f"<td><span class=\"state {_esc(r['state'])}\">{_esc(r['state'])}</span></td>"
            + _cell(r["seconds"], "{:.1f} s", True) + _cell(r["cores"], numeric=True)
            + _cell(r["files"] if r["files"] or r["state"] != "?" else None, numeric=True)
            + _cell(human(r["bytes"]) if r["files"] else None, numeric=True)
            + _cell(r["cost"], "${:.4f}", True) + log + _cell(r["vm"]) + "</tr>")
    out.append("</tbody></table>")
    if costs:
        out.append("<p class=\"meta\">Cost: each model's share of its VM at list prices (run time x hourly rate); "
                   "the bill may differ.</p>")
    for m in models:
        out += _model_section(m)
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"


def _model_section(m: ModelReport) -> list[str]:
    r = m.row
    facts = [f"exit code {r['exit_code']}" if r["exit_code"] is not None else "",
             f"started {r['started']}" if r["started"] else "", f"finished {r['finished']}" if r["finished"] else "",
             f"folder <a href=\"{quote(m.name)}/\">{_esc(m.name)}/</a>" if r["folder"] else ""]
    out = [f"<section id=\"m-{quote(m.name)}\"><h2>{_esc(m.name)} "
           f"<span class=\"state {_esc(r['state'])}\">{_esc(r['state'])}</span></h2>",
           f"<p class=\"meta\">{' &middot; '.join(f for f in facts if f)}</p>"]
    if m.notes:
        out.append("<ul class=\"notes\">" + "".join(f"<li>{_esc(n)}</li>" for n in m.notes) + "</ul>")
    if m.log_tail:
        out.append(f"<h3>End of {LOG_NAME}</h3><pre>{_esc(m.log_tail)}</pre>")
    for p in m.pushover:
        out.append(f"<figure><img src=\"{p['src']}\" width=\"{p['w']}\" height=\"{p['h']}\" "
                   f"alt=\"pushover curve of {_esc(m.name)}\"><figcaption>{_esc(p['caption'])}</figcaption></figure>")
    if m.figures:
        out.append("<h3>Recorder files: every column against the first</h3><div class=\"grid\">")
        for f in m.figures:
            out.append(f"<figure><img src=\"{f['src']}\" width=\"{f['w']}\" height=\"{f['h']}\" "
                       f"alt=\"{_esc(f['file'])}\"><figcaption><a href=\"{f['href']}\">{_esc(f['file'])}</a>: "
                       f"{_esc(f['caption'])}</figcaption></figure>")
        out.append("</div>")
    elif not m.skipped and not m.notes:
        out.append("<p class=\"meta\">No .out or .txt recorder files.</p>")
    if m.skipped:
        out.append("<h3>Not plotted</h3><ul class=\"notes\">" + "".join(
            f"<li><a href=\"{_href(m.name, f)}\">{_esc(f)}</a>: {_esc(why)}</li>" for f, why in m.skipped) + "</ul>")
    out.append("</section>")
    return out
