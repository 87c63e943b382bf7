"""The SQLite store of an evaluation: one file holds runs, per-sample records and errors.

Schema (every table is keyed so that writing the same row twice is a no-op):

* ``runs``: one row per evaluation context, keyed by ``hash``, a digest of the configuration that
  determines the values (data set and its options except the root folder, model and its options,
  the digest of the model's parameters and buffers (:func:`model_digest`, also in the column
  ``model_digest``), the relprop version, input size and normalisation, dtype, target mode); no
  source-control state enters it. Method and metric options enter the variant keys of the records.
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

Opening checks the file before SQLite touches it: a folder, an empty, garbage, truncated or foreign
SQLite file is refused ("store X is not a readable relprop store"), as is a store of a newer schema;
a store of schema version 1 (before model digests) is migrated when opened for writing (its runs
keep ``model_digest`` NULL and are never reused: their hashes lack the digest). A store whose file
has no write permission bits is refused for writing, also to root (:func:`check_writable`).
Read-only opening (``relprop report``) never creates ``-wal`` / ``-shm`` files: without a ``-wal``
file the database is opened ``immutable`` (every committed row is in the main file); with one (a
writer is running or was killed) it is read through the existing WAL.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import stat
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

__all__ = ["SCHEMA_VERSION", "BatchRows", "Store", "canonical_json", "check_store_file", "check_writable",
           "config_hash", "from_json", "model_digest", "to_json", "variant_key"]

SCHEMA_VERSION = 2
#: statements that bring a store of the key's schema version to the next one
_MIGRATIONS = {1: ["ALTER TABLE runs ADD COLUMN model_digest TEXT"]}
_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    dataset TEXT NOT NULL,
    model TEXT NOT NULL,
    targets TEXT NOT NULL,
    config TEXT NOT NULL,
    created REAL NOT NULL,
    model_digest TEXT
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


def model_digest(model: Any) -> str:
    """First 16 hex digits of the BLAKE2b digest of a model's parameters and buffers.

    Every ``state_dict`` entry in name order contributes its name, dtype, shape and raw bytes, so
    retrained weights saved under the same file name give another digest (and another run).
    """
    import torch

    h = hashlib.blake2b(digest_size=8)
    for name, value in sorted(model.state_dict().items()):
        if not isinstance(value, torch.Tensor):  # a module's extra state
            h.update(f"{name}|{value!r}|".encode())
            continue
        t = value.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# checks before SQLite touches a file


def _unreadable(path: Path, why: str) -> ValueError:
    return ValueError(f"store {path} is not a readable relprop store ({why})")


def check_store_file(path: Path) -> None:
    """Raise ValueError unless ``path`` is a file with an SQLite header and all the pages it counts.

    Reads the first 100 bytes only; the file is not modified.
    """
    if path.is_dir():
        raise _unreadable(path, "it is a folder")
    size = path.stat().st_size
    if size == 0:
        raise _unreadable(path, "the file is empty")
    with open(path, "rb") as fh:
        head = fh.read(100)
    if len(head) < 100 or head[:16] != _MAGIC:
        raise _unreadable(path, "not an SQLite database")
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    pages = int.from_bytes(head[28:32], "big")
    counted = head[24:28] == head[92:96]  # the page count is valid only when these agree
    if page < 512 or page & (page - 1):
        raise _unreadable(path, f"corrupt header: page size {page}")
    if size % page or (counted and size < page * pages):
        raise _unreadable(path, f"the file is truncated: {size} bytes, the header counts "
                                f"{pages} pages of {page} bytes")


def check_writable(path: Path) -> None:
    """Raise ValueError when the existing file ``path`` has no write permission bits.

    The mode bits are read explicitly because root passes ``os.access``: a store made read-only
    with ``chmod a-w`` is refused for writing to every user.
    """
    mode = path.stat().st_mode
    if not mode & 0o222 or not os.access(path, os.W_OK):
        raise ValueError(f"store {path} is read-only (file mode {stat.S_IMODE(mode):o}); make it "
                         "writable (chmod u+w) or give another --store")


def _connect_readonly(path: Path, timeout: float) -> sqlite3.Connection:
    """A read-only connection that creates no ``-wal`` / ``-shm`` file."""
    uri = path.resolve().as_uri() + "?mode=ro"
    if not path.with_name(path.name + "-wal").exists():
        uri += "&immutable=1"  # every committed row is in the main file; SQLite then needs no -shm
    return sqlite3.connect(uri, uri=True, timeout=timeout)


def _schema_version(conn: sqlite3.Connection, path: Path) -> int:
    """The store's schema version; ValueError for a foreign, broken or newer store."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as err:
        raise _unreadable(path, str(err)) from None
    try:
        version = int(row[0]) if row is not None else 0
    except ValueError:
        version = 0
    if version < 1:
        raise _unreadable(path, "no schema version")
    if version > SCHEMA_VERSION:
        raise ValueError(f"store {path} has schema version {version}, written by a newer relprop "
                         f"(this one reads versions 1 to {SCHEMA_VERSION}); upgrade relprop")
    return version


def _existing_version(path: Path, timeout: float) -> int:
    """Check an existing store file without changing it; returns its schema version."""
    check_store_file(path)
    with closing(_connect_readonly(path, timeout)) as conn:
        return _schema_version(conn, path)


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
            if not self.path.exists():
                raise FileNotFoundError(f"evaluation store {self.path} does not exist")
            check_store_file(self.path)
            self.conn = _connect_readonly(self.path, timeout)
            self.version = _schema_version(self.conn, self.path)
            return
        found = self.check(self.path, timeout)
        if not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=timeout)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        with self.conn:
            self.conn.executescript(_SCHEMA)
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                              (str(SCHEMA_VERSION),))
        self._migrate(found or SCHEMA_VERSION)
        self.version = SCHEMA_VERSION

    @staticmethod
    def check(path: str | Path, timeout: float = 60.0) -> Optional[int]:
        """Before writing to ``path``: the schema version of the store there (None: no file yet);
        ValueError for a read-only, foreign, broken or newer store. Changes nothing."""
        path = Path(path)
        if not path.exists():
            return None
        version = _existing_version(path, timeout)
        check_writable(path)
        return version

    def _migrate(self, version: int) -> None:
        """Bring a store of schema ``version`` to :data:`SCHEMA_VERSION`, in one transaction."""
        if version >= SCHEMA_VERSION:
            return
        with self.conn:
            for v in range(version, SCHEMA_VERSION):
                for sql in _MIGRATIONS[v]:
                    self.conn.execute(sql)
            self.conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

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
                "INSERT OR IGNORE INTO runs (hash, dataset, model, targets, config, created, model_digest) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (h, str(config["dataset"]), str(config["model"]), str(config["targets"]),
                 canonical_json(config), time.time(), config.get("model_digest")))
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
        """Every run: ``id, hash, dataset, model, targets, config`` (config decoded) and
        ``model_digest`` (None for runs stored before digests, schema version 1)."""
        digest = "model_digest" if self.version >= 2 else "NULL"
        rows = self.conn.execute(
            f"SELECT id, hash, dataset, model, targets, config, {digest} FROM runs ORDER BY id").fetchall()
        return [dict(id=r[0], hash=r[1], dataset=r[2], model=r[3], targets=r[4], config=from_json(r[5]),
                     model_digest=r[6]) for r in rows]

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
