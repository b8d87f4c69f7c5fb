"""The Python helpers of the VM scripts (lib.sh calls them as `ops_pyhelp COMMAND ARGS...`).

Runs ON the VM with whatever python3 it has: on Rocky 8 that is platform-python 3.6, so this file uses
only the standard library and Python 3.6 syntax (google_crc32c is used when importable, else a pure
Python CRC32C gives the same base64 value GCS reports). It travels with the run (staged next to
lib.sh) and is copied with the ssh tools, so a VM always runs the helpers its scripts were written for.

    crc32c FILE                      base64 CRC32C of FILE
    snapshot DIR OUT                 record DIR's files (path, size, mtime) into OUT: the inputs
    result DIR SNAPSHOT ZIP K=V...   zip every file of DIR that is not an unchanged input, plus a
                                     MANIFEST.json at the root ({"format": 1, K: V..., "files": [...]})
    seal PREFIX OUT PAGE...          MANIFEST.json (format 1, kind push) of the objects in listing PAGEs
    field NAME < JSON                one top-level field of a JSON object ("" when absent)
    urlencode TEXT                   TEXT percent-encoded for a URL path segment or query value
    names PAGE                       the object names of one listing page, one per line
    models BATCH_JSON SCALE SUBSET   name, main, cores, scaled timeout s, zip, crc32c, mem MB, retries (tab
                                     separated) of every model of the batch, or only those named in SUBSET,
                                     in pack order (largest cores x timeout first, then batch order)
    pick FREE_CORES FREE_MB NAME:CORES:MB...   the queued models to start now (FREE_MB "" = no memory limit)
    shared BATCH_JSON SUBSET         key, zip, crc32c (tab separated) of the shared folders those models use
    launch BATCH_JSON NAME CORES SHARED_ROOT
                                     become the model NAME in the current folder: link its shared folder
                                     (SHARED_ROOT/KEY), set its environment (OPS_HPC_SHARED too), then exec
                                     `openseesmp CORES MAIN ARGS...`, or for MAIN *.py `opensees-python -u MAIN
                                     ARGS...` (python3 when the image has no opensees-python)
    notify_body URL EVENT TITLE TEXT_FILE OUT K=V...   write the JSON body for webhook URL to OUT and print
                                     the URL to POST it to (shaped by host as lib/notify.py `payload`)
"""

import base64
import json
import os
import shutil
import struct
import sys
import zipfile
from urllib.parse import quote, urlsplit

_TABLE = []


def _table():
    if not _TABLE:
        for i in range(256):
            v = i
            for _ in range(8):
                v = (v >> 1) ^ 0x82F63B78 if v & 1 else v >> 1
            _TABLE.append(v)
    return _TABLE


def crc32c(path):
    """Base64 big-endian CRC32C of a file, as GCS reports it."""
    try:
        import google_crc32c

        c = google_crc32c.Checksum()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                c.update(block)
        return base64.b64encode(c.digest()).decode()
    except ImportError:
        pass
    table = _table()
    crc = 0xFFFFFFFF
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            for byte in bytearray(block):
                crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return base64.b64encode(struct.pack(">I", crc ^ 0xFFFFFFFF)).decode()


def files(root):
    """{relative posix path: [size, mtime_ns]} of the regular files under root, symlinks left out."""
    out = {}
    for dirpath, dirnames, names in os.walk(root):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for name in names:
            full = os.path.join(dirpath, name)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            st = os.stat(full)
            out[os.path.relpath(full, root).replace(os.sep, "/")] = [st.st_size, st.st_mtime_ns]
    return out


def snapshot(root, dest):
    with open(dest, "w") as fh:
        json.dump(files(root), fh)


