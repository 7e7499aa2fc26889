"""`python -m pipeline launch`: the torchrun command that runs the train stage across nodes.

One node with several GPUs needs none of this (Ultralytics relaunches itself through
torch.distributed.run from the hardware profile's device list). Across nodes, every node runs the
printed command with its own --node-rank; all nodes must see the same prepared dataset path and the
same MLflow tracking server (MLFLOW_TRACKING_URI).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

from pipeline.core.artifacts import PARAMS_FILE
from pipeline.core.config import HardwareConfig, load_params
from pipeline.core.errors import ConfigError


def torchrun_command(
    hardware: HardwareConfig,
    nnodes: int,
    node_rank: int,
    master_addr: str,
    master_port: int = 29500,
    params: str = PARAMS_FILE,
) -> list[str]:
    if hardware.gpus < 1:
        raise ConfigError(f"hardware={hardware.name} has no GPUs: multi-node training needs a GPU profile")
    if not 0 <= node_rank < nnodes:
        raise ConfigError(f"--node-rank {node_rank} must be in [0, {nnodes - 1}] for --nnodes {nnodes}")
    return [
        "torchrun",
        f"--nnodes={nnodes}",
        f"--nproc-per-node={hardware.gpus}",
        f"--node-rank={node_rank}",
        f"--master-addr={master_addr}",
        f"--master-port={master_port}",
        "-m",
        "pipeline",
        "train",
        # every node must train on the same resolved parameters, not whatever ./params.yaml it has
        f"--params={params}",
    ]


def main(argv: list[str], prog: str = "launch", command: str = "launch") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=PARAMS_FILE, help="default: params.yaml")
    parser.add_argument("--nnodes", type=int, required=True, help="number of machines")
    parser.add_argument("--node-rank", type=int, required=True, help="this machine's index, 0 is the master")
    parser.add_argument("--master-addr", required=True, help="address of node 0, reachable from all nodes")
    parser.add_argument("--master-port", type=int, default=29500)
    parser.add_argument("--run", action="store_true", help="run the command instead of printing it")
    args = parser.parse_args(argv)
    hardware = load_params(args.params).hardware
    cmd = torchrun_command(
        hardware, args.nnodes, args.node_rank, args.master_addr, args.master_port, args.params
    )
    print(shlex.join(cmd))
    return subprocess.call(cmd) if args.run else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
