"""A resumable, append-only JSONL run log.

Every generation and every judgement is one JSON line, written and fsync'ed the moment it exists, under a stable
`key` that names the work item. Rerunning the same protocol with the same log skips every key already done, so a
run killed at any point (Ctrl-C, a cluster pre-emption, an out-of-memory kill) loses at most the item in flight and
never duplicates a row. A kill can tear the last line; opening the log drops that partial line (and says so).

Sharding: `in_shard(i, shard)` splits work items by their position, `shard=(index, count)` with 0 <= index < count;
every item falls in exactly one shard, so the shards' union is the whole run. Give each shard its own log file
(the CLI names them ``run.shard-<i>-of-<n>.jsonl``); `RunLog(path, read_also=[...])` reads the other shards' logs as
already-done work when aggregating.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

__all__ = ["RunLog", "in_shard", "parse_shard", "read_rows", "resume_key", "shard_log_paths", "spec_digest"]


def parse_shard(shard) -> Optional[tuple[int, int]]:
    """None, (i, n) or the CLI's "i/n" → (i, n), checked: 0 <= i < n."""
    if shard is None:
        return None
    if isinstance(shard, str):
        try:
            i, n = (int(v) for v in shard.split("/"))
        except ValueError:
            raise ValueError(f"shard must look like 'i/n' (e.g. 0/4), got {shard!r}") from None
    else:
        i, n = (int(v) for v in shard)
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard (i, n) needs 0 <= i < n, got ({i}, {n}); shards are numbered from 0")
    return i, n


def in_shard(index: int, shard) -> bool:
    """True if work item number `index` belongs to `shard` ((i, n): index % n == i; None: everything)."""
    s = parse_shard(shard)
    return s is None or index % s[1] == s[0]


def spec_digest(**spec) -> str:
    """A short stable hash (10 hex digits of SHA-1) of the keyword arguments, as sorted JSON (non-JSON values by
    their str): the part of a resume key that changes whenever anything that changes the output changes."""
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]


def resume_key(kind: str, *parts, **spec) -> str:
    """The key that names one work item in a `RunLog`: ``kind|part|part|...`` and, when `spec` is given, ``|`` and
    `spec_digest(**spec)`. Every log row is written under such a key, so a rerun finds (and skips) the items done.

    kind: what the row is ("gen", "judge", "ref"); parts: what the item is about, readable in the log (protocol,
    condition, K, strip id, target ...; joined with their str); spec: everything else the output depends on
    (model, prompt, token budget, heads, steering mode ...), hashed.

    >>> resume_key("gen", "vqa", "unsteered", "strip-7", model="m", prompt="p", t=15)  # doctest: +SKIP
    'gen|vqa|unsteered|strip-7|<10 hex digits>'
    """
    key = "|".join([str(kind), *(str(p) for p in parts)])
    return f"{key}|{spec_digest(**spec)}" if spec else key


def _json_default(o):
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if hasattr(o, "_asdict"):
        return list(o)
    return str(o)


def read_rows(path, *, repair: bool = False) -> list[dict]:
    """All complete rows of a JSONL log. A torn last line (from a kill mid-write) is skipped; with `repair` it is
    also cut from the file so that the next append starts on a clean line."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    rows, good_end, pos = [], 0, 0
    bad_middle = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl == -1:  # no newline: the last write never finished
            break
        line = data[pos:nl]
        pos = nl + 1
        if not line.strip():
            good_end = pos
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad_middle += 1
            good_end = pos
            continue
        if isinstance(row, dict):
            rows.append(row)
        good_end = pos
    torn = len(data) - good_end
    if torn:
        msg = f"{path}: dropped a torn last line ({torn} bytes) left by an interrupted write"
        if repair:
            with open(path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    if bad_middle:
        warnings.warn(f"{path}: skipped {bad_middle} unreadable line(s)", RuntimeWarning, stacklevel=2)
    return rows


class RunLog:
    """Append-only JSONL log keyed by work item.

    >>> log = RunLog("runs/vqa/run.jsonl")
    >>> if not log.done(key): log.append({"key": key, "kind": "generation", "answer": ...})

    A row whose ``failed`` field is true (a judge that could not decide) does not count as done: a rerun retries
    it and the new row supersedes it (`get` returns the latest row for a key).
    One process writes a log at a time (an advisory lock enforces it on POSIX).
    """

    def __init__(self, path=None, *, read_also: Iterable = ()):
        self.path = None if path is None else Path(path)
        self._rows: dict[str, dict] = {}
        self._n_rows = 0
        self._f = None
        for p in read_also:
            if self.path is None or Path(p).resolve() != self.path.resolve():
                for r in read_rows(p):
                    self._add(r)
        if self.path is None:  # in memory: same interface, nothing written
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for r in read_rows(self.path, repair=True):
            self._add(r)
        self._f = open(self.path, "ab")
        try:
            import fcntl
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        except OSError:
            self._f.close()
            raise RuntimeError(f"another process is writing {self.path}; give each process its own log "
                               "(the CLI's --shard i/n does this) or wait for it to finish") from None

    def _add(self, row: dict):
        key = row.get("key")
        if key is None:
            return
        self._n_rows += 1
        self._rows[key] = row

    def done(self, key: str) -> bool:
        """Whether work item `key` has a row that did not fail (a failed judgement is retried)."""
        r = self._rows.get(key)
        return r is not None and not r.get("failed", False)

    def get(self, key: str, default=None) -> Optional[dict]:
        """The latest row of work item `key` (failed or not), else `default`."""
        return self._rows.get(key, default)

    def __contains__(self, key) -> bool:
        return self.done(key)

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self) -> list[dict]:
        """The latest row of every key."""
        return list(self._rows.values())

    def append(self, row: dict) -> dict:
        """Write one row now (flush + fsync) and remember it. The row needs a string ``key``."""
        if not isinstance(row.get("key"), str):
            raise ValueError("every run-log row needs a string 'key' naming its work item")
        line = json.dumps(row, default=_json_default, ensure_ascii=False) + "\n"
        if self.path is not None:
            if self._f.closed:
                raise ValueError(f"run log {self.path} is closed")
            # one write() of the whole line: a kill leaves the full line or a torn tail that read_rows drops
            self._f.write(line.encode("utf-8"))
            self._f.flush()
            os.fsync(self._f.fileno())
        self._add(json.loads(line))
        return row

    def close(self):
        """Close the file (and release its lock); the rows read stay available."""
        if self._f is not None and not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def __repr__(self):
        where = "in memory" if self.path is None else repr(str(self.path))
        return f"RunLog({where}, {len(self._rows)} items)"


def shard_log_paths(out_dir, shard: Optional[Sequence[int]], stem: str = "run") -> tuple[Path, list[Path]]:
    """The log file for this process and the other logs in `out_dir` to read as done work.

    No shard → ``run.jsonl`` and every ``run.shard-*.jsonl`` beside it (so a final unsharded call aggregates the
    shards); shard (i, n) → ``run.shard-i-of-n.jsonl`` only."""
    out = Path(out_dir)
    s = parse_shard(shard)
    if s is None:
        return out / f"{stem}.jsonl", sorted(out.glob(f"{stem}.shard-*.jsonl"))
    return out / f"{stem}.shard-{s[0]}-of-{s[1]}.jsonl", []
