"""Two kinds of failure, and what each costs.

* **Permanent** — the sample itself is bad (an unreadable image, an answer that stays invalid, a
  failed check). It becomes a counted reject with its reason; the job goes on.
* **Transient** — the world failed: connection refused, a timeout, HTTP 429/5xx, out of memory, a
  dead actor, a storage hiccup. It is retried with bounded exponential backoff. If it persists, the
  job stops with a :class:`WorldFailure` naming the cause; the shards it touched stay uncommitted
  and the rerun makes them. A transient failure is never written as a reject.

:func:`classify` sorts an exception into ``"oom"``, ``"transient"`` or ``None`` (permanent).
:func:`inject` is the fault hook the fault tests set through ``PAIRFORGE_TEST_FAULTS``; nothing else
sets it.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import time
import urllib.error
from typing import Callable, TypeVar

log = logging.getLogger("pairforge")
T = TypeVar("T")

# A message starting with this marker is a WorldFailure, also after Ray has wrapped it in its own
# exception types on the way to the driver (which then only sees the text).
MARKER = "[pairforge: the world failed]"


class TransientError(RuntimeError):
    """Raised by pipeline code for a failure of the world (e.g. the LLM server is down)."""


class WorldFailure(RuntimeError):
    """A transient failure that outlived its retries: the job stops, the shard stays uncommitted."""

    def __init__(self, what: str):
        super().__init__(f"{MARKER} {what}")
        self.what = what


_TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                     errno.ECONNABORTED, errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH,
                     errno.EHOSTDOWN, errno.ESTALE, errno.ENOSPC, errno.EPIPE, errno.EBUSY}
# what pyarrow's S3/GCS file systems and HTTP clients say when the service, not the object, failed
_TRANSIENT_TEXT = ("network_connection", "connection refused", "connection reset", "timed out",
                   "timeout", "slowdown", "slow down", "throttl", "serviceunavailable",
                   "service unavailable", "internalerror", "internal error", "too many requests",
                   "temporarily", "try again", "broken pipe", "remote end closed")
_OOM_TEXT = ("out of memory", "cuda error: out of memory", "cublas_status_alloc_failed",
             "hip out of memory", "mps backend out of memory")


def _http_transient(code: int) -> bool:
    return code in (408, 425, 429) or code >= 500


def classify(e: BaseException) -> str | None:
    """``"oom"``, ``"transient"`` or None (the sample's own defect, or a bug: permanent)."""
    if isinstance(e, WorldFailure):
        return "transient"
    if isinstance(e, MemoryError):
        return "oom"
    name = type(e).__name__
    if name == "OutOfMemoryError" and type(e).__module__.startswith("torch"):
        return "oom"
    if isinstance(e, RuntimeError) and any(t in str(e).lower() for t in _OOM_TEXT):
        return "oom"
    if isinstance(e, TransientError):
        return "transient"
    if isinstance(e, urllib.error.HTTPError):
        return "transient" if _http_transient(e.code) else None
    if isinstance(e, (ConnectionError, TimeoutError, urllib.error.URLError)):
        return "transient"
    if type(e).__module__.startswith("ray") and name in (
            "RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
            "ObjectLostError", "OwnerDiedError", "ObjectFetchTimedOutError", "LocalRayletDiedError",
            "ObjectStoreFullError", "OutOfDiskError", "GetTimeoutError", "RaySystemError"):
        return "transient"
    if isinstance(e, OSError):
        if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
            return None                     # this object is missing or unreadable: the sample's defect
        if e.errno in _TRANSIENT_ERRNOS:
            return "transient"
        text = str(e).lower()
        if any(t in text for t in _TRANSIENT_TEXT):
            return "transient"
    return None


def describe(e: BaseException) -> str:
    s = str(e).replace("\n", " ").strip()
    return f"{type(e).__name__}: {s[:300]}" if s else type(e).__name__


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential: base, 2·base, 4·base … capped at max_s (attempt counts from 0)."""
    return min(max_s, base_s * (2 ** attempt))


def retry_call(fn: Callable[[], T], what: str, attempts: int = 6, base_s: float = 0.5,
               max_s: float = 30.0) -> T:
    """``fn()`` with transient failures retried (exponential backoff); a permanent failure raises at
    once; a transient one that persists raises :class:`WorldFailure` naming ``what``."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as e:
            if classify(e) is None:
                raise
            if attempt == attempts - 1:
                raise WorldFailure(f"{what}: {describe(e)} (still failing after {attempts} attempts)") from e
            wait = backoff_s(attempt, base_s, max_s)
            log.warning("%s: %s; retry %d/%d in %.1fs", what, describe(e), attempt + 1, attempts - 1, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def find_world_failure(e: BaseException) -> str | None:
    """The WorldFailure text inside an exception Ray handed back to the driver (it wraps the stage's
    exception in its own types, sometimes only as text), or None."""
    seen = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, WorldFailure):
            return x.what
        text = str(x)
        if MARKER in text:
            tail = text.split(MARKER, 1)[1].strip()
            return tail.splitlines()[0] if tail else tail
        stack += [x.__cause__, x.__context__, getattr(x, "cause", None)]
    return None


# ------------------------------------------------------------------ test fault hook

ENV = "PAIRFORGE_TEST_FAULTS"


def inject(stage: str, rows: list[dict], when: str) -> None:
    """Fault hook for the fault tests; a no-op unless ``PAIRFORGE_TEST_FAULTS`` names a JSON file.

    The file holds a list of faults ``{"stage", "when": "before"|"after", "kind": "oom"|"transient"|
    "error"|"kill"|"kill_group", "times": n, "min_rows": k, "skip": s}``. A fault fires when
    ``stage`` processes a batch of at least ``min_rows`` rows: "before" the stage runs, or "after"
    it has mutated the rows, at most ``times`` times over the whole job, after letting the first
    ``skip`` such batches pass (both counted with token files beside the spec, so every worker
    process shares the count). "oom" raises torch's OutOfMemoryError, as CUDA does; "transient" a
    ConnectionError; "error" a plain RuntimeError (a failure with no known cause); "kill" sends
    SIGKILL to this process, as a node's OOM killer would to a stage actor; "kill_group" to this
    process's whole group (the driver's: the job and its embedded Ray, as ``kill -9`` of a job).
    The stage "commit" is the driver, once a shard's commit record is written."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    with open(spec) as f:
        faults = json.load(f)
    for i, fault in enumerate(faults):
        if fault["stage"] != stage or fault.get("when", "before") != when or len(rows) < fault.get("min_rows", 1):
            continue
        if _take_token(f"{spec}.seen-{i}", int(fault.get("skip", 0))):
            continue                                  # one of the first `skip` batches: let it pass
        for n in range(int(fault.get("times", 1))):
            token = f"{spec}.fired-{i}-{n}"
            try:
                os.close(os.open(token, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            kind = fault.get("kind", "error")
            msg = f"injected by {ENV} ({stage}, {when}, {len(rows)} rows)"
            if kind == "oom":
                import torch
                raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB ({msg})")
            if kind == "transient":
                raise ConnectionError(f"connection refused ({msg})")
            if kind in ("kill", "kill_group"):
                with open(token, "w") as f:           # who died, for the test to look for its successor
                    f.write(str(os.getpid()))
                import signal
                if kind == "kill_group":
                    os.killpg(os.getpgid(0), signal.SIGKILL)
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(msg)


def _take_token(prefix: str, n: int) -> bool:
    """Claim one of ``n`` numbered tokens ``prefix-0 … prefix-(n-1)``, shared by every process; False
    once all are taken."""
    for k in range(n):
        try:
            os.close(os.open(f"{prefix}-{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            continue
    return False
