"""Recorder files as curves for the run report: read (or refuse) a numeric file, decimate it, draw PNGs.

A recorder file is plotted when it is a rectangle of numbers: one row per step, the same number of
values on every line, separated by spaces, tabs or commas (one non-numeric first line is taken as
column names). Anything else (text, ragged rows, empty, larger than `max_bytes`) is refused with a
one-line reason the report shows; nothing here raises on a bad file, and no file is ever written to.

Large files are decimated for drawing only: the rows are cut into buckets and each bucket keeps its
first row and the rows where any plotted column reaches its minimum or maximum, so peaks survive.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lib.units import human

MAX_BYTES = 256 << 20  # larger recorder files are listed, not plotted
MAX_POINTS = 4000  # rows drawn per curve at most (min/max buckets keep the peaks)
MAX_PANELS = 16  # columns drawn per file; more are named in a note
_SPLIT = re.compile(r"[,\s]+")
_CHUNK = 20000  # rows converted to floats at a time (strings cost far more memory than floats)


@dataclass
class Table:
    """A recorder file as read: all of its rows, or an evenly decimated selection of them."""

    path: str  # relative to the model folder, POSIX
    names: list[str]  # one label per column: the header's names, else "col 1", "col 2", ...
    data: Any  # numpy array, rows x columns
    total_rows: int  # rows in the file

    @property
    def columns(self) -> int:
        return int(self.data.shape[1])


@dataclass(frozen=True)
class Pair:
    """One pushover-style curve: y (a column, or the sum of several) against x, row by row."""

    x_file: str
    x_cols: tuple[int, ...]  # 1-based column numbers; several are summed
    y_file: str
    y_cols: tuple[int, ...]
    y_sign: float = 1.0  # -1: base shear is minus the sum of the reactions
    why: str = ""  # how it was chosen, shown under the plot


class PlotSpecError(ValueError):
    """A `plot=x_file:col,y_file:col` value that cannot be read."""


def parse_pair(text: str) -> Pair:
    """`x_file:col,y_file:col` (1-based columns; `2+5` sums columns 2 and 5) -> Pair."""
    halves = text.split(",")
    if len(halves) != 2:
        raise PlotSpecError(f"plot={text!r}: expected x_file:col,y_file:col")
    parts = []
    for half in halves:
        name, sep, cols = half.strip().rpartition(":")
        if not sep or not name or not re.fullmatch(r"\d+(\+\d+)*", cols.strip()):
            raise PlotSpecError(f"plot={text!r}: {half.strip()!r} is not file:column (columns count from 1, "
                                "e.g. output/roof_disp.out:2, or 2+5 to add columns)")
        numbers = tuple(int(c) for c in cols.split("+"))
        if 0 in numbers:
            raise PlotSpecError(f"plot={text!r}: columns count from 1")
        parts.append((name.strip().replace("\\", "/"), numbers))
    (xf, xc), (yf, yc) = parts
    return Pair(xf, xc, yf, yc, why="named in the plot option")


def _floats(line: str) -> list[str]:
    return [t for t in _SPLIT.split(line.strip()) if t]


def read_table(path: Path, rel: str, *, max_bytes: int = MAX_BYTES) -> Table | str:
    """The file's numbers, or the reason it cannot be plotted (a short phrase for the report)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if size == 0:
        return "empty"
    if size > max_bytes:
        return f"too large to plot ({human(size)}; the limit is {human(max_bytes)})"
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if b"\0" in raw[:65536]:
        return "binary, not text"
    text = raw.decode("utf-8", errors="replace")
    del raw
    lines = text.splitlines()
    del text
    chunks: list[Any] = []
    rows: list[list[str]] = []
    where: list[int] = []  # the line number of each row, for messages
    names: list[str] | None = None
    first = width = 0
    for number, line in enumerate(lines, 1):
        tokens = _floats(line)
        if not tokens:
            continue  # blank lines (a trailing newline, a gap) are not rows
        if not width:
            width, first = len(tokens), number
            if all(not _numeric(t) for t in tokens):
                names = tokens  # column names, if numbers of the same width follow
                continue
        if len(tokens) != width or (names and not rows and not chunks and not all(map(_numeric, tokens))):
            if names and not rows and not chunks:  # the "header" was the start of a text file
                return f"not numeric (line {first}: {line_text(lines[first - 1])!r})"
            if not all(map(_numeric, tokens)):
                return f"not numeric (line {number}: {line_text(line)!r})"
            return f"ragged columns (line {number} has {len(tokens)} values, line {first} has {width})"
        rows.append(tokens)
        where.append(number)
        if len(rows) == _CHUNK:
            chunk = _to_array(rows, where, lines)
            if isinstance(chunk, str):
                return chunk
            chunks.append(chunk)
            rows, where = [], []
    if rows:
        chunk = _to_array(rows, where, lines)
        if isinstance(chunk, str):
            return chunk
        chunks.append(chunk)
    if not chunks:
        return "empty" if names is None else "only a header line, no numbers"
    data = np.concatenate(chunks)
    if data.ndim != 2 or data.shape[0] < 2:
        return "only one row: nothing to draw"
    labels = [f"col {i + 1}" for i in range(data.shape[1])]
    if names:
        labels = [f"col {i + 1} {n}" for i, n in enumerate(names)]
    return Table(rel, labels, data, int(data.shape[0]))


