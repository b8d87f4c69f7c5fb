"""run-staged: stage a batch, launch self-deleting VMs that run it, and (optionally) follow them to the end.

    check + plan every VM (nothing uploaded or created yet) -> stage -> launch (launch.py: guarded until
    each VM's first status) -> with wait: follow (follow.py: pull each result as it lands, relaunch a
    preempted spot VM's unfinished models) -> summary (summary.py)

Before anything is staged the launch is planned (lib/costplan.py: shards, machine type, expected and
worst-case cost at list prices): `dry_run` stops there, and a worst case above confirm_above_usd
needs `yes` or a 'y' from `ask`. Without wait the PC may be switched off once the launch returns: results stay in the bucket until
`bin/pull` collects them. Each VM packs its models onto its usable cores (lib/packing.py); fan-out
(`vms` > 1) shards the models as costplan.plan_shards says (balanced predicted packed makespans); each VM gets its shard in the `ops-hpc-models` metadata. `rerun=RUN_ID` launches again only the models
of an earlier run that have no result (a preempted run launched without wait). The status files the
VMs write are described in lib/runstatus.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lib import clients, costplan, naming, pricing, stage, storage
from lib.batches import parse_batch
from lib.config import Config
from lib.errors import Refused, UsageError
from lib.log import Log, quiet
from lib.runstaged.follow import Followed, follow, upload_to_delete_s
from lib.runstaged.launch import VmRun, launch, plan_vms
from lib.runstaged.summary import format_table, summarize
from lib.runstatus import FINAL, read_statuses
from lib.stage import StagedModel

__all__ = ["Followed", "RunStagedResult", "VmRun", "follow", "format_table", "launch", "plan_launch", "plan_vms",
           "rerun_models",
           "run_staged", "summarize", "upload_to_delete_s"]


@dataclass
class RunStagedResult:
    """Everything a run-staged run measured; the `wait` fields stay empty without wait."""

    run_id: str
    vms: list[str]
    wait: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    table: str = ""
    lost: dict[str, str] = field(default_factory=dict)
    relaunches: int = 0
    wall_s: float = 0.0
    opensees_s: float = 0.0
    overhead_s: float = 0.0
    upload_to_delete_s: dict[str, float | None] = field(default_factory=dict)
    deleted_how: dict[str, str] = field(default_factory=dict)
    results_dir: str = ""
    models: list[str] = field(default_factory=list)  # the models this launch ran (a rerun: the unfinished ones)
    plan: dict[str, Any] = field(default_factory=dict)  # costplan.preview: machine, shards, expected/worst cost
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready data (without the wait-only keys when it did not wait)."""
        data = asdict(self)
        if not self.wait:
            data = {k: data[k] for k in ("run_id", "vms", "wait", "models", "plan", "dry_run")}
        return data


def rerun_models(cfg: Config, run_id: str) -> list[StagedModel]:
    """The models of an earlier run with no result: no final state in any status and no zip in the bucket."""
    description = stage.load_description(cfg, run_id)
    if description is None:
        raise Refused(f"run {run_id} has no staged inputs in gs://{cfg.bucket_name}/{stage.prefix(run_id)}: "
                      "it finished (inputs are removed once every result is back) or was never staged")
    finished = {m for s in read_statuses(cfg, run_id).values() for m, i in s.get("per_model", {}).items()
                if i["state"] in FINAL}
    landed = {b.name[len(run_id) + 1:-4] for b in storage.list_blobs(cfg, f"{run_id}/") if b.name.endswith(".zip")}
    return [m for m in (StagedModel.from_json(d) for d in description["models"])
            if m.name not in finished and m.name not in landed]


