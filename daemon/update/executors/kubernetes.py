"""`train.executor = "kubernetes"`: each update's training as an Indexed batch/v1 Job of `torchrun`
pods ([train.kubernetes] namespace, image, nodes, gpus_per_node, service_account, cpu, memory).

For the batch's run the daemon creates a headless Service and a Job of the same name
(`lifelong-train-NNNNNN`). Pod i of the Job is node rank i (JOB_COMPLETION_INDEX, which the Job
controller sets in each pod); pod 0 is the rendezvous master, reached by every pod at
`NAME-0.NAME` (the Service's per-pod DNS name), and each pod gives its own IP to torchrun as
--local-addr. `backoffLimit: 0`: a pod that fails fails the Job (the daemon records a failed
update and retries the batch on its schedule, from the last checkpoint in the store). The pods
run strategies/remote.py; progress, the stop request, checkpoints and the candidate go through the
run's folder in the S3 store (remote.py). The daemon polls the Job, and deletes the Job (its pods
with it) and the Service when the run ends or is stopped. It talks to the API server with the
official client, as its pod's service account (deploy/k8s/train/rbac.yaml: the rights it needs).
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from daemon.config import Config, KubernetesConfig
from daemon.update.executors.remote import RemoteExecutor, RemoteRun
from strategies.spec import Failure

log = logging.getLogger(__name__)

PORT = 29500  # the rendezvous master's port on pod 0
WORK = "/work"  # an emptyDir per pod: the run's inputs and checkpoint
POLL_SECONDS = 2.0
# what a pod needs to find the store besides credentials (those come from the `lifelong-s3` Secret,
# or from the training service account's cloud identity)
PASSED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
S3_SECRET = "lifelong-s3"
LABEL = "lifelong.dev/run"


def run_name(batch: int) -> str:
    return f"lifelong-train-{batch:06d}"


def pod_command(name: str, k8s: KubernetesConfig, url: str) -> list[str]:
    """The training container's command. `$(VAR)` is expanded by the kubelet from the container's
    environment: JOB_COMPLETION_INDEX (the Job controller's) and POD_IP (the downward API's)."""
    return ["torchrun", f"--nnodes={k8s.nodes}", f"--nproc-per-node={max(1, k8s.gpus_per_node)}",
            "--node-rank=$(JOB_COMPLETION_INDEX)", f"--master-addr={name}-0.{name}", f"--master-port={PORT}",
            "--local-addr=$(POD_IP)", "--max-restarts=0", "--monitor-interval=1",
            "-m", "strategies.remote", url]


def objects(k8s: KubernetesConfig, url: str, batch: int, env: dict[str, str] | None = None) -> tuple[dict, dict]:
    """The headless Service and the Indexed Job of the batch's run."""
    name = run_name(batch)
    labels = {"app.kubernetes.io/name": "lifelong", "app.kubernetes.io/component": "train", LABEL: name}
    metadata = {"name": name, "namespace": k8s.namespace, "labels": dict(labels)}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": metadata,
               "spec": {"clusterIP": "None", "selector": {LABEL: name}, "publishNotReadyAddresses": True,
                        "ports": [{"name": "rendezvous", "port": PORT, "targetPort": PORT, "protocol": "TCP"}]}}
    amounts = {"cpu": k8s.cpu, "memory": k8s.memory}
    if k8s.gpus_per_node:
        amounts["nvidia.com/gpu"] = str(k8s.gpus_per_node)
    passed = env if env is not None else {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
    container = {
        "name": "train", "image": k8s.image, "command": pod_command(name, k8s, url),
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "LIFELONG_RUN_DIR", "value": WORK},
                {"name": "HOME", "value": "/tmp"},
                {"name": "HF_HUB_OFFLINE", "value": "1"},
                *({"name": key, "value": value} for key, value in sorted(passed.items()))],
        "envFrom": [{"secretRef": {"name": S3_SECRET, "optional": True}}],
        "ports": [{"name": "rendezvous", "containerPort": PORT, "protocol": "TCP"}],
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
        "volumeMounts": [{"name": "work", "mountPath": WORK}],
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    pod = {"metadata": {"labels": dict(labels)},
           "spec": {"restartPolicy": "Never", "subdomain": name, "serviceAccountName": k8s.service_account,
                    "automountServiceAccountToken": False, "enableServiceLinks": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                        "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                    "terminationGracePeriodSeconds": 120,
                    "containers": [container],
                    "volumes": [{"name": "work", "emptyDir": {}}, ]}}
    # /tmp for the libraries that want one, with the root file system read-only
    container["volumeMounts"].append({"name": "tmp", "mountPath": "/tmp"})
    pod["spec"]["volumes"].append({"name": "tmp", "emptyDir": {}})
    if k8s.gpus_per_node:
        pod["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {**metadata, "labels": dict(labels)},
           "spec": {"completionMode": "Indexed", "completions": k8s.nodes, "parallelism": k8s.nodes,
                    "backoffLimit": 0, "template": pod}}
    return service, job


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """`$(VAR)` in a container's command, expanded as the kubelet does (`$$` for a literal `$`;
    an unknown variable is left as written)."""
    def one(text: str) -> str:
        return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                      lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)
    return [one(arg) for arg in args]


