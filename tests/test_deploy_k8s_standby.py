"""deploy/k8s/standby: the active/standby overlay. Its manifests, with its patches applied as kustomize
applies them, pass `kubernetes-validate --strict`; and it is what an active/standby group needs: two
pods on different nodes, one PostgreSQL registry and one bucket named in a config the daemon loads,
credentials only from a Secret, the shared inbox and state volumes mounted at the same paths in every
pod, a disruption budget that keeps one daemon up, and egress to the database and the store."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jsonpatch
import pytest
import yaml

from tests.test_deploy_k8s import K8S, NOT_IN_SCHEMAS, documents, resources, statefulset, validate

STANDBY = K8S.parent / "standby"
SECRET_VARS = {"PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def kustomization() -> dict:
    return yaml.safe_load((STANDBY / "kustomization.yaml").read_text())


def patched(kind: str) -> dict:
    """The base's resource of `kind` with every patch of the overlay that targets it, in order."""
    doc = resources()[kind]
    for patch in kustomization()["patches"]:
        if patch["target"]["kind"] == kind:
            assert patch["target"]["name"] == doc["metadata"]["name"]
            doc = jsonpatch.apply_patch(doc, yaml.safe_load((STANDBY / patch["path"]).read_text()))
    return doc


def own(kind: str) -> dict:
    """The overlay's own resource of `kind`."""
    return next(doc for name in kustomization()["resources"] if not name.startswith("..")
                for doc in documents(STANDBY / name) if doc["kind"] == kind)


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


def test_the_overlay_passes_strict_schema_validation(tmp_path: Path) -> None:
    assert kustomization()["resources"][0] == "../base"
    docs = [patched("StatefulSet"), patched("NetworkPolicy"), own("PersistentVolumeClaim"), own("PodDisruptionBudget")]
    paths = []
    for doc in docs:
        paths.append(tmp_path / f"{doc['kind']}.yaml")
        paths[-1].write_text(yaml.safe_dump(doc))
    done = validate(*paths)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == len(docs) and all(" passed " in line for line in lines), "\n".join(lines)


def test_two_daemons_on_different_nodes_share_the_inbox_and_state_and_keep_their_own_homes() -> None:
    from daemon import config

    sts = patched("StatefulSet")
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] == 2 and spec["podManagementPolicy"] == "Parallel"
    labels = spec["template"]["metadata"]["labels"]
    (rule,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert rule["topologyKey"] == "kubernetes.io/hostname" and rule["labelSelector"]["matchLabels"] == labels
    env = env_of(container)
    settings = {name: e["value"] for name, e in env.items() if name.startswith("LIFELONG_")}
    cfg = config.load(K8S / "lifelong.toml", environ=settings)  # what each daemon runs with
    assert cfg.registry.metadata.startswith("postgresql://") and cfg.registry.artifacts.startswith("s3://")
    assert cfg.inbox.polling is True  # network volumes: inotify sees nothing
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {doc["metadata"]["name"]: doc for doc in (resources()["PersistentVolumeClaim"], own("PersistentVolumeClaim"))}
    for path in (cfg.inbox.path, cfg.failover.state):  # one volume every pod mounts at the same path
        claim = claims[volumes[mounts[path]]["persistentVolumeClaim"]["claimName"]]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert cfg.failover.state != cfg.inbox.path
    home = container["args"][container["args"].index("--home") + 1]  # each pod's own, from the claim template
    assert mounts[home] in {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    assert not Path(cfg.failover.state).is_relative_to(home) and not Path(cfg.inbox.path).is_relative_to(home)
    # everything else is the base's: probes (a standby is Ready), security, grace for the checkpoint
    base = statefulset()["spec"]["template"]["spec"]
    assert pod["securityContext"] == base["securityContext"]
    assert pod["terminationGracePeriodSeconds"] == base["terminationGracePeriodSeconds"]
    for key in ("securityContext", "readinessProbe", "livenessProbe", "startupProbe", "resources"):
        assert container[key] == base["containers"][0][key], key


def test_credentials_come_only_from_a_secret() -> None:
    (container,) = patched("StatefulSet")["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert SECRET_VARS <= set(env)
    for name, entry in env.items():
        if name in SECRET_VARS or name.startswith(("PG", "AWS_")):
            assert "value" not in entry and entry["valueFrom"]["secretKeyRef"]["name"] == "lifelong-registry", name
    from urllib.parse import urlsplit

    for name in ("LIFELONG_REGISTRY__METADATA", "LIFELONG_REGISTRY__ARTIFACTS"):
        assert urlsplit(env[name]["value"]).password is None, name
    assert "envFrom" not in container


def test_a_disruption_never_takes_both_and_the_registry_is_reachable() -> None:
    pdb = own("PodDisruptionBudget")
    labels = statefulset()["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"] == labels and pdb["spec"]["maxUnavailable"] == 1
    policy = patched("NetworkPolicy")
    ports = {port["port"] for rule in policy["spec"]["egress"] for port in rule["ports"]}
    assert {5432, 443} <= ports and {53} <= ports  # PostgreSQL, the S3 store, and DNS as in the base
    assert policy["spec"]["ingress"] == resources()["NetworkPolicy"]["spec"]["ingress"]  # metrics as in the base


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_the_overlay_as_the_tests_patch_it(tmp_path: Path) -> None:
    done = subprocess.run(["kubectl", "kustomize", str(STANDBY)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    built = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    path = tmp_path / "standby.yaml"
    path.write_text(yaml.safe_dump_all([doc for doc in built if doc["kind"] not in NOT_IN_SCHEMAS]))
    checked = validate(path)
    assert checked.returncode == 0 and "ERROR" not in checked.stdout + checked.stderr, checked.stdout + checked.stderr
    kinds = {doc["kind"]: doc for doc in built}
    sts, expected = kinds["StatefulSet"], patched("StatefulSet")
    assert sts["spec"]["template"]["spec"]["containers"][0]["env"] == expected["spec"]["template"]["spec"]["containers"][0]["env"]
    assert sts["spec"]["replicas"] == 2 and sts["spec"]["template"]["spec"]["affinity"] == expected["spec"]["template"]["spec"]["affinity"]
    assert kinds["NetworkPolicy"]["spec"]["egress"] == patched("NetworkPolicy")["spec"]["egress"]
    assert {doc["metadata"]["name"] for doc in built if doc["kind"] == "PersistentVolumeClaim"} == {"lifelong-inbox", "lifelong-state"}
    for doc in built:  # the overlay's own resources too: in the namespace, with the base's labels
        assert doc["kind"] == "Namespace" or doc["metadata"].get("namespace") == "lifelong", doc["metadata"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "lifelong", doc["metadata"]
