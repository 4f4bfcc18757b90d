"""Run untrusted, model-generated Python (MBPP/HumanEval pass@1) in a locked-down subprocess.

Layers, each of which alone stops the common failure modes of generated code:
- a fresh temporary folder as working directory, removed afterwards; an isolated interpreter
  (`python -I`) with a minimal environment;
- resource limits: wall-clock timeout (the process group is killed), CPU seconds, address space,
  size of any file written, no core dumps;
- no network: a new network namespace (`unshare -n`) where the kernel allows it, and in every case
  a guard that makes socket creation raise;
- a guard that refuses writes, deletions and process spawning outside the temporary folder.
A program that breaks any of these is scored as a failure, with the reason.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass

GUARD = textwrap.dedent(
    '''
    import builtins, os, socket, subprocess, shutil
    _ROOT = os.path.realpath(os.getcwd())

    def _refuse(*_args, **_kwargs):
        raise PermissionError("sandbox: not allowed")

    def _no_network(*_args, **_kwargs):
        raise PermissionError("sandbox: network access is not allowed")

    class _NoSocket(socket.socket):
        def __init__(self, *_args, **_kwargs):
            _no_network()

    socket.socket = _NoSocket
    socket.create_connection = _no_network
    _open = builtins.open

    def _inside(path):
        return os.path.realpath(os.fspath(path)).startswith(_ROOT + os.sep)

    def _guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, int) or not any(flag in mode for flag in "wax+") or _inside(file):
            return _open(file, mode, *args, **kwargs)
        raise PermissionError(f"sandbox: writing outside the sandbox folder: {file}")

    builtins.open = _guarded_open
    for _name in ("remove", "unlink", "rmdir", "rename", "replace", "removedirs", "chmod", "chown",
                  "truncate", "system", "popen", "fork", "forkpty", "kill", "killpg", "execv", "execve",
                  "execvp", "spawnv", "spawnve", "putenv", "setuid"):
        if hasattr(os, _name):
            setattr(os, _name, _refuse)
    shutil.rmtree = shutil.move = _refuse
    subprocess.Popen = _refuse
    '''
)


@dataclass(frozen=True)
class ExecutionResult:
    passed: bool
    reason: str  # "passed", "timeout", "failed: <last line of stderr>", ...


@functools.lru_cache(maxsize=1)
def network_namespace_available() -> bool:
    """Whether `unshare -n` can give the child its own, empty network namespace here."""
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _limits(memory_mb: int, cpu_seconds: int, file_mb: int):
    def apply() -> None:
        os.setsid()
        memory = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb * 2**20, file_mb * 2**20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_program(program: str, timeout_s: float = 10.0, memory_mb: int = 1024, file_mb: int = 16) -> ExecutionResult:
    """Run ``program`` (solution plus its tests); it passes when it exits 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="nait_sandbox_") as folder:
        script = os.path.join(folder, "program.py")
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(GUARD + "\n" + program + "\n")
        command = [sys.executable, "-I", "-B", script]
        if network_namespace_available():
            command = ["unshare", "-n", *command]
        env = {"PATH": "/usr/bin:/bin", "HOME": folder, "TMPDIR": folder, "PYTHONHASHSEED": "0"}
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL, preexec_fn=_limits(memory_mb, int(timeout_s) + 1, file_mb))
        try:
            _, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return ExecutionResult(False, "timeout")
    if process.returncode == 0:
        return ExecutionResult(True, "passed")
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    if process.returncode < 0:
        return ExecutionResult(False, f"killed by signal {-process.returncode}")
    return ExecutionResult(False, f"failed: {lines[-1] if lines else f'exit code {process.returncode}'}")
