"""Parametric runs of one model folder: arguments, sweep tables and shared files on a batch line.

    FOLDER [args="-scale 1.5"] [sweep=TABLE.csv] [shared=FOLDER]

- `args` is split like a shell line (quotes group, no expansion) and passed to the main script after
  its name: Tcl's `$argv` / `$argc`, Python's `sys.argv[1:]`.
- `sweep` names a CSV table (UTF-8, comma separated, a header row): one run per row. The run's name
  comes from a `name` column, else from the first column, made safe for a folder name (letters,
  digits, '.', '_', '-'); names are compared case-insensitively; a repeated `name` value is an error,
  a repeat derived from the first column gets `-2`, `-3`, ... Every other column is one argument pair
  `-COLUMN value` appended after `args` (the first column too when it only names the run), or, with
  the header `env:VAR`, the environment variable VAR. An empty cell leaves that argument (variable)
  out for the row. The runs land as RESULTS/RUN/MODEL/ROWNAME/.
- `shared` names a folder (ground-motion records, a model library) staged once per run and available
  read-only to every model of the line: linked into the model's folder under the folder's name and
  named by the environment variable OPS_HPC_SHARED.

Paths are relative to the batch file's folder. Everything here is pure (reads the named files only)
so the rules are unit-tested; lib/batches.py reports the errors with the batch file's line.
"""

from __future__ import annotations

import csv
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from lib.errors import UsageError

