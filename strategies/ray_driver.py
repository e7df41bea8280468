"""The Ray driver of a `train.executor = "ray"` update, a process the daemon starts (Ray is never
imported in the daemon's own process):

    python -m strategies.ray_driver RUN_URL --address ray://head:10001 --num-workers 2 [--use-gpu]
                                    [--resources '{"CPU": 1}'] [--max-failures 1]

It connects to the existing cluster at --address (starting nothing: exit 3 when it cannot reach
it), and runs a TorchTrainer of --num-workers workers, each running strategies/remote.py's `work`
(the process group is Ray's; gloo on CPU, NCCL with --use-gpu). Ray keeps its own run state in the
run's folder (RUN_URL/ray); a worker lost mid-run restarts the group up to --max-failures times,
and every rank resumes from the last checkpoint in the store. Exit 0 when the trainer finished
(rank 0's events in the store say how), 1 when Ray gave up on it. The workers read the store with
the credentials of their own environment (node role, or AWS_* set on the cluster's pods or VMs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any
from urllib.parse import urlsplit

EXIT_UNREACHABLE = 3
# what a worker needs to find the store besides credentials: sent along with the job
PASSED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE",
              "TRANSFORMERS_OFFLINE")


def train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: a rank of the run. A failure or a stop is reported in the store by
    rank 0 and ends the function normally (Ray must not retry what would fail the same way); only a
    lost worker (killed, its node gone) makes Ray restart the group."""
    from strategies.remote import work
    from strategies.spec import EXIT_FAILED

    code = work(config["url"])
    if code == EXIT_FAILED and int(os.environ.get("RANK", "0")) != 0:
        raise RuntimeError("rank failed; see rank 0's events in the run's folder")


def storage(url: str) -> tuple[str, Any]:
    """Ray's storage_path and pyarrow filesystem for RUN_URL/ray, on the endpoint botocore would use."""
    import pyarrow.fs

    parts = urlsplit(url)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict[str, Any] = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if endpoint:
        where = urlsplit(endpoint)
        options.update(endpoint_override=where.netloc, scheme=where.scheme or "https")
    return f"{parts.netloc}{parts.path.rstrip('/')}/ray", pyarrow.fs.S3FileSystem(**options)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="strategies.ray_driver")
    parser.add_argument("url")
    parser.add_argument("--address", required=True)
    parser.add_argument("--num-workers", type=int, required=True)
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--resources", default="{}")
    parser.add_argument("--max-failures", type=int, default=1)
    args = parser.parse_args(argv)

    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    try:
        ray.init(address=args.address, runtime_env={"env_vars": env}, log_to_driver=False, logging_level="WARNING")
    except Exception as exc:  # noqa: BLE001 - whatever ray raises for an unreachable cluster
        print(f"cannot reach the Ray cluster at {args.address}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    path, filesystem = storage(args.url)
    batch = args.url.rstrip("/").rsplit("/", 1)[-1]
    trainer = TorchTrainer(
        train_worker, train_loop_config={"url": args.url},
        scaling_config=ScalingConfig(num_workers=args.num_workers, use_gpu=args.use_gpu,
                                     resources_per_worker=json.loads(args.resources) or None,
                                     placement_strategy="SPREAD"),
        run_config=RunConfig(name=f"lifelong-{batch}", storage_path=path, storage_filesystem=filesystem,
                             failure_config=FailureConfig(max_failures=args.max_failures)))
    try:
        trainer.fit()
    except Exception as exc:  # noqa: BLE001 - TrainingFailedError and its kin: the daemon reads the store
        print(f"Ray Train gave up on the run: {type(exc).__name__}: {exc}"[-3000:], file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
