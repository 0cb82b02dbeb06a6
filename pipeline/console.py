"""A calm terminal for `pairforge run`: one progress display per pass and our own milestone lines;
what Ray and vLLM print goes to files under OUT/logs/ instead.

Ray writes to the driver's stderr from three places, and only the file descriptor catches all three:
Python loggers (Ray Data's "Starting execution …", the token-auth notice), ``warnings``
(RayDeprecationWarning) and the C++ core worker (``core_worker.cc:…`` lines, written to fd 2
directly). So while a job runs, fd 2 points at OUT/logs/ray.log — processes Ray starts meanwhile
(raylet, GCS, workers) inherit it too — and the console is a duplicate of the original stderr.
The actors' own output, which Ray forwards to the driver (``log_to_driver``) and would print on
stdout and stderr, is written to OUT/logs/ray_workers.log; warnings among it are counted for the
closing summary. The vLLM server already logs to OUT/logs/vllm_server.log (pipeline/llm/server.py).

`pairforge run -v` keeps everything on the terminal (no redirection).
"""
from __future__ import annotations

import logging
import os
import re
import sys
import threading
from pathlib import Path

RAY_LOG = "ray.log"
WORKER_LOG = "ray_workers.log"
_WARN = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")
# Our own warnings in an actor (the LLM server is down, a batch ran out of memory and was halved)
# carry this prefix, so the driver shows them on the terminal as well as in ray_workers.log: they
# say why a job is slow or stopping, which is what a calm console must still say.
WORKER_PREFIX = "[pairforge] "


def setup_worker_logging() -> None:
    """In a Ray worker process: our logger's warnings to stderr (forwarded to the driver by Ray)
    with ``WORKER_PREFIX``. A no-op anywhere else (the driver logs through the CLI's handlers)."""
    try:
        import ray
        from ray._private import worker as W
        if not ray.is_initialized() or W.global_worker.mode != W.WORKER_MODE:
            return
    except Exception:
        return
    lg = logging.getLogger("pairforge")
    if any(getattr(h, "_pairforge_worker", False) for h in lg.handlers):
        return
    h = logging.StreamHandler(sys.stderr)
    h._pairforge_worker = True
    h.setLevel(logging.WARNING)
    h.setFormatter(logging.Formatter(WORKER_PREFIX + "%(message)s"))
    lg.addHandler(h)
    lg.propagate = False            # not twice (Python's last-resort handler would print it bare)


class _TqdmHandler(logging.Handler):
    """Our log lines on the console above the progress bar, not through it."""

    def __init__(self, stream):
        super().__init__(logging.INFO)
        self.stream = stream
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))

    def emit(self, record):
        from tqdm import tqdm
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


class Console:
    """Context manager; ``stream`` is where progress and our messages go while it is active."""

    def __init__(self, log_dir: Path, enabled: bool = True):
        self.log_dir, self.enabled = Path(log_dir), enabled
        self.stream = sys.stderr
        self.worker_lines = self.worker_warnings = self.oom_notes = 0
        self._lock = threading.Lock()
        self._saved_fd = None
        self._worker_file = None
        self._handler = None
        self._hooked = False

    @property
    def paths(self) -> dict[str, str]:
        names = [RAY_LOG, WORKER_LOG, "vllm_server.log"] if self.enabled else ["vllm_server.log"]
        return {n: str(self.log_dir / n) for n in names if (self.log_dir / n).exists()}

    def __enter__(self) -> "Console":
        if not self.enabled:
            return self
        self.log_dir.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        self.stream = os.fdopen(os.dup(self._saved_fd), "w", buffering=1)
        fd = os.open(self.log_dir / RAY_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
        self._handler = _TqdmHandler(self.stream)
        logging.getLogger("pairforge").addHandler(self._handler)
        self._worker_file = open(self.log_dir / WORKER_LOG, "a", buffering=1)
        return self

    def hook_ray(self) -> None:
        """After ray.init: the actors' forwarded output to ray_workers.log instead of the terminal
        (Ray's own handler is swapped for ours; a Ray without that hook keeps printing them, into
        ray.log since fd 2 is redirected, and on stdout)."""
        if not self.enabled or self._hooked:
            return
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as D
        except ImportError:
            return
        names = [n for n, _ in D.handlers]
        if "ray_print_logs" not in names:
            return
        D.remove_handler("ray_print_logs")
        D.add_handler("ray_print_logs", self._worker_lines)
        self._hooked = True

    def _worker_lines(self, data: dict) -> None:
        lines = data.get("lines") or []
        if data.get("pid") == "autoscaler":
            # its periodic status report is not news; Ray prints only its events (and so do we)
            lines = [ln.split(":event_summary:", 1)[-1] for ln in lines
                     if ":event_summary:" in ln or re.search(r"\b(ERROR|Error:)", ln)]
        who = data.get("actor_name") or data.get("task_name") or ""
        with self._lock:
            if self._worker_file is None or self._worker_file.closed:
                self._worker_file = open(self.log_dir / WORKER_LOG, "a", buffering=1)
            for ln in lines:
                if data.get("pid") == "raylet" and "killed due to memory pressure" in ln:
                    # the one thing Ray says that changes what the user should do: a line of ours
                    self.oom_notes += 1
                    logging.getLogger("pairforge").warning(
                        "Ray killed workers for memory pressure (they are retried; details in %s)",
                        self.log_dir / WORKER_LOG)
                ours = ln.startswith(WORKER_PREFIX)
                if ours:
                    ln = ln[len(WORKER_PREFIX):]
                    self._echo(ln)
                self._worker_file.write(f"({who + ' ' if who else ''}pid={data.get('pid')}) {ln}\n")
                self.worker_lines += 1
                self.worker_warnings += ours or bool(_WARN.search(ln))

    def _echo(self, line: str) -> None:
        """An actor's warning of ours on the terminal, above the progress display."""
        import time
        from tqdm import tqdm
        try:
            tqdm.write(f"{time.strftime('%H:%M:%S')} pairforge: {line}", file=self.stream)
        except Exception:
            pass

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        # the hook stays: Ray stays connected until the process ends, and what its actors still
        # say (shutting down) belongs in the file too; _worker_lines reopens it for that
        logging.getLogger("pairforge").removeHandler(self._handler)
        sys.stderr.flush()
        os.dup2(self._saved_fd, 2)
        os.close(self._saved_fd)
        self.stream.close()
        self.stream = sys.stderr
        with self._lock:
            self._worker_file.close()


def closing_summary(s: dict) -> str:
    """What `pairforge run` ends with on the terminal: the counts, where the output and the logs are."""
    if "output" not in s:               # nothing ran (every shard was already committed)
        return f"nothing to do: all {s['shards']} shards already committed"
    n = s["accepted"] + s["rejected"]
    L = [f"done in {s['seconds']:.0f}s: {n} samples → {s['accepted']} accepted, {s['rejected']} rejected; "
         f"{s['shards_written']} shard(s) written ({s['shards_skipped']} already there, {s['shards']} in all)",
         f"  output: {s['output']}   (pairforge stats / verify / cost {s['output']})"]
    files = s.get("log_files") or {}
    if files:
        warn = f"; {s['worker_warnings']} warning line(s) from the actors in {WORKER_LOG}" if s.get("worker_warnings") else ""
        L.append(f"  logs:   {s['logs']}  ({', '.join(sorted(files))}{warn})")
    return "\n".join(L)
