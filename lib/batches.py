"""Batch files: which models to run, one per line.

    # comment
    #cores N      (optional header: the usable cores of the VM, overriding lib/packing.usable_cores' rule)
    FOLDER [main=main.tcl] [cores=1] [timeout=60] [name=NAME] [args="..."] [sweep=TABLE.csv] [shared=FOLDER]
           [mem=GB] [retries=N]

FOLDER is relative to the batch file's folder (its *base*) and must stay inside
it, or an absolute folder (`D:\\FEM\\wall_test` on Windows, `/data/wall_test`
elsewhere); quote it if it holds spaces. Files written on Windows read as they are:
backslash paths, UTF-8 with or without a BOM, UTF-16 (PowerShell 5's `>`) and UTF-32. `cores` is what OpenSeesMP gets (1 = sequential
OpenSees), `timeout` is minutes, `name` defaults to the folder's name and names
the result set; `main=*.py` runs with the VM's Python and OpenSeesPy. `args`, `sweep` and `shared`
(parametric runs, one entry per sweep row named MODEL/ROW) are lib/parametric.py's. `mem` (GB, optional)
is packed against the VM's memory like `cores` against its cores; `retries` re-runs a model that failed
(not one that timed out) up to N times. Every bad line is reported with file and line number before
anything is uploaded or created, all of them at once, so a user fixes the file in
one go.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

from lib import parametric
from lib.errors import UsageError

DEFAULTS = {"main": "main.tcl", "cores": "1", "timeout": "60"}
KEYS = ("main", "cores", "timeout", "name", *parametric.KEYS, "mem", "retries")
CORES_HEADER_RX = re.compile(r"#\s*cores\s+(\S+)\s*")
NAME_RX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class BatchError(UsageError):
    """One or more bad lines; the message lists each as FILE:LINE: problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems) if len(problems) == 1 else
                         f"{len(problems)} problems:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Model:
    name: str
    folder: Path
    main: str
    cores: int
    timeout_min: int
    line: int
    args: tuple[str, ...] = ()  # after the main script: Tcl's $argv, Python's sys.argv[1:]
    env: tuple[tuple[str, str], ...] = ()
    shared: Path | None = None  # a folder staged once per run, linked read-only into the model's folder
    group: str = ""  # a sweep's line name: its rows (MODEL/ROW) share the line's staged zip
    mem_gb: float = 0.0
    retries: int | None = None  # None: not set on the line (run-staged's --retries applies)

    def to_json(self) -> dict:
        return {"name": self.name, "main": self.main, "cores": self.cores, "timeout_min": self.timeout_min,
                "mem_gb": self.mem_gb, "retries": self.retries or 0}


@dataclass(frozen=True)
class Batch:
    path: Path
    base: Path
    models: tuple[Model, ...]
    cores: int | None = None  # the `#cores N` header: usable cores of the VM, overriding the SMT rule

    @property
    def timeouts_min(self) -> list[int]:
        return [m.timeout_min for m in self.models]


