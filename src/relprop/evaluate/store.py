"""The SQLite store of an evaluation: one file holds runs, per-sample records and errors.

Schema (every table is keyed so that writing the same row twice is a no-op):

* ``runs``: one row per evaluation context, keyed by ``hash``, a digest of the configuration that
  determines the values (data set and its options except the root folder, model and its options,
  input size and normalisation, dtype, target mode); no source-control state enters it.
* ``methods`` / ``metrics``: the method and metric variants of a run (name + options, under a
  canonical ``key``); ``metrics`` also keeps the direction and the x axis of curve-valued metrics.
* ``samples``: every sample a run has processed (data-set index, key, file, number of targets,
  ``status`` ``ok`` or ``error``).
* ``targets``: the explained (sample, class) pairs with the predicted class, the fraction of the
  image covered by the class's mask and the "difficult" flag of the pointing game.
* ``records``: ``PRIMARY KEY (run, sample, target, method, metric)``; ``scalar`` is the headline
  value (NULL where it is undefined: SQLite cannot hold NaN in a REAL column), ``value`` the exact
  per-sample value as JSON (a number, a list or an object; NaN written as ``NaN``).
* ``errors``: a corrupt sample (``method = ''``), or a method / metric that failed on a sample.

The database runs in WAL mode and every batch is written in one transaction
(:meth:`Store.write_batch`), so a process killed at any moment loses at most the batch it was
computing; rows are inserted with ``INSERT OR IGNORE`` so a rerun never duplicates a record.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

__all__ = ["SCHEMA_VERSION", "BatchRows", "Store", "canonical_json", "config_hash", "from_json",
           "to_json", "variant_key"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    dataset TEXT NOT NULL,
    model TEXT NOT NULL,
    targets TEXT NOT NULL,
    config TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS methods (
    run INTEGER NOT NULL, key TEXT NOT NULL, name TEXT NOT NULL, options TEXT NOT NULL,
    PRIMARY KEY (run, key)
);
CREATE TABLE IF NOT EXISTS metrics (
    run INTEGER NOT NULL, key TEXT NOT NULL, name TEXT NOT NULL, options TEXT NOT NULL,
    higher_is_better INTEGER, category TEXT NOT NULL, x TEXT, x_label TEXT,
    PRIMARY KEY (run, key)
);
CREATE TABLE IF NOT EXISTS samples (
    run INTEGER NOT NULL, idx INTEGER NOT NULL, sample TEXT NOT NULL, path TEXT NOT NULL,
    n_targets INTEGER NOT NULL, status TEXT NOT NULL,
    PRIMARY KEY (run, idx)
);
CREATE TABLE IF NOT EXISTS targets (
    run INTEGER NOT NULL, sample TEXT NOT NULL, target INTEGER NOT NULL, predicted INTEGER NOT NULL,
    box_fraction REAL, difficult INTEGER NOT NULL,
    PRIMARY KEY (run, sample, target)
);
CREATE TABLE IF NOT EXISTS records (
    run INTEGER NOT NULL, sample TEXT NOT NULL, target INTEGER NOT NULL, method TEXT NOT NULL,
    metric TEXT NOT NULL, scalar REAL, value TEXT NOT NULL,
    PRIMARY KEY (run, sample, target, method, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS errors (
    run INTEGER NOT NULL, idx INTEGER NOT NULL, sample TEXT NOT NULL, method TEXT NOT NULL,
    metric TEXT NOT NULL, path TEXT NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (run, idx, method, metric)
);
"""


# ------------------------------------------------------------------------------------------------
# canonical JSON and keys


def _plain(value: Any) -> Any:
    """Turn tuples, ranges, numpy / torch scalars and tensors into plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, range)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _plain(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value
    if hasattr(value, "__float__"):
        return float(value)
    raise ValueError(f"cannot store a value of type {type(value).__name__} as JSON: {value!r}")


def to_json(value: Any) -> str:
    """JSON text of ``value``; NaN and infinities are kept (as ``NaN`` / ``Infinity``)."""
    return json.dumps(_plain(value), separators=(",", ":"), allow_nan=True)


def from_json(text: str) -> Any:
    return json.loads(text)


def canonical_json(value: Any) -> str:
    """Key-sorted compact JSON, the form that enters hashes and variant keys."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), allow_nan=True)


