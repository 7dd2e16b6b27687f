"""Helpers for tests that start several jax.distributed processes on this machine."""
import socket
import subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_processes(command, num: int, env: dict, cwd=None, timeout: int = 600) -> list[tuple[int, str]]:
    """Runs `command(process_id, coordinator_address)` for every process id at once; (return code, output) each.

    Processes still running at the timeout are killed with SIGKILL: after
    jax.distributed.initialize, JAX catches SIGTERM.
    """
    address = f"localhost:{free_port()}"
    procs = [subprocess.Popen(command(i, address), env=env, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(num)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, o) for p, o in zip(procs, outs)]
