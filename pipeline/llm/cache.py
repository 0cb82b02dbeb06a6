"""Answer cache keyed by a hash of the full request, so a rerun replays every answer it already
has (and a killed job loses no LLM work). One small JSON file per answer, written atomically, so
any number of actors on a shared filesystem can read and write it without locks."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def request_key(model: str, messages: list[dict], seed: int, temperature: float, top_p: float,
                max_tokens: int, json_schema: dict | None) -> str:
    blob = json.dumps({"model": model, "messages": messages, "seed": seed, "temperature": temperature,
                       "top_p": top_p, "max_tokens": max_tokens, "schema": json_schema}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class AnswerCache:
    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None
        if self.root:
            self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        if not self.root:
            return None
        p = self._path(key)
        try:
            return json.loads(p.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def put(self, key: str, value: dict) -> None:
        if not self.root:
            return
        p = self._path(key)
        p.parent.mkdir(exist_ok=True)
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, p)
