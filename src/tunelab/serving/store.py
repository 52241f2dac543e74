"""The feedback store: every completion the server returns, and what users said about it.

Two tables (SQLAlchemy Core, so SQLite and PostgreSQL read the same code):

- ``completions``: one row per API response: ``id`` (the response id, e.g.
  ``chatcmpl-<hex>``), ``model``, ``endpoint`` (``chat`` | ``completion``), ``prompt``
  (chat: the request's messages; completion: the prompt text), ``outputs`` (one text per
  choice), ``params``, ``usage``, ``created`` (unix seconds), ``latency_ms``;
- ``feedback``: one row per feedback call, many per completion: ``id`` (an integer that
  grows with every row, so the highest is the latest), ``completion_id`` (foreign key),
  ``choice``, ``rating`` (as given: ``up``, ``down`` or ``1``..``5``), ``rating_value``
  (the same on [0, 1]: up 1, down 0, k -> (k - 1) / 4), ``correction``, ``comment``,
  ``created``.

Every write is one transaction, committed before the method returns: the server
acknowledges a request only once its row is safe. SQLite runs in WAL mode with
``synchronous=NORMAL``: a commit survives the process being killed (the WAL file is
written before ``commit`` returns; only a power cut or OS crash can lose the last
commits), readers never block the writer, and writers wait up to 5 s for each other.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    case,
    create_engine,
    distinct,
    event,
    exists,
    func,
    insert,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError
from sqlalchemy.pool import StaticPool

from tunelab.errors import DependencyError, TunelabError

__all__ = [
    "RATING_WORDS",
    "FeedbackError",
    "FeedbackStore",
    "InvalidFeedback",
    "UnknownCompletion",
    "normalise_rating",
    "resolve_url",
    "sqlite_path",
]

RATING_WORDS = {"up": 1.0, "down": 0.0}
ENDPOINTS = ("chat", "completion")
_IN_CHUNK = 500  # ids per IN (...) query; SQLite allows 32766 variables, old builds 999

Rows = list[dict[str, Any]]


class FeedbackError(TunelabError):
    """The feedback store cannot do what was asked (bad URL, duplicate id, ...)."""


class UnknownCompletion(FeedbackError):
    """Feedback names a completion id the store has never logged (HTTP 404)."""


class InvalidFeedback(FeedbackError):
    """A feedback body is malformed: bad rating, choice out of range, empty correction
    (HTTP 400/422)."""


metadata = MetaData()

completions = Table(
    "completions",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("model", String(256), nullable=False),
    Column("endpoint", String(16), nullable=False),
    Column("prompt", JSON, nullable=False),
    Column("outputs", JSON, nullable=False),
    Column("params", JSON, nullable=False),
    Column("usage", JSON, nullable=False),
    Column("created", Float, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Index("ix_completions_created", "created"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "completion_id",
        String(128),
        ForeignKey("completions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("choice", Integer, nullable=False),
    Column("rating", String(8), nullable=False),
    Column("rating_value", Float, nullable=False),
    Column("correction", Text),
    Column("comment", Text),
    Column("created", Float, nullable=False),
    Index("ix_feedback_completion", "completion_id", "choice"),
)


def resolve_url(url: str | Path) -> str:
    """A SQLAlchemy URL for ``url``: URLs (``scheme://...``) as they are, a plain path as
    the SQLite file there (``runs/feedback.db`` -> ``sqlite:////abs/runs/feedback.db``)."""
    text = str(url)
    if "://" in text:
        return text
    if text == ":memory:":
        return "sqlite://"
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def sqlite_path(url: str | Path) -> Path | None:
    """The database file of a SQLite URL or plain path; None for other databases and for
    an in-memory SQLite database."""
    parsed = make_url(resolve_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(str(parsed.database))


def normalise_rating(rating: object) -> tuple[str, float]:
    """``(raw, value)`` of a rating: ``up`` -> ``("up", 1.0)``, ``down`` -> ``("down",
    0.0)``, an integer k in 1..5 (or its digit string) -> ``(str(k), (k - 1) / 4)``.

    Raises :class:`InvalidFeedback` for anything else (0, 6, 2.5, "meh", True).
    """
    value: object = rating
    if isinstance(rating, str):
        word = rating.strip().lower()
        if word in RATING_WORDS:
            return word, RATING_WORDS[word]
        value = int(word) if word in {"1", "2", "3", "4", "5"} else rating
    elif isinstance(rating, float) and rating.is_integer():
        value = int(rating)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
        raise InvalidFeedback(
            f"rating must be 'up', 'down' or an integer from 1 to 5, got {rating!r}",
            hint='send e.g. {"rating": "up"} or {"rating": 4}',
        )
    return str(value), (value - 1) / 4


def _raw_rating(stored: str) -> int | str:
    return int(stored) if stored.isdigit() else stored


def _feedback_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "completion_id": row.completion_id,
        "choice": row.choice,
        "rating": _raw_rating(row.rating),
        "rating_value": row.rating_value,
        "correction": row.correction,
        "comment": row.comment,
        "created": row.created,
    }


def _completion_dict(row: Any, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": row.id,
        "model": row.model,
        "endpoint": row.endpoint,
        "prompt": row.prompt,
        "outputs": row.outputs,
        "params": row.params,
        "usage": row.usage,
        "created": row.created,
        "latency_ms": row.latency_ms,
        "feedback": list(rows),
    }


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    # busy_timeout first: switching to WAL takes a lock another connection may hold
    cursor = dbapi_connection.cursor()
    for pragma in ("busy_timeout = 5000", "journal_mode = WAL", "synchronous = NORMAL",
                   "foreign_keys = ON"):  # fmt: skip
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _engine(url: str) -> Engine:
    """A thread-safe engine for ``url`` (pooled connections; SQLite tuned as above)."""
    hint = "give a path (runs/feedback.db) or a URL such as postgresql+psycopg://user@host/db"
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise FeedbackError(f"not a database URL: {url!r}", hint=hint) from e
    sqlite = parsed.get_backend_name() == "sqlite"
    kwargs: dict[str, Any] = {}
    if sqlite and parsed.database in (None, "", ":memory:"):
        # one shared connection, or every thread would see its own empty database
        kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    elif not sqlite:
        kwargs = {"pool_pre_ping": True}
    try:
        engine = create_engine(parsed, **kwargs)
    except NoSuchModuleError as e:
        raise FeedbackError(f"unknown database kind in {url!r}", hint=hint) from e
    except ImportError as e:
        raise DependencyError(
            f"the database driver for {parsed.drivername} is not installed ({e})",
            hint="for PostgreSQL: pip install 'psycopg[binary]' and use postgresql+psycopg://",
        ) from e
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class FeedbackStore:
    """Completions and their feedback in a SQL database (see the module docstring).

    ``url``: a SQLAlchemy URL (``sqlite:////abs/feedback.db``,
    ``postgresql+psycopg://user@host/db``) or a plain path, which means a SQLite file
    there (its folder is created). Tables are created if missing. One store may be used
    from many threads at once.
    """

    def __init__(self, url: str) -> None:
        self.url = resolve_url(url)
        path = sqlite_path(self.url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._engine = _engine(self.url)
        try:
            metadata.create_all(self._engine)
        except OperationalError as e:
            self._engine.dispose()
            raise FeedbackError(
                f"cannot open the feedback store at {self.url}: {e.orig}",
                hint="check the path or URL, the permissions, and that the server runs",
            ) from e

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for checks and maintenance; writes go through methods)."""
        return self._engine

    def log_completion(
        self,
        *,
        id: str,
        model: str,
        endpoint: str,
        prompt: Any,
        outputs: list[str],
        params: dict[str, Any],
        usage: dict[str, int],
        created: float,
        latency_ms: float,
    ) -> None:
        """Record one response: ``outputs`` holds one text per choice. Committed on return.

        Raises :class:`FeedbackError` for an unknown ``endpoint``, outputs that are not a
        non-empty list of strings, or an ``id`` already logged.
        """
        if endpoint not in ENDPOINTS:
            raise FeedbackError(f"endpoint must be 'chat' or 'completion', got {endpoint!r}")
        if not outputs or not all(isinstance(o, str) for o in outputs):
            raise FeedbackError(f"outputs must be a non-empty list of strings, got {outputs!r}")
        row = {"id": id, "model": model, "endpoint": endpoint, "prompt": prompt,
               "outputs": list(outputs), "params": params, "usage": usage,
               "created": float(created), "latency_ms": float(latency_ms)}  # fmt: skip
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(completions), row)
        except IntegrityError as e:
            raise FeedbackError(
                f"completion {id!r} is already logged",
                hint="every response needs a fresh id (e.g. chatcmpl-<uuid4 hex>)",
            ) from e

    def add_feedback(
        self,
        completion_id: str,
        *,
        rating: int | str,
        choice: int = 0,
        correction: str | None = None,
        comment: str | None = None,
    ) -> dict[str, Any]:
        """Store one feedback row for choice ``choice`` of a completion; return it as a dict
        (``id, completion_id, choice, rating, rating_value, correction, comment,
        created``). Committed on return.

        Raises :class:`UnknownCompletion` for an id never logged and
        :class:`InvalidFeedback` for a bad rating (see :func:`normalise_rating`), a choice
        outside the completion's choices, or a correction that is empty or not a string.
        """
        raw, value = normalise_rating(rating)
        if correction is not None and (not isinstance(correction, str) or not correction.strip()):
            raise InvalidFeedback(
                f"correction must be a non-empty string, got {correction!r}",
                hint="leave 'correction' out when there is nothing to correct",
            )
        if comment is not None and not isinstance(comment, str):
            raise InvalidFeedback(f"comment must be a string, got {comment!r}")
        row = {"completion_id": completion_id, "choice": choice, "rating": raw,
               "rating_value": value, "correction": correction,
               "comment": comment or None, "created": time.time()}  # fmt: skip
        with self._engine.begin() as conn:
            outputs = conn.execute(
                select(completions.c.outputs).where(completions.c.id == completion_id)
            ).scalar_one_or_none()
            if outputs is None:
                raise UnknownCompletion(
                    f"no completion with id {completion_id!r}",
                    hint="send the 'id' field of the completion response you rate",
                )
            n = len(outputs)
            if isinstance(choice, bool) or not isinstance(choice, int) or not 0 <= choice < n:
                raise InvalidFeedback(
                    f"choice must be an integer from 0 to {n - 1} (the completion has {n} "
                    f"choice{'s' if n != 1 else ''}), got {choice!r}",
                    hint="send the 'index' of the choice you rate, or leave 'choice' out for 0",
                )
            result = conn.execute(insert(feedback), row)
            row["id"] = result.inserted_primary_key[0]  # type: ignore[index]
        row["rating"] = _raw_rating(raw)
        return {k: row[k] for k in ("id", "completion_id", "choice", "rating", "rating_value",
                                    "correction", "comment", "created")}  # fmt: skip

    def get_completion(self, id: str) -> dict[str, Any] | None:
        """The completion ``id`` with its ``feedback`` rows (oldest first), or None."""
        with self._engine.connect() as conn:
            row = conn.execute(select(completions).where(completions.c.id == id)).first()
            if row is None:
                return None
            return _completion_dict(row, self._feedback_of(conn, [id]).get(id, []))

    def list(self, *, limit: int | None = 50, with_feedback: bool | None = None) -> Rows:
        """Completions, newest first, each with its ``feedback`` rows (oldest first).

        ``limit``: at most this many (None: all). ``with_feedback``: True only those with
        feedback, False only those without, None both.
        """
        query = select(completions).order_by(completions.c.created.desc(),
                                             completions.c.id.desc())  # fmt: skip
        has = exists().where(feedback.c.completion_id == completions.c.id)
        if with_feedback is not None:
            query = query.where(has if with_feedback else ~has)
        if limit is not None:
            query = query.limit(limit)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
            by_id = self._feedback_of(conn, [r.id for r in rows])
        return [_completion_dict(r, by_id.get(r.id, [])) for r in rows]

    @staticmethod
    def _feedback_of(conn: Any, ids: Sequence[str]) -> dict[str, Rows]:
        out: dict[str, Rows] = {}
        for chunk in _chunks(ids):
            query = select(feedback).where(feedback.c.completion_id.in_(chunk))
            for row in conn.execute(query.order_by(feedback.c.id)):
                out.setdefault(row.completion_id, []).append(_feedback_dict(row))
        return out

    def stats(self) -> dict[str, Any]:
        """Counts over the whole store.

        An *answer* is one choice of one completion; its rating is the one of its latest
        feedback row. Keys: ``completions``, ``with_feedback`` (completions with any
        feedback), ``feedback_rows``, ``rated_answers``, ``up_share`` / ``down_share``
        (answers whose rating_value is above / below 0.5: up, 4, 5 / down, 1, 2; a 3 is
        neither), ``mean_rating_value``, ``corrections`` (answers with a correction), and
        ``by_model``: the same per model. Shares and means are None with nothing rated.
        """
        latest_ids = select(func.max(feedback.c.id).label("id")).group_by(
            feedback.c.completion_id, feedback.c.choice
        ).subquery()  # fmt: skip
        latest = (
            select(feedback.c.completion_id, feedback.c.rating_value, completions.c.model)
            .join(latest_ids, feedback.c.id == latest_ids.c.id)
            .join(completions, completions.c.id == feedback.c.completion_id)
            .subquery()
        )
        rated = select(
            latest.c.model,
            func.count().label("answers"),
            func.count(distinct(latest.c.completion_id)).label("completions"),
            func.sum(case((latest.c.rating_value > 0.5, 1), else_=0)).label("up"),
            func.sum(case((latest.c.rating_value < 0.5, 1), else_=0)).label("down"),
            func.sum(latest.c.rating_value).label("total"),
        ).group_by(latest.c.model)
        corrected_answers = (
            select(feedback.c.completion_id, feedback.c.choice)
            .where(feedback.c.correction.is_not(None))
            .distinct()
            .subquery()
        )
        corrected = (
            select(completions.c.model, func.count())
            .join(corrected_answers, corrected_answers.c.completion_id == completions.c.id)
            .group_by(completions.c.model)
        )
        with self._engine.connect() as conn:
            logged: dict[str, int] = {
                r[0]: r[1]
                for r in conn.execute(
                    select(completions.c.model, func.count()).group_by(completions.c.model)
                )
            }
            by_rating = {r.model: r for r in conn.execute(rated)}
            by_correction: dict[str, int] = {r[0]: r[1] for r in conn.execute(corrected)}
            rows = conn.execute(select(func.count()).select_from(feedback)).scalar_one()
        by_model = {
            model: _summary(n, by_rating.get(model), by_correction.get(model, 0))
            for model, n in sorted(logged.items())
        }
        total = _summary(sum(logged.values()), None, sum(by_correction.values()))
        answers = sum(r.answers for r in by_rating.values())
        total.update(
            with_feedback=sum(r.completions for r in by_rating.values()),
            rated_answers=answers,
            up_share=_share(sum(r.up for r in by_rating.values()), answers),
            down_share=_share(sum(r.down for r in by_rating.values()), answers),
            mean_rating_value=_share(sum(r.total for r in by_rating.values()), answers),
        )
        return {**total, "feedback_rows": rows, "by_model": by_model}

    def close(self) -> None:
        """Close every pooled connection (the store cannot be used afterwards)."""
        self._engine.dispose()


def _share(part: float, whole: int) -> float | None:
    return None if whole == 0 else part / whole


def _summary(completions_: int, rated: Any, corrections: int) -> dict[str, Any]:
    answers = rated.answers if rated is not None else 0
    return {
        "completions": completions_,
        "with_feedback": rated.completions if rated is not None else 0,
        "rated_answers": answers,
        "up_share": _share(rated.up, answers) if rated is not None else None,
        "down_share": _share(rated.down, answers) if rated is not None else None,
        "mean_rating_value": _share(rated.total, answers) if rated is not None else None,
        "corrections": corrections,
    }
