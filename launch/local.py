#!/usr/bin/env python3
"""Start N JAX processes on this machine (CPU devices, gloo collectives): a multi-host run in miniature.

    python launch/local.py --num-processes 2 --devices-per-process 4 -- \
        seallm-jax train --config configs/tiny.py --workdir /tmp/tiny-2proc

Each process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (read by
seallm_jax.distributed.initialize) and its own fake CPU devices. Only process 0 prints progress;
SIGTERM/SIGINT are forwarded to every process; the exit code is the first non-zero child's.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(process_id: int, num_processes: int, devices: int, port: int) -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]),
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES=str(num_processes),
        JAX_PROCESS_ID=str(process_id),
    )
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--devices-per-process", type=int, default=4)
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: pick a free one)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- followed by the command each process runs")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    port = args.port or free_port()
    children = [subprocess.Popen(command, env=child_env(i, args.num_processes, args.devices_per_process, port))
                for i in range(args.num_processes)]

    def forward(signum: int, _frame) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    exit_code = 0
    running = list(children)
    while running:
        for child in list(running):
            code = child.poll()
            if code is None:
                continue
            running.remove(child)
            if code != 0 and exit_code == 0:
                exit_code = code
                # One process failed: the others would wait on collectives forever.
                for other in running:
                    other.terminate()
        time.sleep(0.2)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
