"""`train.executor = "kubernetes"`: the Service and Indexed Job the daemon creates (pinned as golden
files and checked by `kubernetes-validate --strict`), the RBAC it needs (exactly the calls it makes),
and the pod's exact command run as two "nodes" in two network namespaces, training one update to a
candidate through a real SeaweedFS. No API server can run here: a test against a real cluster runs
only when KUBECONFIG is set (`-m kubeconfig`; what it needs is in its docstring)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import yaml

from daemon.config import parse
from daemon.update.executors.kubernetes import expand, objects, pod_command, run_name
from daemon.update.executors.remote import stage
from strategies.runstore import RunStore, run_url
from strategies.spec import TrainSpec
from tests.servers import seaweedfs_server  # noqa: F401 (fixture)
from tests.test_child import make_spec

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "k8s"
TRAIN = ROOT / "deploy" / "k8s" / "train"
SOURCE = ROOT / "daemon" / "update" / "executors" / "kubernetes.py"
VALIDATE = [sys.executable, "-m", "kubernetes_validate", "--strict"]
URL = "s3://lifelong-artifacts/prod/runs/batch-000007"
ENV = {"AWS_ENDPOINT_URL": "https://s3.eu-west-1.amazonaws.com", "AWS_REGION": "eu-west-1"}
CASES = {  # golden file stem -> [train.kubernetes]
    "cpu": {"image": "ghcr.io/example/lifelong:0.1.0-cpu", "nodes": 2},
    "gpu": {"image": "ghcr.io/example/lifelong:0.1.0-cuda", "nodes": 4, "gpus_per_node": 8, "cpu": "32",
            "memory": "200Gi", "namespace": "training"},
}


def k8s_config(**keys):  # type: ignore[no-untyped-def]
    return parse({"train": {"kubernetes": keys}}).train.kubernetes


def generated(case: str) -> list[dict]:
    return list(objects(k8s_config(**CASES[case]), URL, 7, ENV))


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_service_and_job_match_their_golden_files_and_pass_strict_validation(case: str, tmp_path: Path) -> None:
    golden = GOLDEN / f"{case}.yaml"
    text = yaml.safe_dump_all(generated(case), sort_keys=False)
    if os.environ.get("LIFELONG_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"regenerate with LIFELONG_UPDATE_GOLDEN=1 and review the diff of {golden}"
    done = subprocess.run([*VALIDATE, str(golden)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.count(" passed ") == 2, done.stdout + done.stderr


def test_the_job_is_indexed_with_one_try_and_pod_zero_as_master_through_the_service() -> None:
    service, job = generated("gpu")
    name = run_name(7)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert set(service["spec"]["selector"].items()) <= set(job["spec"]["template"]["metadata"]["labels"].items())
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 4
    assert spec["backoffLimit"] == 0 and pod["restartPolicy"] == "Never" and pod["subdomain"] == service["metadata"]["name"]
    command = pod["containers"][0]["command"]
    assert f"--master-addr={name}-0.{name}" in command and "--node-rank=$(JOB_COMPLETION_INDEX)" in command
    assert "--local-addr=$(POD_IP)" in command and "--nproc-per-node=8" in command and "--nnodes=4" in command
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "8" == pod["containers"][0]["resources"]["requests"]["nvidia.com/gpu"]
    assert pod["serviceAccountName"] == "lifelong-train" and pod["automountServiceAccountToken"] is False
    # no credentials in the Job: they come from the Secret (or the service account's identity)
    assert not any("SECRET" in e["name"] or "KEY" in e["name"] for e in pod["containers"][0]["env"])
    cpu_pod = generated("cpu")[1]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu_pod["containers"][0]["resources"]["limits"] and "tolerations" not in cpu_pod


# the API calls kubernetes.py makes, as the (API group, resource, verb) RBAC must allow
CALLS = {"create_namespaced_service": ("", "services", "create"), "delete_namespaced_service": ("", "services", "delete"),
         "create_namespaced_job": ("batch", "jobs", "create"), "delete_namespaced_job": ("batch", "jobs", "delete"),
         "read_namespaced_job_status": ("batch", "jobs/status", "get"), "list_namespaced_pod": ("", "pods", "list")}


def test_the_role_grants_exactly_the_calls_the_daemon_makes_in_its_namespace() -> None:
    used = set(re.findall(r"\.((?:create|delete|read|list|patch|replace|watch)_\w+)\(", SOURCE.read_text()))
    assert used == set(CALLS), f"a call without its RBAC entry here: {used ^ set(CALLS)}"
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all((TRAIN / "rbac.yaml").read_text())}
    granted = {(group, resource, verb) for rule in docs["Role"]["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == set(CALLS.values())
    assert "ClusterRole" not in docs and docs["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": "lifelong"}]


def test_the_train_overlay_passes_strict_validation_and_patches_the_daemon(tmp_path: Path) -> None:
    import jsonpatch

    manifests = [TRAIN / name for name in ("rbac.yaml", "train-serviceaccount.yaml", "train-networkpolicy.yaml")]
    base = ROOT / "deploy" / "k8s" / "base"
    patched = tmp_path / "statefulset.yaml"
    statefulset = yaml.safe_load((base / "statefulset.yaml").read_text())
    statefulset = jsonpatch.apply_patch(statefulset, yaml.safe_load((TRAIN / "daemon-patch.yaml").read_text()))
    patched.write_text(yaml.safe_dump(statefulset))
    policy = tmp_path / "networkpolicy.yaml"
    policy.write_text(yaml.safe_dump(jsonpatch.apply_patch(yaml.safe_load((base / "networkpolicy.yaml").read_text()),
                                                           yaml.safe_load((TRAIN / "daemon-egress-patch.yaml").read_text()))))
    done = subprocess.run([*VALIDATE, *map(str, manifests), str(patched), str(policy)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert statefulset["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    kustomization = yaml.safe_load((TRAIN / "kustomization.yaml").read_text())
    assert all((TRAIN / item).is_file() for item in kustomization["resources"][1:])


def test_a_config_for_kubernetes_needs_an_image_and_the_artifacts_on_s3() -> None:
    from registry.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^train.kubernetes.image: required"):
        parse({"train": {"executor": "kubernetes"}, "registry": {"artifacts": "s3://b/p"}})
    with pytest.raises(ConfigError, match=r"^registry.artifacts: .*needs the artifact store on S3"):
        parse({"train": {"executor": "kubernetes", "kubernetes": {"image": "x"}}})


# -- the pod command, two "nodes" in two network namespaces -----------------------------------------
def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Relay:
    """A TCP relay from `listen` to `target` (the root namespace's SeaweedFS on loopback), so that
    processes in the network namespaces reach it over the bridge as pods reach their store."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(listen)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def two_nodes():  # type: ignore[no-untyped-def]
    """Two network namespaces on a bridge of the root namespace, each with eth0 (as a pod has) and
    an /etc/hosts (via /etc/netns) that resolves the names the Job's Service gives its pods."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make network namespaces")
    tag = uuid.uuid4().hex[:6]
    bridge, spaces = f"llbr{tag}", [f"ll{tag}n{i}" for i in range(2)]
    made: list[str] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        made.append("bridge")
        _ip("addr", "add", "10.231.0.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, space in enumerate(spaces):
            _ip("netns", "add", space)
            made.append(space)
            _ip("link", "add", f"ll{tag}v{i}", "type", "veth", "peer", "name", "eth0", "netns", space)
            _ip("link", "set", f"ll{tag}v{i}", "master", bridge, "up")
            _ip("-n", space, "addr", "add", f"10.231.0.{i + 2}/24", "dev", "eth0")
            _ip("-n", space, "link", "set", "eth0", "up")
            _ip("-n", space, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as exc:
        for space in spaces:
            subprocess.run(["ip", "netns", "del", space], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        pytest.skip(f"network namespaces are not allowed here: {exc.stderr.strip()}")
    yield {"spaces": spaces, "ips": ["10.231.0.2", "10.231.0.3"], "host": "10.231.0.1"}
    for space in spaces:
        subprocess.run(["ip", "netns", "del", space], capture_output=True)
        shutil.rmtree(Path("/etc/netns") / space, ignore_errors=True)
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_pod_command_trains_one_update_as_two_nodes_in_two_network_namespaces(
        tmp_path: Path, tiny_model: Path, seaweedfs_server, two_nodes) -> None:  # noqa: F811
    k8s = k8s_config(image="unused", nodes=2)
    url = run_url(seaweedfs_server.url(), 1)
    name = run_name(1)
    spec = TrainSpec.load(make_spec(tmp_path, tiny_model, strategy="replay", epochs=3, rows=60,
                                    champion=tiny_model, parent="v0001"))
    store = RunStore(url)
    stage(spec, store, world=2)
    relay = Relay((two_nodes["host"], seaweedfs_server.port), ("127.0.0.1", seaweedfs_server.port))
    _, job = objects(k8s, url, 1, {})
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == pod_command(name, k8s, url)
    procs = []
    try:
        for index, (space, ip) in enumerate(zip(two_nodes["spaces"], two_nodes["ips"])):
            hosts = Path("/etc/netns") / space / "hosts"
            hosts.parent.mkdir(parents=True, exist_ok=True)  # what the Service's DNS answers in a cluster
            hosts.write_text(f"127.0.0.1 localhost\n{two_nodes['ips'][0]} {name}-0.{name}\n{ip} {name}-{index}.{name}\n")
            env = {**os.environ, "JOB_COMPLETION_INDEX": str(index), "POD_IP": ip,
                   "LIFELONG_RUN_DIR": str(tmp_path / f"node-{index}"), "GLOO_SOCKET_IFNAME": "eth0",
                   "AWS_ENDPOINT_URL": f"http://{two_nodes['host']}:{seaweedfs_server.port}",
                   "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
            command = expand(container["command"], env)
            procs.append(subprocess.Popen(["ip", "netns", "exec", space, *command], env=env, cwd=ROOT,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        relay.close()
    assert [p.returncode for p in procs] == [0, 0], "\n---\n".join(o[-3000:] for o in outputs)
    events = store.get_json("events.json")
    assert events[0]["event"] == "start" and events[0]["processes"] == 2 and events[-1]["event"] == "done"
    results = store.get_json("outputs/results.json")
    assert results["train"]["processes"] == 2 and results["train"]["replicas_in_sync"] is True
    assert results["scores"]["candidate"]["1"]["rows"] == 20
    assert any(key.startswith("outputs/out/model/") and key.endswith(".safetensors") for key in store.keys("outputs/"))


@pytest.mark.kubeconfig
@pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="needs a real cluster: set KUBECONFIG (see the docstring)")
def test_an_update_runs_as_a_job_on_a_real_cluster(tmp_path: Path, tiny_model: Path) -> None:
    """Runs one update's training as a Job on the cluster KUBECONFIG names. It needs: a namespace
    ($LIFELONG_K8S_NAMESPACE, default "lifelong") holding deploy/k8s/train's ServiceAccount
    `lifelong-train`, the Role bound to the identity of KUBECONFIG (or more rights), an image with
    lifelong[remote] ($LIFELONG_K8S_IMAGE) and the tiny model at the same path as here
    ($LIFELONG_K8S_MODEL), and an S3 store both this machine and the pods reach: $LIFELONG_K8S_ARTIFACTS
    ("s3://bucket/prefix"), with AWS_* here and the Secret `lifelong-s3` there."""
    from daemon.update.executors.kubernetes import KubernetesRun

    artifacts = os.environ["LIFELONG_K8S_ARTIFACTS"]
    config = parse({"model": {"base": os.environ.get("LIFELONG_K8S_MODEL", str(tiny_model))},
                    "registry": {"artifacts": artifacts},
                    "train": {"executor": "kubernetes", "kubernetes": {
                        "image": os.environ["LIFELONG_K8S_IMAGE"], "nodes": 2,
                        "namespace": os.environ.get("LIFELONG_K8S_NAMESPACE", "lifelong")}}})
    spec = make_spec(tmp_path, tiny_model, strategy="replay", epochs=2, rows=40)
    events: list[dict] = []
    results = KubernetesRun(spec, config, events.append).start().wait()
    assert results["train"]["processes"] == 2 and results["train"]["replicas_in_sync"] is True
    assert (tmp_path / "out" / "model").is_dir() and events[-1]["event"] == "done"