def result(root, snap, dest, pairs):
    """Zip the new or changed files of root with a MANIFEST.json; returns (files, bytes)."""
    with open(snap) as fh:
        inputs = json.load(fh)
    meta = {"format": 1}
    for kv in pairs:
        k, v = kv.split("=", 1)
        meta[k] = int(v) if k in ("exit_code", "attempts") else float(v) if k in ("seconds", "ended_at") else v
    listed = []
    for path, (size, mtime) in sorted(files(root).items()):
        if path == "MANIFEST.json" or inputs.get(path) == [size, mtime]:
            continue
        listed.append({"path": path, "size": size, "crc32c": crc32c(os.path.join(root, path))})
    meta["files"] = listed
    with zipfile.ZipFile(dest + ".part", "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for entry in listed:
            zf.write(os.path.join(root, entry["path"]), entry["path"])
        zf.writestr("MANIFEST.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(dest + ".part", dest)
    return len(listed), sum(e["size"] for e in listed)


def seal(prefix, dest, pages):
    listed = []
    for page in pages:
        with open(page) as fh:
            for item in json.load(fh).get("items", []):
                path = item["name"][len(prefix):]
                if path and path != "MANIFEST.json":
                    listed.append({"path": path, "size": int(item["size"]), "crc32c": item.get("crc32c", "")})
    with open(dest, "w") as fh:
        json.dump({"format": 1, "kind": "push", "files": sorted(listed, key=lambda e: e["path"])}, fh,
                  indent=2, sort_keys=True)


def field(name, text):
    value = json.loads(text).get(name, "")
    return "" if value is None else str(value)


def models(batch_json, scale, subset):
    """Tab-separated lines of the models this VM runs, timeouts divided by the clock scale."""
    with open(batch_json) as fh:
        batch = json.load(fh)
    factor = float(scale or 1) or 1.0
    wanted = subset.replace(",", " ").split()
    chosen = [m for m in batch["models"] if not wanted or m["name"] in wanted]
    lines = []
    for m in pack_order(chosen):
        lines.append("\t".join([m["name"], m["main"], str(m["cores"]), "%.3f" % (m["timeout_min"] * 60.0 / factor),
                                m["zip"], m["crc32c"], str(int(round(float(m.get("mem_gb") or 0) * 1024))),
                                str(int(m.get("retries") or 0))]))
    return lines


def pack_order(models):
    """The queue order: largest cores x timeout first, ties in batch order (lib/packing.pack_order)."""
    return [m for _, m in sorted(enumerate(models), key=lambda im: (-im[1]["cores"] * im[1]["timeout_min"], im[0]))]


def pick(pending, free_cores, free_mem_mb):
    """THE scheduling rule: scan (name, cores, mem_mb) in queue order and start every one that fits what is free.

    A model that does not fit does not block smaller ones behind it; that is what makes the makespan
    bound of lib/packing.makespan_bound hold. free_mem_mb None: no memory limit.
    """
    chosen = []
    for name, cores, mem in pending:
        if cores <= free_cores and (free_mem_mb is None or mem <= free_mem_mb):
            chosen.append(name)
            free_cores -= cores
            if free_mem_mb is not None:
                free_mem_mb -= mem
    return chosen
def _entry(batch_json, name):
    with open(batch_json) as fh:
        batch = json.load(fh)
    for m in batch["models"]:
        if m["name"] == name:
            return batch, m
    sys.exit("ops-hpc: model %s is not in %s" % (name, batch_json))


def shared(batch_json, subset):
    """Tab-separated lines of the shared folders the models of this VM use, each once."""
    with open(batch_json) as fh:
        batch = json.load(fh)
    wanted = subset.replace(",", " ").split()
    keys = sorted({m["shared"] for m in batch["models"] if m.get("shared") and (not wanted or m["name"] in wanted)})
    table = batch.get("shared", {})
    return ["\t".join([k, table[k]["zip"], table[k]["crc32c"]]) for k in keys if k in table]


def launch_argv(model, cores, python):
    """The command line of one model: OpenSees(MP) through the launcher for Tcl, the VM's Python for *.py."""
    main, args = model["main"], [str(a) for a in model.get("args", [])]
    if main.lower().endswith(".py"):
        return [python, "-u", main] + args
    return ["openseesmp", str(cores), main] + args


def launch(batch_json, name, cores, shared_root):
    _, model = _entry(batch_json, name)
    env = dict(os.environ)
    env.update({str(k): str(v) for k, v in model.get("env", {}).items()})
    key = model.get("shared")
    if key:
        folder = os.path.join(shared_root, key)
        if not os.path.isdir(folder):
            sys.exit("ops-hpc: the shared folder %s was not fetched onto this VM (see the VM log)" % key)
        env["OPS_HPC_SHARED"] = folder
        link = model.get("shared_link") or key
        if not os.path.lexists(link):
            os.symlink(folder, link)
    python = shutil.which("opensees-python") or shutil.which("python3") or sys.executable
    argv = launch_argv(model, cores, python)
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)


def notify_body(url, event, title, text, fields):
    """(URL to POST to, body) for a webhook, shaped by its host: the same rules as lib/notify.py `payload`."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host == "hooks.slack.com":
        return url, {"text": "*%s*\n%s" % (title, text)}
    if host in ("discord.com", "discordapp.com") or host.endswith(".discord.com"):
        return url, {"content": ("**%s**\n%s" % (title, text))[:2000]}
    if host.endswith((".webhook.office.com", ".logic.azure.com", "outlook.office.com")):
        return url, {"@type": "MessageCard", "@context": "https://schema.org/extensions", "summary": title,
                     "title": title, "text": text.replace("\n", "  \n")}
    if host == "ntfy.sh" or host.startswith("ntfy."):
        return "%s://%s/" % (parts.scheme, parts.netloc), {"topic": parts.path.strip("/"), "title": title,
                                                           "message": text}
    body = {"source": "ops-hpc", "event": event, "title": title, "text": text}
    body.update(fields)
    return url, body


def main(argv):
    if not argv:
        sys.exit("usage: ops_helpers.py COMMAND ARGS...")
    cmd, args = argv[0], argv[1:]
    if cmd == "crc32c":
        print(crc32c(args[0]))
    elif cmd == "snapshot":
        snapshot(args[0], args[1])
    elif cmd == "result":
        print(*result(args[0], args[1], args[2], args[3:]))
    elif cmd == "seal":
        seal(args[0], args[1], args[2:])
    elif cmd == "field":
        print(field(args[0], sys.stdin.read()))
    elif cmd == "urlencode":
        print(quote(args[0], safe=""))
    elif cmd == "names":
        with open(args[0]) as fh:
            for item in json.load(fh).get("items", []):
                print(item["name"])
    elif cmd == "shared":
        for line in shared(args[0], args[1] if len(args) > 1 else ""):
            print(line)
    elif cmd == "launch":
        launch(args[0], args[1], args[2], args[3])
    elif cmd == "models":
        for line in models(args[0], args[1], args[2] if len(args) > 2 else ""):
            print(line)
    elif cmd == "pick":
        pending = [(n, int(c), int(mb)) for n, c, mb in (a.rsplit(":", 2) for a in args[2:])]
        for name in pick(pending, int(args[0]), int(args[1]) if args[1] else None):
            print(name)
    elif cmd == "notify_body":
        with open(args[3]) as fh:
            text = fh.read().rstrip("\n")
        fields = dict(pair.split("=", 1) for pair in args[5:] if "=" in pair)
        url, body = notify_body(args[0], args[1], args[2], text, fields)
        with open(args[4], "w") as fh:
            json.dump(body, fh)
        print(url)
    else:
        sys.exit("unknown helper command " + cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