def config_hash(config: dict) -> str:
    """First 16 hex digits of the SHA-256 of the canonical JSON of ``config``."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def variant_key(name: str, options: dict) -> str:
    """``name`` alone, or ``name`` followed by its canonical options: ``mu{"sign":"absolute"}``."""
    return name if not options else name + canonical_json(options)


def _scalar(value: Optional[float]) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


# ------------------------------------------------------------------------------------------------
# rows of one batch


@dataclass
class BatchRows:
    """Everything one batch produces, written by :meth:`Store.write_batch` in one transaction.

    ``samples``: ``(idx, sample, path, n_targets, status)``; ``targets``: ``(sample, target,
    predicted, box_fraction, difficult)``; ``records``: ``(sample, target, method, metric, scalar,
    value_json)``; ``errors``: ``(idx, sample, method, metric, path, reason)``.
    """

    samples: list[tuple] = field(default_factory=list)
    targets: list[tuple] = field(default_factory=list)
    records: list[tuple] = field(default_factory=list)
    errors: list[tuple] = field(default_factory=list)

    def extend(self, other: "BatchRows") -> None:
        self.samples += other.samples
        self.targets += other.targets
        self.records += other.records
        self.errors += other.errors

    def __len__(self) -> int:
        return len(self.samples)


# ------------------------------------------------------------------------------------------------
# the store


class Store:
    """An evaluation store in the SQLite file ``path`` (created with its schema when missing)."""

    def __init__(self, path: str | Path, timeout: float = 60.0, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"evaluation store {self.path} does not exist")
            self.conn = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=timeout)
        else:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(self.path), timeout=timeout)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            with self.conn:
                self.conn.executescript(_SCHEMA)
                self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                                  (str(SCHEMA_VERSION),))
        version = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if version is None or int(version[0]) != SCHEMA_VERSION:
            found = None if version is None else version[0]
            raise ValueError(f"{self.path}: not a relprop evaluation store of schema version "
                             f"{SCHEMA_VERSION} (found {found})")

    # -- context manager ------------------------------------------------------------------------

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- free-form metadata ---------------------------------------------------------------------

    def set_meta(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON) under ``key`` in the ``meta`` table (e.g. a reproduction's wall time)."""
        if key == "schema_version":
            raise ValueError("the schema version cannot be changed")
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, to_json(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else from_json(row[0])

    # -- runs -----------------------------------------------------------------------------------

    def register_run(self, config: dict, methods: Sequence[tuple[str, str, dict]],
                     metrics: Sequence[dict]) -> int:
        """The id of the run of ``config`` (inserted if new), with its method and metric variants.

        ``methods``: ``(key, name, options)``; ``metrics``: dicts with ``key, name, options,
        higher_is_better, category, x, x_label``.
        """
        h = config_hash(config)
        with self.conn:
            self.conn.execute(
                "INSERT OR IGNORE INTO runs (hash, dataset, model, targets, config, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (h, str(config["dataset"]), str(config["model"]), str(config["targets"]),
                 canonical_json(config), time.time()))
            run = self.conn.execute("SELECT id FROM runs WHERE hash = ?", (h,)).fetchone()[0]
            self.conn.executemany("INSERT OR IGNORE INTO methods VALUES (?, ?, ?, ?)",
                                  [(run, k, n, canonical_json(o)) for k, n, o in methods])
            self.conn.executemany(
                "INSERT OR IGNORE INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(run, m["key"], m["name"], canonical_json(m["options"]),
                  None if m["higher_is_better"] is None else int(m["higher_is_better"]),
                  m["category"], None if m.get("x") is None else to_json(m["x"]), m.get("x_label"))
                 for m in metrics])
        return int(run)

    def runs(self) -> list[dict]:
        """Every run: ``id, hash, dataset, model, targets, config`` (config decoded)."""
        rows = self.conn.execute(
            "SELECT id, hash, dataset, model, targets, config FROM runs ORDER BY id").fetchall()
        return [dict(id=r[0], hash=r[1], dataset=r[2], model=r[3], targets=r[4], config=from_json(r[5]))
                for r in rows]

    def methods(self, run: int) -> list[dict]:
        rows = self.conn.execute("SELECT key, name, options FROM methods WHERE run = ? ORDER BY key",
                                 (run,)).fetchall()
        return [dict(key=k, name=n, options=from_json(o)) for k, n, o in rows]

    def metrics(self, run: int) -> list[dict]:
        rows = self.conn.execute(
            "SELECT key, name, options, higher_is_better, category, x, x_label FROM metrics "
            "WHERE run = ? ORDER BY key", (run,)).fetchall()
        return [dict(key=k, name=n, options=from_json(o),
                     higher_is_better=None if h is None else bool(h), category=c,
                     x=None if x is None else from_json(x), x_label=xl)
                for k, n, o, h, c, x, xl in rows]

    # -- progress -------------------------------------------------------------------------------

    def progress(self, run: int, methods: Sequence[str], metrics_by_method: dict[str, Sequence[str]]
                 ) -> tuple[set[int], dict[int, set[tuple[str, str]]]]:
        """What is stored for ``run``: the indices that are complete, and for the others the
        ``(method, metric)`` pairs already stored for every target of the sample.

        A sample is complete when it is recorded as corrupt, or when every one of its targets has a
        record for every requested ``(method, metric)`` (``metrics_by_method[method]``).
        """
        wanted = {(m, k) for m in methods for k in metrics_by_method[m]}
        samples = self.conn.execute("SELECT idx, sample, n_targets, status FROM samples WHERE run = ?",
                                    (run,)).fetchall()
        counts: dict[str, dict[tuple[str, str], int]] = {}
        for sample, method, metric, n in self.conn.execute(
                "SELECT sample, method, metric, COUNT(*) FROM records WHERE run = ? "
                "GROUP BY sample, method, metric", (run,)):
            counts.setdefault(sample, {})[(method, metric)] = n
        complete: set[int] = set()
        partial: dict[int, set[tuple[str, str]]] = {}
        for idx, sample, n_targets, status in samples:
            if status == "error":
                complete.add(idx)
                continue
            have = counts.get(sample, {})
            done = {pair for pair in wanted if have.get(pair, 0) >= n_targets}
            if done == wanted:
                complete.add(idx)
            else:
                partial[idx] = done
        return complete, partial

    # -- writing --------------------------------------------------------------------------------

    def write_batch(self, run: int, rows: BatchRows) -> None:
        """Write one batch atomically; rows already stored are left as they are.

        The errors of a reprocessed sample are replaced by those of this batch (a method that failed
        before and succeeds now leaves no error behind).
        """
        with self.conn:
            self.conn.executemany("DELETE FROM errors WHERE run = ? AND idx = ?",
                                  [(run, int(i)) for i, *_ in rows.samples])
            self.conn.executemany(
                "INSERT OR IGNORE INTO targets VALUES (?, ?, ?, ?, ?, ?)",
                [(run, s, int(t), int(p), _scalar(f), int(bool(d))) for s, t, p, f, d in rows.targets])
            self.conn.executemany(
                "INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(run, s, int(t), m, k, _scalar(v), j) for s, t, m, k, v, j in rows.records])
            self.conn.executemany(
                "INSERT OR REPLACE INTO errors VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(run, int(i), s, m, k, p, r) for i, s, m, k, p, r in rows.errors])
            # the sample rows last: a sample counts as seen only together with its records
            self.conn.executemany(
                "INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?, ?, ?)",
                [(run, int(i), s, p, int(n), st) for i, s, p, n, st in rows.samples])

    # -- reading --------------------------------------------------------------------------------

    def records(self, run: int, method: Optional[str] = None, metric: Optional[str] = None
                ) -> Iterator[tuple[str, int, str, str, Optional[float], Any]]:
        """``(sample, target, method, metric, scalar, value)`` rows, ordered by their key."""
        sql = "SELECT sample, target, method, metric, scalar, value FROM records WHERE run = ?"
        args: list[Any] = [run]
        if method is not None:
            sql += " AND method = ?"
            args.append(method)
        if metric is not None:
            sql += " AND metric = ?"
            args.append(metric)
        sql += " ORDER BY sample, target, method, metric"
        for s, t, m, k, v, j in self.conn.execute(sql, args):
            yield s, t, m, k, v, from_json(j)

    def targets(self, run: int) -> dict[tuple[str, int], dict]:
        rows = self.conn.execute(
            "SELECT sample, target, predicted, box_fraction, difficult FROM targets WHERE run = ?",
            (run,)).fetchall()
        return {(s, t): dict(predicted=p, box_fraction=math.nan if f is None else f, difficult=bool(d))
                for s, t, p, f, d in rows}

    def errors(self, run: int) -> list[dict]:
        rows = self.conn.execute(
            "SELECT idx, sample, method, metric, path, reason FROM errors WHERE run = ? "
            "ORDER BY idx, method, metric", (run,)).fetchall()
        return [dict(idx=i, sample=s, method=m, metric=k, path=p, reason=r) for i, s, m, k, p, r in rows]

    def sample_count(self, run: int) -> dict[str, int]:
        rows = self.conn.execute("SELECT status, COUNT(*) FROM samples WHERE run = ? GROUP BY status",
                                 (run,)).fetchall()
        return {s: n for s, n in rows}

    def count_records(self, run: Optional[int] = None) -> int:
        if run is None:
            return int(self.conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])
        return int(self.conn.execute("SELECT COUNT(*) FROM records WHERE run = ?", (run,)).fetchone()[0])