KEYS = ("args", "sweep", "shared")
NAME_MAX = 63
MAX_RUNS = 5000  # rows of one table: each is a model entry, a status line and a result set
ARG_RX = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
ENV_RX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ENV_RESERVED = ("PATH", "HOME", "PWD", "SHELL", "USER", "TMPDIR", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH")
NAME_COLUMN = "name"


class ParamError(UsageError):
    """One bad option of a batch line; the message says what to do (the caller adds FILE:LINE)."""


@dataclass(frozen=True)
class Run:
    """One row of a sweep table: the run's name and what it adds to the line's arguments and environment."""

    name: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    line: int


@dataclass(frozen=True)
class Expansion:
    """What a line's parametric options amount to: its own arguments, its sweep runs (None: one plain run), shared."""

    args: tuple[str, ...] = ()
    runs: tuple[Run, ...] | None = None
    shared: Path | None = None


def split_args(text: str) -> tuple[str, ...]:
    """`args=` as a shell would split it (quotes group words; nothing is expanded)."""
    try:
        return tuple(shlex.split(text, posix=True))
    except ValueError as exc:
        raise ParamError(f"args={text!r}: {str(exc).lower()}; balance the quotes inside the value "
                         "(e.g. args=\"-title 'two words'\")") from None


def sanitize(text: str, fallback: str) -> str:
    """A folder-safe run name: runs of other characters become '_', no leading '.', '_' or '-', at most 63."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip())
    name = re.sub(r"^[._-]+", "", name)[:NAME_MAX].rstrip(".")
    return name or fallback


def parse_sweep(text: str, source: str) -> tuple[Run, ...]:
    """The runs of a sweep table given as text; errors name `source`:LINE and what to change."""
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise ParamError(f"{source}:{reader.line_num}: not a valid CSV table ({exc}); "
                         "quote cells holding commas or quotes with \"...\"") from None
    rows = [(n, r) for n, r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise ParamError(f"{source}: empty sweep table; write a header row, then one row per run")
    head_line, header = rows[0]
    columns = _columns(header, source, head_line)
    body = rows[1:]
    if not body:
        raise ParamError(f"{source}: no runs (only a header); add one row per run")
    if len(body) > MAX_RUNS:
        raise ParamError(f"{source}: {len(body)} runs, at most {MAX_RUNS} per table; split it over several lines")
    lower = [c.lower() for c in columns]
    name_col = lower.index(NAME_COLUMN) if NAME_COLUMN in lower else 0
    explicit = NAME_COLUMN in lower
    runs: list[Run] = []
    seen: dict[str, int] = {}
    for line, row in body:
        if len(row) != len(columns):
            raise ParamError(f"{source}:{line}: {len(row)} cell(s) but the header has {len(columns)} column(s) "
                             f"({', '.join(columns)}); give every row one cell per column (empty cells are allowed)")
        args: list[str] = []
        env: list[tuple[str, str]] = []
        for i, (column, cell) in enumerate(zip(columns, row, strict=True)):
            value = cell.strip()
            if (explicit and i == name_col) or value == "":
                continue
            if column.lower().startswith("env:"):
                env.append((column[4:], value))
            else:
                args += [f"-{column}", value]
        name = sanitize(row[name_col], f"row{len(runs) + 1}")
        if name.lower() in seen:
            if explicit:
                raise ParamError(f"{source}:{line}: run name {name!r} repeats line {seen[name.lower()]}; "
                                 f"give every row its own {columns[name_col]!r}")
            base, k = name[:NAME_MAX - 4], 2
            while f"{base}-{k}".lower() in seen:
                k += 1
            name = f"{base}-{k}"
        seen[name.lower()] = line
        runs.append(Run(name, tuple(args), tuple(env), line))
    return tuple(runs)


def _columns(header: list[str], source: str, line: int) -> list[str]:
    columns = [c.strip() for c in header]
    if len(columns) == 1 and ";" in columns[0]:
        raise ParamError(f"{source}:{line}: the header has no commas (semicolons?); save the table as "
                         "comma-separated CSV")
    seen: set[str] = set()
    for c in columns:
        if not c:
            raise ParamError(f"{source}:{line}: a column has no header; name every column")
        if c.lower().startswith("env:"):
            var = c[4:]
            if not ENV_RX.fullmatch(var):
                raise ParamError(f"{source}:{line}: column {c!r}: env:VAR needs a variable name of letters, "
                                 "digits and '_'")
            if var.upper() in ENV_RESERVED or var.upper().startswith("OPS_"):
                raise ParamError(f"{source}:{line}: column {c!r}: {var} is set by the VM; use another variable name")
        elif not ARG_RX.fullmatch(c):
            raise ParamError(f"{source}:{line}: column {c!r} cannot be an argument name (letters, digits, "
                             "'_', '.', '-', starting with a letter); rename it, or make it env:VAR")
        if c.lower() in seen:
            raise ParamError(f"{source}:{line}: column {c!r} appears twice; rename one")
        seen.add(c.lower())
    return columns


def read_sweep(path: Path, shown: str) -> tuple[Run, ...]:
    """The runs of the sweep table at `path` (`shown`: how the batch names it, used in messages)."""
    if not path.is_file():
        raise ParamError(f"sweep table {shown!r} does not exist (paths are relative to the batch file)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ParamError(f"sweep table {shown!r} is not UTF-8 text; save it as CSV UTF-8") from None
    except OSError as exc:
        raise ParamError(f"sweep table {shown!r} cannot be read ({exc.strerror or exc})") from None
    return parse_sweep(text, shown)


def check_shared(text: str, base: Path, model_folder: Path) -> Path:
    """The shared folder `text` names: an existing folder, not the model folder nor inside it."""
    if not text:
        raise ParamError("shared= needs a folder (e.g. shared=records)")
    try:
        folder = (base / text).resolve()
    except (RuntimeError, OSError) as exc:
        raise ParamError(f"shared folder {text!r} cannot be resolved ({exc})") from None
    if not folder.is_dir():
        raise ParamError(f"shared folder {text!r} does not exist (paths are relative to the batch file)")
    if folder == model_folder or model_folder in folder.parents:
        raise ParamError(f"shared folder {text!r} is inside the model folder, which is staged anyway; "
                         "move it next to the model folder")
    if (model_folder / folder.name).exists() or (model_folder / folder.name).is_symlink():
        raise ParamError(f"the model folder already holds {folder.name!r}, the name the shared folder {text!r} "
                         "gets there on the VM; rename one of them")
    return folder


def expand(options: dict[str, str], base: Path, model_folder: Path) -> Expansion:
    """A line's `args`, `sweep` and `shared` options checked and read; raises ParamError on the first problem."""
    args = split_args(options["args"]) if "args" in options else ()
    runs = None
    if "sweep" in options:
        shown = options["sweep"]
        if not shown:
            raise ParamError("sweep= needs a CSV table (e.g. sweep=records.csv)")
        runs = read_sweep(base / shown, shown)
    shared = check_shared(options["shared"], base, model_folder) if "shared" in options else None
    return Expansion(args=args, runs=runs, shared=shared)


def shared_keys(folders: list[Path]) -> dict[Path, str]:
    """A staging key per distinct shared folder: its name made safe, `-2`, `-3`... when two folders share it."""
    keys: dict[Path, str] = {}
    used: set[str] = set()
    for folder in folders:
        if folder in keys:
            continue
        key = sanitize(folder.name, "shared")
        k, candidate = 2, key
        while candidate.lower() in used:
            candidate, k = f"{key}-{k}", k + 1
        used.add(candidate.lower())
        keys[folder] = candidate
    return keys
