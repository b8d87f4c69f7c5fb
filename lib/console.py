"""`ops-hpc`: one command for every job (`pip install .` makes it; ops-hpc.exe on Windows).

  ops-hpc pull --yes          a bin/ script: the same flags and output as `bin/pull`
  ops-hpc run-staged --wait   an invoke task: the same flags as `invoke run-staged`
  ops-hpc results download    grouped names (results/vm/image/run/localcloud) work too

Each subcommand is either a bin/ script (its `main(argv)` runs in this process) or a task of
lib/tasks.py (run through invoke's parser, so flags and `--help` match `invoke`). Errors end
in the same boundary as everywhere else (lib/cli.py).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Sequence

from lib import cli, paths

# subcommand -> bin/ script
SCRIPTS = ("pull", "verify", "report", "stage", "launch", "push", "sweep", "status", "localcloud", "runs")
# subcommand -> invoke task path in lib/tasks.py
TASKS = {
    "setup": "setup", "cleanup": "cleanup", "config": "config", "run-staged": "run-staged", "run": "run.jobs",
    "build": "build", "log": "log", "demo": "demo", "watch": "watch", "monitor": "monitor", "extend": "extend",
    "abort": "abort", "emergency": "emergency", "delete-vm": "delete-vm", "download": "download", "test": "test",
    "image": "image.list",
}
# grouped names (and the names a user of the desktop tool knows) -> argv of a subcommand above
ALIASES = {
    ("results", "download"): ["pull"], ("results", "pull"): ["pull"], ("results", "list"): ["pull", "--list"],
    ("results", "watch"): ["watch"], ("results", "verify"): ["verify"],
    ("vm", "push"): ["push"], ("vm", "launch"): ["launch"], ("vm", "delete"): ["delete-vm"],
    ("vm", "stop"): ["delete-vm"], ("vm", "abort"): ["abort"], ("vm", "emergency"): ["emergency"],
    ("vm", "monitor"): ["monitor"], ("vm", "extend"): ["extend"], ("vm", "download"): ["download"],
    ("run", "staged"): ["run-staged"], ("run", "jobs"): ["run"], ("run", "log"): ["log"], ("run", "demo"): ["demo"],
    ("run", "stage"): ["stage"], ("run", "list"): ["runs"],
}
GROUPS = ("results", "vm", "image", "run", "localcloud")


def _script_summary(name: str) -> str:
    """The first docstring line of bin/NAME, read without importing it (so --help stays fast)."""
    try:
        doc = ast.get_docstring(ast.parse((paths.BIN / name).read_text(encoding="utf-8"))) or ""
    except OSError:
        return ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def usage() -> str:
    from lib import tasks

    lines = ["usage: ops-hpc COMMAND [options]   (ops-hpc COMMAND --help for its options)", "", "commands:"]
    for name in SCRIPTS:
        lines.append(f"  {name:<12} {_script_summary(name)}")
    for name, path in TASKS.items():
        doc = (tasks.ns[path].__doc__ or "").strip().splitlines()
        lines.append(f"  {name:<12} {doc[0] if doc else ''}")
    lines += ["", "grouped names: " + ", ".join(f"{a} {b}" for a, b in ALIASES),
              "also: ops-hpc image list|archive|restore|delete|build, ops-hpc localcloud up|down|status|env",
              "exit codes: 0 ok, 1 failed, 2 bad input or setup, 3 refused, 130 interrupted (README: Errors)"]
    return "\n".join(lines)


def resolve(argv: Sequence[str]) -> tuple[str, str, list[str]]:
    """('script'|'task'|'help', target, remaining argv) for a command line."""
    args = list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        return "help", "", []
    if len(args) >= 2 and (args[0], args[1]) in ALIASES:
        args = [*ALIASES[(args[0], args[1])], *args[2:]]
    elif args[0] == "image" and len(args) >= 2 and not args[1].startswith("-"):
        return "task", f"image.{args[1]}", args[2:]
    head, rest = args[0], args[1:]
    if head in SCRIPTS:
        return "script", head, rest
    if head == "log":
        rest = log_flags(rest)
    if head in TASKS:
        return "task", TASKS[head], rest
    raise cli.UsageError(f"unknown command {' '.join(args[:2])!r}: `ops-hpc --help` lists them")


def log_flags(argv: Sequence[str]) -> list[str]:
    """`log -f [RUN] [MODEL]` as the task's flags: a run id (run-...) is --run-id, another word --model."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in ("-f", "--follow"):
            out.append("--follow")
        elif arg in ("--tail", "-t", "--run-id", "-r", "--model", "-m"):
            out += [arg, next(args, "")]
        elif arg.startswith("-"):
            out.append(arg)
        elif arg.startswith("run-") and "--run-id" not in out:
            out += ["--run-id", arg]
        else:
            out += ["--model", arg]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    kind, target, rest = resolve(args)
    if kind == "help":
        print(usage())
        return cli.EXIT_OK
    from lib import tasks

    if kind == "script":
        return tasks.load_script(target).main(rest)
    tasks.program_run([target, *rest])  # invoke exits itself on Exit; returning means success
    return cli.EXIT_OK


def run() -> None:
    """The console-script entry point."""
    cli.run(main)


if __name__ == "__main__":
    run()