def run_staged(cfg: Config, batch_path: str | Path | None, *, wait: bool = False, vms: int = 1,
               spot: bool | None = None, results_dir: Path | None = None, image: str | None = None,
               machine_type: str | None = None, run_id: str | None = None, rerun: str | None = None,
               spot_retries: int = 2, on_demand_fallback: bool = True, boot_timeout: float | None = None,
               tail: bool = True, dry_run: bool = False, yes: bool = False,
               ask: Callable[[str], bool] | None = None, retries: int = 0, on_log: Log = quiet) -> RunStagedResult:
    """check + plan (+ cost) -> stage -> launch (guarded until up) -> optional follow + pull + summary.

    Everything that can be refused is refused before anything is uploaded; if staging or the launch
    fails or is interrupted, the run's staged inputs are removed again (the guards delete its VMs).
    `machine_type` "auto" lets costplan choose; `dry_run` returns the plan having created nothing; a
    worst case above cfg.confirm_above_usd is launched only with `yes` or `ask(question)` true (no
    `ask`: no terminal, refused). `retries`: re-runs of a failed model on its VM, for lines without retries=.
    """
    from lib import build

    t0 = time.time()
    if vms < 1:
        raise UsageError(f"--vms {vms}: the number of VMs must be at least 1")
    if rerun or not dry_run:  # a dry run of a batch file needs no project: it plans and prices offline
        cfg = clients.resolve(cfg)
    spot = cfg.spot if spot is None else spot
    if rerun:
        run_id = stage.check_run_id(rerun)
        models = rerun_models(cfg, run_id)
        if not models:
            raise Refused(f"run {run_id}: every model has a result already; nothing to rerun")
        batch = None
        header_cores = (stage.load_description(cfg, run_id) or {}).get("cores")
    else:
        if batch_path is None:
            raise UsageError("run-staged needs a batch file (or a run to rerun)")
        batch = parse_batch(batch_path)  # every bad line is reported before anything is uploaded or created
        run_id = stage.check_run_id(run_id or stage.new_run_id())
        models = [StagedModel(m.name, m.main, m.cores, m.timeout_min, mem_gb=m.mem_gb,
                              retries=retries if m.retries is None else m.retries) for m in batch.models]
        header_cores = batch.cores
    plan = plan_launch(cfg, models, vms, spot=spot, machine_type=machine_type, cores=header_cores)
    preview = costplan.preview(plan, confirm_above_usd=cfg.confirm_above_usd, prices=pricing.note(cfg))
    if dry_run:
        return RunStagedResult(run_id=run_id, vms=[], wait=False, models=[m.name for m in models], plan=preview,
                               dry_run=True)
    for line in costplan.format_preview(preview):
        on_log(line)
    costplan.confirm_cost(plan, cfg, yes=yes, ask=ask)
    machine_type = plan.machine.name
    if cfg.local and image is None:
        image = build.ensure_image(cfg, on_log=on_log)
    shards = [list(s.models) for s in plan.shards]
    total = len(models) if batch is not None else len((stage.load_description(cfg, run_id) or {"models": models})["models"])
    names = None
    if rerun:
        suffix = time.strftime("%H%M%S")
        names = [naming.vm_name(run_id, rerun=suffix, shard=i + 1) for i in range(len(shards))]
    specs = plan_vms(cfg, run_id, shards, total=total, spot=spot, image=image, machine_type=machine_type,
                     names=names, cores=header_cores)  # machine type, image, max run duration, quota: refused before any upload
    launched = False
    try:
        if batch is not None:
            staged = stage.stage(cfg, batch, run_id=run_id, retries=retries, on_log=on_log)
            on_log(f"run {run_id}: {len(staged.models)} model(s) staged in gs://{cfg.bucket_name}/_uploads/{run_id}/")
            by_name = {m.name: m for m in staged.models}
            shards = [[by_name[m.name] for m in shard] for shard in shards]
        else:
            on_log(f"run {run_id}: rerunning {len(models)} model(s) without a result: "
                   f"{', '.join(m.name for m in models)}")
        runs = launch(cfg, run_id, shards, total=total, spot=spot, image=image, machine_type=machine_type,
                      boot_timeout=boot_timeout, on_log=on_log, specs=specs, on_demand_fallback=on_demand_fallback)
        launched = True
    finally:
        if not launched and batch is not None:
            _unstage_quietly(cfg, run_id, on_log)
    out = RunStagedResult(run_id=run_id, vms=[r.name for r in runs], wait=wait,
                          models=[m.name for shard in shards for m in shard], plan=preview)
    if not wait:
        on_log(f"launched: the VM(s) run on their own and delete themselves; follow with `make log RUN={run_id}`, "
               "collect with `make pull`")
        return out
    all_models = [m for shard in shards for m in shard]
    results_dir = Path(results_dir or cfg.results_dir)
    followed = follow(cfg, run_id, all_models, runs, results_dir=results_dir, spot_retries=spot_retries,
                      on_demand_fallback=on_demand_fallback, image=image, on_log=on_log, tail=tail)
    if followed.complete and not rerun_models(cfg, run_id):
        stage.unstage(cfg, run_id)  # every result is on the PC: the inputs are too, drop the bucket copy
    rows = summarize(run_id, all_models, followed, results_dir)
    _notify_pulled(cfg, run_id, rows, results_dir, on_log)
    wall = time.time() - t0
    opensees = sum(r["seconds"] or 0.0 for r in rows)
    out.vms = [v.name for v in followed.vms]
    out.rows, out.table, out.lost, out.relaunches = rows, format_table(rows, followed.vms), followed.lost, \
        followed.relaunches
    out.wall_s, out.opensees_s, out.overhead_s = round(wall, 2), round(opensees, 2), round(wall - opensees, 2)
    out.upload_to_delete_s = {v.name: upload_to_delete_s(v) for v in followed.vms}
    out.deleted_how = {v.name: v.how for v in followed.vms}
    out.results_dir = str(results_dir)
    return out


def plan_launch(cfg: Config, models: Sequence[StagedModel], vms: int, *, spot: bool = False,
                machine_type: str | None = None, cores: int | None = None) -> costplan.Plan:
    """The launch's plan: the given machine type (default cfg.machine_type), or with "auto" costplan's choice.

    cores: the batch's `#cores N`, the usable cores of whichever machine runs it.
    """
    if machine_type == "auto":
        return costplan.choose_machine(models, vms, [replace(m, cores=cores) for m in costplan.candidates(cfg, spot=spot)],
                                       upload_timeout_min=cfg.upload_timeout_min, spot=spot)
    chosen = replace(costplan.machine(cfg, machine_type or cfg.machine_type, spot=spot), cores=cores)
    return costplan.plan(models, vms, chosen, upload_timeout_min=cfg.upload_timeout_min, spot=spot)


def _notify_pulled(cfg: Config, run_id: str, rows: list[dict[str, Any]], folder: Path, on_log: Log) -> None:
    """notify_on "pulled": the results the follower brought to this PC, verified (never fails the run)."""
    from types import SimpleNamespace

    from lib import notify

    done = [SimpleNamespace(id=f"{run_id}/{r['model']}", status="cleaned", model_state=r["state"])
            for r in rows if r["folder"]]
    notify.pulled(cfg, done, folder, on_log=on_log)


def _unstage_quietly(cfg: Config, run_id: str, on_log: Log) -> None:
    """Remove what a run that never launched staged; a failure here must not hide the first error."""
    try:
        removed = stage.unstage(cfg, run_id)
    except Exception as exc:  # the launch's own error is the one to report
        on_log(f"could not remove the staged inputs gs://{cfg.bucket_name}/{stage.prefix(run_id)}: {exc}")
        return
    if removed:
        on_log(f"run {run_id} did not launch: removed its {removed} staged object(s)")

