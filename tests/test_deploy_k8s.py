"""deploy/k8s: every manifest passes `kubernetes-validate --strict`, and policy checks for what it cannot see."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import jsonpatch
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s" / "base"
GPU = ROOT / "deploy" / "k8s" / "gpu"
VALIDATE = [sys.executable, "-m", "kubernetes_validate", "--strict"]
NOT_IN_SCHEMAS = {"Kustomization", "PodMonitor"}  # kustomize's own file and a Prometheus Operator CRD
CHECKPOINT_SECONDS = 120  # daemon/service/loop.py STOP_GRACE: how long the child may take to checkpoint
LOCAL_CONFIG = "config.kubernetes.io/local-config"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace
# ways of choosing GPUs that would override the device plugin's allocation
VISIBILITY = ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "ROCR_VISIBLE_DEVICES",
              "HIP_VISIBLE_DEVICES")


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resources() -> dict[str, dict]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in documents(path):
            found[doc["kind"]] = doc
    return found


def statefulset(gpu: bool = False) -> dict:
    doc = resources()["StatefulSet"]
    if gpu:
        doc = jsonpatch.apply_patch(doc, yaml.safe_load((GPU / "gpu-patch.yaml").read_text()))
    return doc


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VALIDATE, *map(str, paths)], capture_output=True, text=True)


def test_every_manifest_passes_strict_schema_validation(tmp_path: Path) -> None:
    manifests = [p for p in sorted(K8S.glob("*.yaml")) if documents(p)[0]["kind"] not in NOT_IN_SCHEMAS]
    gpu = tmp_path / "statefulset-gpu.yaml"
    gpu.write_text(yaml.safe_dump(statefulset(gpu=True)))
    done = validate(*manifests, gpu)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert lines and all(line.startswith("INFO") and " passed " in line for line in lines), "\n".join(lines)
    assert len(lines) == len(manifests) + 1


def test_strict_validation_catches_a_misspelt_field(tmp_path: Path) -> None:
    broken = statefulset()
    broken["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {"runAsNonRoot": True}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    done = validate(path)
    assert done.returncode != 0 and "securityContxt" in done.stdout + done.stderr


@pytest.mark.parametrize("gpu", [False, True])
def test_pod_policy(gpu: bool) -> None:
    sts = statefulset(gpu)
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    # a single writer: one replica, never two pods on the home at once
    assert spec["replicas"] == 1 and spec["podManagementPolicy"] == "OrderedReady"
    assert pod["terminationGracePeriodSeconds"] > CHECKPOINT_SECONDS
    # non-root, read-only root with an emptyDir for /tmp, no escalation, no capabilities, seccomp
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc.get("capabilities", {}).get("add")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert pod["automountServiceAccountToken"] is False
    # requests and limits on CPU and memory; a GPU only as a limit (extended resources are not overcommitted)
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"] and kind in resources["limits"]
    if gpu:
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert "nvidia.com/gpu" not in resources.get("requests", {})
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["LIFELONG_TRAIN__DEVICE"] == "cuda"
        # the device plugin says which GPU the container sees; the pod never names one
        assert not set(env) & set(VISIBILITY), set(env) & set(VISIBILITY)
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    else:
        assert not any("gpu" in key for key in resources["limits"])


def test_probes_home_and_config_fit_the_daemon() -> None:
    from daemon import config

    pod = statefulset()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][:1] == ["run"]
    port = next(p for p in container["ports"] if p["name"] == "metrics")["containerPort"]
    paths = {probe: container[probe]["httpGet"]["path"] for probe in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    # the ConfigMap's lifelong.toml is a valid config: polled inbox on its volume, metrics on the probed port
    cfg = config.load(K8S / "lifelong.toml", environ={})
    assert cfg.inbox.polling is True
    assert cfg.metrics.bind == f"0.0.0.0:{port}"
    home = container["args"][container["args"].index("--home") + 1]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[f"{home}/lifelong.toml"]["subPath"] == "lifelong.toml"
    assert mounts[home]["name"] in {t["metadata"]["name"] for t in statefulset()["spec"]["volumeClaimTemplates"]}
    assert cfg.inbox.path in mounts
    claim = next(v for v in pod["volumes"] if v["name"] == mounts[cfg.inbox.path]["name"])
    assert claim["persistentVolumeClaim"]["claimName"] == resources()["PersistentVolumeClaim"]["metadata"]["name"]


def test_podmonitor_and_service_select_the_pod_and_its_port() -> None:
    found = resources()
    labels = found["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for p in found["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]["ports"]}
    monitor = found["PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    assert found["Service"]["spec"]["selector"].items() <= labels.items()
    assert found["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def test_kustomizations_name_files_that_exist_and_resources_they_patch() -> None:
    base = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for name in base["resources"]:
        assert (K8S / name).is_file(), name
    for generator in base["configMapGenerator"]:
        if generator.get("options", {}).get("annotations", {}).get(LOCAL_CONFIG) == "true":
            continue  # the manifests' own settings, read by replacements and never deployed
        assert all((K8S / f).is_file() for f in generator["files"])
        volumes = statefulset()["spec"]["template"]["spec"]["volumes"]
        assert any(v.get("configMap", {}).get("name") == generator["name"] for v in volumes)
    listed = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == set(base["resources"]), "every manifest is part of the kustomization"
    gpu = yaml.safe_load((GPU / "kustomization.yaml").read_text())
    assert gpu["resources"] == ["../base"]
    (patch,) = gpu["patches"]
    sts = resources()["StatefulSet"]
    assert patch["target"] == {"kind": "StatefulSet", "name": sts["metadata"]["name"]}
    assert gpu["images"][0]["name"] == base["images"][0]["newName"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_both_variants_and_the_output_validates(tmp_path: Path) -> None:
    for folder in (K8S, GPU):
        done = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        built = [doc for doc in yaml.safe_load_all(done.stdout) if doc["kind"] not in NOT_IN_SCHEMAS]
        path = tmp_path / f"{folder.name}.yaml"
        path.write_text(yaml.safe_dump_all(built))
        checked = validate(path)
        assert checked.returncode == 0 and "ERROR" not in checked.stdout + checked.stderr, checked.stdout + checked.stderr
        sts = next(doc for doc in built if doc["kind"] == "StatefulSet")
        limits = sts["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert ("nvidia.com/gpu" in limits) == (folder == GPU)
        config = next(doc for doc in built if doc["kind"] == "ConfigMap")["metadata"]["name"]
        assert config.startswith("lifelong-config-")  # hashed: a config change rolls the pod
        assert {v.get("configMap", {}).get("name") for v in sts["spec"]["template"]["spec"]["volumes"]} >= {config}


def metrics_ingress(policy: dict) -> tuple[str, set[int]]:
    """The one namespace an ingress rule admits, and the ports it admits it to; fails on anything wider."""
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]  # no rule without `from`: that would admit every source
    assert set(peer) == {"namespaceSelector"}, peer  # no ipBlock, no podSelector widening it
    (namespace,) = peer["namespaceSelector"]["matchLabels"].items()
    assert namespace[0] == NAMESPACE_LABEL and "matchExpressions" not in peer["namespaceSelector"]
    return namespace[1], {port["port"] for port in rule["ports"]}


def test_network_policy_admits_metrics_only_from_the_monitoring_namespace() -> None:
    found = resources()
    policy = found["NetworkPolicy"]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    container = found["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    metrics_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
    namespace, ports = metrics_ingress(policy)
    assert ports == {metrics_port}
    settings = next(g for g in yaml.safe_load((K8S / "kustomization.yaml").read_text())["configMapGenerator"]
                    if g["name"] == "lifelong-deploy-settings")
    # the manifest holds the kustomization's default, so it is right on its own too
    assert f"monitoringNamespace={namespace}" in settings["literals"]


def build(folder: Path) -> list[dict]:
    done = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_the_monitoring_namespace_is_set_in_the_kustomization(tmp_path: Path) -> None:
    for folder in (K8S, GPU):
        built = build(folder)
        assert not any(LOCAL_CONFIG in (doc["metadata"].get("annotations") or {}) for doc in built)
        policy = next(doc for doc in built if doc["kind"] == "NetworkPolicy")
        assert metrics_ingress(policy) == ("monitoring", {9717})
    copy = tmp_path / "base"
    shutil.copytree(K8S, copy)
    kustomization = copy / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("monitoringNamespace=monitoring",
                                                               "monitoringNamespace=observability"))
    policy = next(doc for doc in build(copy) if doc["kind"] == "NetworkPolicy")
    assert metrics_ingress(policy) == ("observability", {9717})


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_the_gpu_variant_leaves_device_visibility_to_the_device_plugin() -> None:
    sts = next(doc for doc in build(GPU) if doc["kind"] == "StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert "envFrom" not in container  # variables from elsewhere could name devices unseen
    names = {e["name"] for e in container["env"]}
    assert not names & set(VISIBILITY), names & set(VISIBILITY)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_configmap_differs_from_the_init_template_in_three_keys_only() -> None:
    import tomllib

    template = tomllib.loads((ROOT / "daemon" / "lifelong.toml").read_text())
    k8s = tomllib.loads((K8S / "lifelong.toml").read_text())
    changed = {(section, key) for section in template for key in template[section]
               if k8s[section].get(key) != template[section][key]}
    assert changed == {("inbox", "path"), ("inbox", "polling"), ("metrics", "bind")}
    assert all(set(k8s[s]) == set(template[s]) for s in template) and set(k8s) == set(template)