class KubernetesExecutor(RemoteExecutor):
    name = "kubernetes"

    def start(self, spec_path: Path, on_event: Any = None, standby: Any = None) -> "KubernetesRun":
        return KubernetesRun(spec_path, self.config, on_event).start()  # type: ignore[return-value]


def _clients() -> tuple[Any, Any]:
    """The core and batch API clients: the pod's service account in a cluster, else $KUBECONFIG."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CoreV1Api(), client.BatchV1Api()


class KubernetesRun(RemoteRun):
    executor = "kubernetes"

    def __init__(self, spec_path: Path, config: Config, on_event: Any = None) -> None:
        self.k8s = config.train.kubernetes
        super().__init__(spec_path, config.registry.artifacts,
                         self.k8s.nodes * max(1, self.k8s.gpus_per_node), on_event)
        self.name = run_name(self.spec.batch)
        self.created: list[str] = []
        self.core, self.batch = _clients()

    def launch(self) -> None:
        service, job = objects(self.k8s, self.store.url, self.spec.batch)
        if self.cleanup():  # what a daemon killed mid-run left: its run resumes from the store's checkpoint
            self._wait_gone()
        self.core.create_namespaced_service(self.k8s.namespace, service)
        self.created.append("service")
        self.batch.create_namespaced_job(self.k8s.namespace, job)
        self.created.append("job")
        log.info("kubernetes job created", extra={"job": self.name, "namespace": self.k8s.namespace})

    def _wait_gone(self, seconds: float = 120.0) -> None:
        """Until the deleted Job (its pods first, foreground) is gone, so that its name is free again."""
        from kubernetes.client.exceptions import ApiException

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.batch.read_namespaced_job_status(self.name, self.k8s.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return
                raise
            time.sleep(POLL_SECONDS)

    def finish(self) -> tuple[str, str] | None:
        from kubernetes.client.exceptions import ApiException

        while True:
            try:
                status = self.batch.read_namespaced_job_status(self.name, self.k8s.namespace).status
            except ApiException as exc:
                if exc.status != 404:
                    raise
                return Failure.KILLED.value, f"job {self.name} was deleted before it ended"  # cancelled, or by hand
            for condition in status.conditions or []:
                if condition.status != "True":
                    continue
                if condition.type == "Complete":
                    return None
                if condition.type == "Failed":
                    return self._why(condition)
            time.sleep(POLL_SECONDS)

    def _why(self, condition: Any) -> tuple[str, str]:
        """A failed Job's reason, with its failed pods' terminations (OOMKilled: out of memory)."""
        kind, notes = Failure.EXCEPTION.value, [f"job {self.name}: {condition.reason}: {condition.message}"]
        try:
            pods = self.core.list_namespaced_pod(self.k8s.namespace, label_selector=f"{LABEL}={self.name}").items
        except Exception as exc:  # a missing right to list pods costs the detail only
            return kind, f"{notes[0]} (pods not readable: {exc})"
        for pod in pods:
            for state in pod.status.container_statuses or []:
                ended = state.state.terminated if state.state else None
                if ended is None or ended.exit_code == 0:
                    continue
                if ended.reason == "OOMKilled":
                    kind = Failure.OUT_OF_MEMORY.value
                elif ended.exit_code in (137, 143) and kind == Failure.EXCEPTION.value:
                    kind = Failure.KILLED.value
                notes.append(f"pod {pod.metadata.name}: exit {ended.exit_code} {ended.reason or ''}".strip())
        return kind, "; ".join(notes)

    def cancel(self) -> None:
        self.cleanup()

    def cleanup(self) -> bool:
        """Delete the Job (its pods with it, foreground) and the Service; absent ones are fine.
        True when there was something to delete."""
        from kubernetes.client import V1DeleteOptions
        from kubernetes.client.exceptions import ApiException

        found = False
        for delete in (lambda: self.batch.delete_namespaced_job(self.name, self.k8s.namespace,
                                                                body=V1DeleteOptions(propagation_policy="Foreground")),
                       lambda: self.core.delete_namespaced_service(self.name, self.k8s.namespace)):
            try:
                delete()
                found = True
            except ApiException as exc:
                if exc.status != 404:
                    log.error("could not delete %s's objects: %s", self.name, exc)
        self.created.clear()
        return found
