"""gcloud, a client this project did not write, against the local cloud: compute and storage, 50+ commands.

Each group is one test that runs its commands in order (create, then use, then delete); pytest-xdist spreads
the groups over its workers, so the suite's wall time does not wait for 60 gcloud start-ups in a row.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support.bins import needs_gcloud

# gcloud starts slowly (about a second of CPU per command): 10-25 s per group on an idle 2-core machine.
pytestmark = [needs_gcloud, pytest.mark.gcloud, pytest.mark.timeout(900)]

ZONE = "us-central1-a"
IMAGE = "--image-family=hpc-rocky-linux-8 --image-project=cloud-hpc-image-public"


GROUPS = ("reads", "instances", "spot", "storage")


def _groups(tag: str, tree: Path) -> list[list[tuple[str, str | None]]]:
    """(command, text its output must contain, or None: exit 0 is enough). A leading '!' expects failure."""
    a, b, c, bucket = f"gc-{tag}-a", f"gc-{tag}-b", f"gc-{tag}-c", f"gs://gc-{tag}-bkt"
    at = f"--zone={ZONE}"
    return [
        [  # reads: regions, zones, machine types, images, operations
            ("compute regions list --format=value(name)", "us-central1"),
            ("compute regions describe us-central1 --format=value(status)", "UP"),
            ("compute zones list --format=value(name)", ZONE),
            (f"compute machine-types list --zones={ZONE} --format=value(name)", "c2d-standard-112"),
            ("compute machine-types list --filter=name=h3-standard-88 --format=value(zone)", "us-central1-a"),
            (f"compute machine-types describe h3-standard-88 {at} --format=value(guestCpus)", "88"),
            ("!compute machine-types describe h3-standard-88 --zone=us-central1-f", "was not found"),
            ("compute images list --project=cloud-hpc-image-public --no-standard-images --format=value(name)",
             "hpc-rocky-linux-8-v20260115"),
            ("compute images describe-from-family hpc-rocky-linux-8 --project=cloud-hpc-image-public "
             "--format=value(status)", "READY"),
            ("compute project-info describe --format=value(name)", "ops-hpc-local"),
            ("compute operations list --format=value(name)", None),
            ("!compute instances describe gc-nope --zone=us-central1-a", "was not found"),
            ("!compute regions describe nowhere", "was not found"),
        ],
        [  # instances: create two at once (batch), change them, stop/start, delete both at once (batch)
            (f"compute instances create {a} {b} {at} --machine-type=e2-small {IMAGE} --labels=ops-hpc=true",
             "RUNNING"),
            (f"compute instances list --filter=name~^gc-{tag}- --format=value(name)", a),
            (f"compute instances add-metadata {a} {at} --metadata=k1=v1,k2=v2", None),
            (f"compute instances describe {a} {at} --format=value(metadata.items[1].value)", "v2"),
            (f"compute instances remove-metadata {a} {at} --keys=k1", None),
            (f"compute instances add-labels {a} {at} --labels=run=r1", None),
            (f"compute instances describe {a} {at} --format=value(labels.run)", "r1"),
            (f"compute instances remove-labels {a} {at} --labels=run", None),
            (f"compute instances get-serial-port-output {a} {at}", "booting"),
            (f"compute instances stop {a} {at}", None),
            (f"compute instances describe {a} {at} --format=value(status)", "TERMINATED"),
            (f"compute instances start {a} {at}", None),
            (f"compute instances describe {a} {at} --format=value(status)", "RUNNING"),
            (f"compute operations list --filter=targetLink~/{a}$ --format=value(operationType)", "setLabels"),
            (f"compute instances delete {a} {b} {at} --quiet", None),
            (f"compute instances list --filter=name~^gc-{tag}- --format=value(name)", ""),
        ],
        [  # spot VM with a max run duration, and the rules GCE enforces
            (f"compute instances create {c} {at} --machine-type=e2-small {IMAGE} --provisioning-model=SPOT "
             "--instance-termination-action=DELETE --max-run-duration=3600s", None),
            (f"compute instances describe {c} {at} --format=value(scheduling.provisioningModel)", "SPOT"),
            (f"compute instances describe {c} {at} --format=value(scheduling.terminationTime)", "T"),
            (f"!compute instances create gc-{tag}-d {at} --machine-type=e2-small {IMAGE} "
             "--max-run-duration=10s --instance-termination-action=DELETE", "maxRunDuration"),
            (f"!compute instances create gc-{tag}-e {at} --machine-type=e2-standard-3 {IMAGE}", "e2-standard-3"),
            (f"compute instances delete {c} {at} --quiet", None),
            (f"!compute instances describe {c} {at}", "was not found"),
        ],
        [  # storage: buckets, copies, listings, deletes
            (f"storage buckets create {bucket}", None),
            ("storage buckets list --format=value(name)", f"gc-{tag}-bkt"),
            (f"storage cp {tree / 'a.txt'} {bucket}/one/a.txt", None),
            (f"storage cat {bucket}/one/a.txt", "alpha"),
            (f"storage cp -r {tree} {bucket}/tree", None),
            (f"storage ls {bucket}", "tree/"),
            (f"storage ls -r {bucket}/tree", "b.txt"),
            (f"storage du -s {bucket}", None),
            (f"storage objects describe {bucket}/one/a.txt --format=value(size)", "6"),
            (f"storage objects update {bucket}/one/a.txt --content-type=text/plain", None),
            (f"storage cp {bucket}/one/a.txt {bucket}/two/a.txt", None),
            (f"storage mv {bucket}/two/a.txt {bucket}/three/a.txt", None),
            (f"storage cp {bucket}/three/a.txt {tree.parent / 'back.txt'}", None),
            (f"storage rm {bucket}/one/a.txt", None),
            (f"!storage cat {bucket}/one/a.txt", "matched no objects"),
            (f"storage rm -r {bucket}/tree", None),
            (f"storage rm --recursive {bucket}/three", None),
            (f"storage ls {bucket}", ""),
            (f"storage buckets delete {bucket}", None),
            ("storage buckets list --format=value(name)", None),
        ],
    ]


def _run_group(env: dict[str, str], group: list[tuple[str, str | None]]) -> list[str]:
    problems = []
    for command, expect in group:
        should_fail = command.startswith("!")
        args = ["gcloud", *command.lstrip("!").split(), "--quiet"]
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        out = proc.stdout + proc.stderr
        if (proc.returncode != 0) != should_fail:
            problems.append(f"{command}: exit {proc.returncode}: {out.strip()[-400:]}")
        elif expect and expect not in out:
            problems.append(f"{command}: {expect!r} not in {out.strip()[-400:]!r}")
        elif expect == "" and proc.stdout.strip():
            problems.append(f"{command}: expected no output, got {proc.stdout.strip()[-200:]!r}")
    return problems


def test_the_gcloud_suite_has_at_least_50_commands_across_compute_and_storage(tmp_path: Path) -> None:
    groups = _groups("x", tmp_path)
    assert len(groups) == len(GROUPS) and sum(len(g) for g in groups) >= 50
    assert sum(1 for g in groups for c, _ in g if c.lstrip("!").startswith("storage ")) >= 15


@pytest.mark.parametrize("group", GROUPS)
def test_gcloud_against_the_local_cloud(localcloud, tmp_path: Path, group: str) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.txt").write_text("beta\n")
    env = localcloud.env()
    env["CLOUDSDK_CONFIG"] = str(tmp_path / "gcloud-config")  # never the user's gcloud configuration
    env["CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK"] = "1"
    env["CLOUDSDK_CORE_DISABLE_USAGE_REPORTING"] = "true"
    tag = uuid.uuid4().hex[:6]
    problems = _run_group(env, _groups(tag, tree)[GROUPS.index(group)])
    assert not problems, "\n".join(problems)