def parse_batch(path: str | Path) -> Batch:
    """Read and check a batch file; raises BatchError naming every bad line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"batch file {path} does not exist")
    base = path.resolve().parent
    lines = read_text(path).splitlines()
    problems: list[str] = []
    models: list[Model] = []
    seen: dict[str, int] = {}
    header_cores: int | None = None
    for number, raw in enumerate(lines, start=1):
        where = f"{path}:{number}"
        header = CORES_HEADER_RX.fullmatch(raw.strip())
        if header:
            header_cores = _whole(header.group(1))
            if header_cores is None:
                problems.append(f"{where}: #cores {header.group(1)!r} is not a whole number above 0")
            continue
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            tokens = split_line(text)
        except ValueError as exc:
            problems.append(f"{where}: {str(exc).lower()}; balance the quotes on the line "
                            "(a value with spaces in double quotes: args=\"-title 'a b'\")")
            continue
        folder_text, options = tokens[0], {}
        bad = False
        for token in tokens[1:]:
            key, sep, value = token.partition("=")
            if not sep or key not in KEYS:
                problems.append(f"{where}: unknown option {token!r} (expected {', '.join(k + '=' for k in KEYS)})")
                bad = True
                continue
            options[key] = value
        if bad:
            continue
        values = {**DEFAULTS, **options}
        try:
            native, absolute = folder_spec(folder_text)
            folder = (base / native).resolve()
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError on Python < 3.13)
            problems.append(f"{where}: folder {folder_text!r} cannot be resolved ({exc})")
            continue
        if not absolute and folder != base and base not in folder.parents:
            problems.append(f"{where}: folder {folder_text!r} is outside the batch's base {base}")
            continue
        if not folder.is_dir():
            problems.append(f"{where}: folder {folder_text!r} does not exist")
            continue
        main = values["main"]
        if "/" in main or "\\" in main or main in ("", ".", ".."):
            problems.append(f"{where}: main={main!r} must be a file name inside the folder")
            continue
        if not (folder / main).is_file():
            problems.append(f"{where}: no main script {main!r} in {folder_text!r}")
            continue
        if (folder / main).is_symlink() and not _link_inside(folder / main, folder):
            problems.append(f"{where}: main script {main!r} in {folder_text!r} is a symlink to a file outside the "
                            "folder, which is not staged: copy the file into the folder")
            continue
        numbers = {}
        for key in ("cores", "timeout"):
            try:
                numbers[key] = int(values[key])
                if numbers[key] < 1:
                    raise ValueError
            except ValueError:
                problems.append(f"{where}: {key}={values[key]!r} is not a whole number of "
                                f"{'cores' if key == 'cores' else 'minutes'} above 0")
        if len(numbers) < 2:
            continue
        extra: dict = {}
        if "mem" in options:
            try:
                extra["mem_gb"] = float(options["mem"])
                if not 0 < extra["mem_gb"] < 1e5:
                    raise ValueError
            except ValueError:
                problems.append(f"{where}: mem={options['mem']!r} is not a number of GB above 0")
                continue
        if "retries" in options:
            extra["retries"] = _whole(options["retries"], minimum=0)
            if extra["retries"] is None:
                problems.append(f"{where}: retries={options['retries']!r} is not a whole number of 0 or more")
                continue
        name = values.get("name") or folder.name
        if not NAME_RX.fullmatch(name):
            problems.append(f"{where}: model name {name!r} must be letters, digits, '.', '_' or '-' (set name=...)")
            continue
        if name.lower() in seen:
            problems.append(f"{where}: duplicate model name {name!r} (first on line {seen[name.lower()]}; set name=...)")
            continue
        seen[name.lower()] = number
        try:
            more = parametric.expand(values, base, folder)
        except parametric.ParamError as exc:
            problems.append(f"{where}: {exc}")
            continue
        model = Model(name, folder, main, numbers["cores"], numbers["timeout"], number, args=more.args,
                      shared=more.shared, **extra)
        models += [model] if more.runs is None else [
            dataclasses.replace(model, name=f"{name}/{r.name}", args=more.args + r.args, env=r.env, group=name)
            for r in more.runs]
    if header_cores is not None:
        wide = {m.line: m.cores for m in models if m.cores > header_cores}  # a sweep's rows share their line
        problems += [f"{path}:{line}: cores={cores} is more than the batch's #cores {header_cores}"
                     for line, cores in sorted(wide.items())]
    if problems:
        raise BatchError(problems)
    if not models:
        raise UsageError(f"{path}: no models (one line per model: FOLDER [main=] [cores=] [timeout=])")
    return Batch(path=path, base=base, models=tuple(models), cores=header_cores)


def _whole(text: str, minimum: int = 1) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= minimum else None


BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))  # UTF-32 LE's BOM starts like UTF-16 LE's


def read_text(path: Path) -> str:
    """A batch file's text by its byte-order mark (Notepad's UTF-8 BOM, PowerShell 5's UTF-16), else UTF-8."""
    data = path.read_bytes()
    encoding = next((name for bom, name in BOMS if data.startswith(bom)), None)
    if encoding is None and b"\x00" in data:  # no UTF-8 text has NULs: UTF-16 without a BOM (mostly ASCII)
        encoding = "utf-16-le" if data[1::2].count(0) >= data[0::2].count(0) else "utf-16-be"
    try:
        return data.decode(encoding or "utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text file (expected UTF-8 or UTF-16; save it as UTF-8)") from None


def split_line(text: str) -> list[str]:
    """Words of a line as a shell splits them, except that a backslash is a path separator, never an escape."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split, lexer.commenters, lexer.escape = True, "", ""
    return list(lexer)


def folder_spec(text: str, *, windows: bool | None = None) -> tuple[str, bool]:
    """(the folder in this OS's form, whether it is absolute): `models\\wall_test` works on Linux too.

    A Windows drive or UNC path on another OS cannot name a folder there: ValueError says so.
    """
    windows = os.name == "nt" if windows is None else windows
    win = PureWindowsPath(text)
    if windows:
        return text, win.is_absolute()
    if win.drive:
        raise ValueError(f"folder {text!r} is a Windows path: on this machine name the folder relative to the batch "
                         "file or as an absolute path like /data/wall_test")
    posix = text.replace("\\", "/")
    return posix, posix.startswith("/")


def _link_inside(link: Path, folder: Path) -> bool:
    """Whether a symlink resolves to a regular file inside `folder` (staging then copies that file's content)."""
    try:
        target = link.resolve(strict=True)
    except (RuntimeError, OSError):
        return False
    return target.is_file() and folder.resolve() in target.parents