def _to_array(rows: list[list[str]], where: list[int], lines: list[str]) -> Any:
    """Rows of number strings as floats, or 'not numeric' naming the first bad line."""
    try:
        return np.array(rows, dtype=float)
    except ValueError:
        bad = next(i for i, r in enumerate(rows) if not all(_numeric(t) for t in r))
        return f"not numeric (line {where[bad]}: {line_text(lines[where[bad] - 1])!r})"


def line_text(line: str) -> str:
    """A line as quoted in a note: stripped, at most 40 characters."""
    line = line.strip()
    return line if len(line) <= 40 else line[:39] + "…"


def _numeric(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def decimate(data: Any, max_points: int = MAX_POINTS) -> Any:
    """Row indices to draw: all when few, else per bucket its first row and every column's min and max."""
    n = int(data.shape[0])
    if n <= max_points:
        return np.arange(n)
    cols = data.shape[1] if data.ndim == 2 else 1
    buckets = max(1, max_points // (1 + 2 * max(1, cols - 1)))
    size = math.ceil(n / buckets)
    keep = [np.arange(0, n, size), [n - 1]]
    body = data[:, 1:] if data.ndim == 2 and cols > 1 else data.reshape(n, -1)
    pad = (-n) % size
    if pad:  # repeat the last row so every bucket is full; duplicates collapse in np.unique
        body = np.concatenate([body, np.repeat(body[-1:], pad, axis=0)])
    blocks = body.reshape(-1, size, body.shape[1])
    starts = np.arange(blocks.shape[0])[:, None] * size
    with np.errstate(invalid="ignore"):
        finite = np.where(np.isfinite(blocks), blocks, np.nan)
        for pick in (np.nanargmin, np.nanargmax):
            try:
                idx = pick(finite, axis=1)
            except ValueError:  # a bucket that is all NaN
                continue
            keep.append((starts + idx).ravel())
    out = np.unique(np.concatenate([np.asarray(k, dtype=np.int64) for k in keep]))
    return out[out < n]


# -- which pair of files makes a pushover curve -------------------------------------------------

_REACTION = re.compile(r"reaction|base.?shear|baseshear", re.IGNORECASE)
_TOP_DISP = re.compile(r"(roof|top).*disp|disp.*(roof|top)", re.IGNORECASE)


def find_pushover(tables: list[Table]) -> Pair | None:
    """The obvious base-shear / roof-displacement pair of a model's recorders, if there is exactly one.

    Obvious means: exactly one file whose name says roof or top and displacement (`roof_disp.out`,
    `top_displacement.txt`) holding time plus ONE value, and exactly one file whose name says reaction
    or base shear (`base_reactions.out`, `baseShear.out`). A reaction file with one value column is
    plotted as it is, negated; one with 3*n value columns is read as n nodes of a 2-D frame (Fx, Fy, Mz
    each) and base shear = -(sum of Fx). Anything else is not obvious: name the pair with plot=.
    """
    disp = [t for t in tables if _TOP_DISP.search(Path(t.path).name) and t.columns == 2]
    react = [t for t in tables if _REACTION.search(Path(t.path).name) and t.columns >= 2]
    if len(disp) != 1 or len(react) != 1:
        return None
    values = react[0].columns - 1
    cols: tuple[int, ...]
    if values == 1:
        cols, why = (2,), "base shear = -(reaction column 2)"
    elif values % 3 == 0:
        cols = tuple(range(2, react[0].columns, 3))
        why = (f"base shear = -(sum of columns {', '.join(map(str, cols))}): read as {values // 3} node(s) "
               "x 3 DOFs (Fx, Fy, Mz of a 2-D frame)")
    else:
        return None
    return Pair(disp[0].path, (2,), react[0].path, cols, -1.0,
                why=f"chosen from the file names ({why}); give plot=x_file:col,y_file:col to choose")


def pair_values(pair: Pair, tables: dict[str, Table]) -> tuple[Any, Any] | str:
    """(x, y) arrays of a pair, row by row (the shorter file decides), or why they cannot be drawn."""
    got = []
    for name, cols in ((pair.x_file, pair.x_cols), (pair.y_file, pair.y_cols)):
        table = tables.get(name)
        if table is None:
            return f"{name} is not a plottable recorder file of this model"
        if max(cols) > table.columns:
            return f"{name} has {table.columns} column(s), not {max(cols)}"
        got.append(table.data[:, [c - 1 for c in cols]].sum(axis=1))
    n = min(len(got[0]), len(got[1]))
    return got[0][:n], pair.y_sign * got[1][:n]


# -- drawing ------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, works on a server and on Windows alike
    import matplotlib.pyplot as plt

    return plt


def _style(ax: Any) -> None:
    ax.grid(True, color="#d0d4da", linewidth=0.6)
    ax.tick_params(labelsize=8)
    ax.locator_params(nbins=5)
    ax.ticklabel_format(axis="both", style="sci", scilimits=(-3, 4), useOffset=False)
    ax.xaxis.get_offset_text().set_fontsize(7)
    ax.yaxis.get_offset_text().set_fontsize(7)


def x_label(table: Table) -> str:
    """The first column's label: 'time', or where it goes back (e.g. `loadConst -time 0.0` after gravity)."""
    first = table.data[:, 0]
    back = np.flatnonzero(np.diff(first) < 0)
    if back.size == 0:
        return f"{table.names[0]} (time)"
    return f"{table.names[0]} (time; restarts at row {int(back[-1]) + 2})"


def draw_columns(table: Table, dest: Path, *, max_points: int = MAX_POINTS, max_panels: int = MAX_PANELS) -> dict:
    """Small multiples: every column after the first against the first. Returns what was drawn."""
    plt = _pyplot()
    data = table.data
    if table.columns == 1:  # a single column: against the step number
        data = np.column_stack([np.arange(1, len(data) + 1), data])
        names, xlabel = ["step", *table.names], "step (row number)"
    else:
        names, xlabel = table.names, x_label(table)
    panels = list(range(1, data.shape[1]))[:max_panels]
    rows_drawn = decimate(data[:, [0, *panels]], max_points)
    per_row = 1 if len(panels) == 1 else 2 if len(panels) <= 4 else 3 if len(panels) <= 9 else 4
    lines = math.ceil(len(panels) / per_row)
    panel_w, panel_h, gap_w, gap_h = (4.2, 2.6, 0, 0) if per_row == 1 else (2.35, 1.75, 0.85, 0.95)
    left, right, bottom, top = 0.75, 0.15, 0.5, 0.42
    width = left + right + per_row * panel_w + (per_row - 1) * gap_w
    height = bottom + top + lines * panel_h + (lines - 1) * gap_h
    fig, axes = plt.subplots(lines, per_row, figsize=(width, height), squeeze=False)
    # fixed margins in inches: a layout engine measures every label and costs seconds per figure
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=gap_w / panel_w, hspace=gap_h / panel_h)
    x = data[rows_drawn, 0]
    # where the first column goes back (gravity, then `loadConst -time 0.0`): earlier rows drawn in grey
    restart = np.flatnonzero(np.diff(x) < 0)
    last = int(restart[-1]) + 1 if restart.size else 0
    for k, col in enumerate(panels):
        ax = axes[k // per_row][k % per_row]
        y = data[rows_drawn, col]
        if last:
            ax.plot(x[:last], y[:last], color="#9aa3ad", linewidth=0.9)
        ax.plot(x[last:], y[last:], color="#1f5fa8", linewidth=1.0)
        ax.set_title(f"{table.path}: {names[col]}", fontsize=8.5, loc="left", pad=11)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(names[col], fontsize=8)
        _style(ax)
    for k in range(len(panels), lines * per_row):
        axes[k // per_row][k % per_row].set_visible(False)
    fig.savefig(dest, dpi=96)
    plt.close(fig)
    return {"panels": len(panels), "not_drawn": data.shape[1] - 1 - len(panels), "restarts": bool(last),
            "rows_drawn": int(len(rows_drawn)), "decimated": len(rows_drawn) < len(data)}


def draw_pair(pair: Pair, x: Any, y: Any, dest: Path, *, max_points: int = MAX_POINTS) -> dict:
    """One larger plot of y against x (the pushover curve), decimated on both together."""
    plt = _pyplot()
    rows_drawn = decimate(np.column_stack([np.arange(len(x)), x, y]), max_points)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.92)
    ax.plot(x[rows_drawn], y[rows_drawn], color="#b3261e", linewidth=1.4)
    ax.set_xlabel(f"{pair.x_file}: col {'+'.join(map(str, pair.x_cols))}", fontsize=9)
    sign = "-" if pair.y_sign < 0 else ""
    ax.set_ylabel(f"{sign}({pair.y_file}: col {'+'.join(map(str, pair.y_cols))})", fontsize=9)
    ax.set_title("pushover: base shear against roof displacement" if pair.y_sign < 0
                 else f"{pair.y_file} against {pair.x_file}", fontsize=10, loc="left")
    _style(ax)
    fig.savefig(dest, dpi=96)
    plt.close(fig)
    return {"rows_drawn": int(len(rows_drawn)), "decimated": len(rows_drawn) < len(x)}
