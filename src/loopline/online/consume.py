"""`loopline consume`: the online process reading a broker's stream instead of HTTP.

Each input message holds one JSON line of the task's `/stream` form (a reading). The
consumer keeps the same per-key state as `/stream` (`Serving.open_stream`), answers with the
same adapter, follows the champion alias as a service does, and writes one answer per
message to an output stream.

Exactly once, whatever is killed when:

1. A round reads up to `consume.batch` messages: first those this consumer took and never
   acknowledged (it was killed), then those another consumer left pending longer than
   `claim_idle_s` (`XAUTOCLAIM`), then new ones (`XREADGROUP`).
2. Their answers, prediction records and stored rows are committed in *one* database
   transaction, with each message id in `consumed_messages` (unique). A message found
   there was answered before a crash: its stored answer is sent again, nothing recomputed.
3. One Lua script per round acknowledges each message and, only if that acknowledgement
   was the first (`XACK` returned 1), adds its answer to the output stream: an answer is
   written by whoever acknowledges first, once.

A malformed message (not JSON, or not the stream line's schema) goes to the dead-letter
stream with the reason, acknowledged the same way. A `Source` is what a broker must offer;
`RedisStreams` is the one here (Kafka or NATS JetStream would implement the same three
calls: read with redelivery of the unacknowledged, reply-and-acknowledge, and lag).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError

from loopline.online.adapter import answer_items, describe_validation
from loopline.online.live import insert_once, live_inputs_table, live_rows
from loopline.online.models import default_threads, load_version, resolve_alias
from loopline.online.predlog import (
    PredictionRecord,
    json_text,
    predictions_table,
    upgrade_predictions,
)

log = logging.getLogger(__name__)

TABLE = "consumed_messages"


@dataclass(frozen=True)
class Message:
    id: str
    payload: bytes | None  # the `data` field: one JSON stream line


class Source(Protocol):
    """What a broker offers the consumer."""

    name: str  # the input stream, as `consumed_messages` names it

    def read(self, count: int, block_ms: int) -> list[Message]:
        """Up to `count` messages: unacknowledged ones of this consumer, then ones another
        consumer left too long, then new ones (waiting up to `block_ms` for those)."""

    def reply(self, answers: list[tuple[str, dict]], dead: list[tuple[str, dict]]) -> int:
        """Acknowledge each message id and write its answer (or dead letter) if this was
        the first acknowledgement; returns how many were written."""

    def backlog(self) -> int:
        """Answers waiting in the output, unread (for back-pressure)."""

    def reconnected(self) -> None:
        """Called once the broker answers again after an outage."""


# KEYS: input, output, dead-letter streams. ARGV: group, then (id, "a" or "d", JSON) each.
_REPLY = """
local written = 0
for n = 2, #ARGV, 3 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[n]) == 1 then
    local target = KEYS[2]
    if ARGV[n + 1] == 'd' then target = KEYS[3] end
    redis.call('XADD', target, '*', 'in_reply_to', ARGV[n], 'data', ARGV[n + 2])
    written = written + 1
  end
end
return written
"""


class RedisStreams:
    """A Redis stream read through a consumer group."""

    def __init__(
        self,
        url: str,
        stream: str,
        group: str,
        consumer: str,
        output: str,
        dead_letter: str,
        claim_idle_ms: int,
    ) -> None:
        import redis

        self.redis = redis.Redis.from_url(url)
        self.name, self.group, self.consumer = stream, group, consumer
        self.output, self.dead_letter, self.claim_idle_ms = output, dead_letter, claim_idle_ms
        self._reply = self.redis.register_script(_REPLY)
        self.reconnected()

    def reconnected(self) -> None:
        """After a start or a lost connection: the group exists (a Redis that restarted
        without its data lost it), and this consumer's unacknowledged messages come first."""
        import redis

        self._own_pending = True
        try:
            self.redis.xgroup_create(self.name, self.group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def read(self, count: int, block_ms: int) -> list[Message]:
        if self._own_pending:
            found = self._messages(
                self.redis.xreadgroup(self.group, self.consumer, {self.name: "0"}, count=count)
            )
            if found:
                return found
            self._own_pending = False
        claimed = self.redis.xautoclaim(
            self.name, self.group, self.consumer, self.claim_idle_ms, "0-0", count=count
        )
        if claimed[1]:
            return [self._message(i, f) for i, f in claimed[1] if f is not None]
        return self._messages(
            self.redis.xreadgroup(
                self.group, self.consumer, {self.name: ">"}, count=count, block=block_ms or None
            )
        )

    def _messages(self, reply: Any) -> list[Message]:
        return [self._message(i, f) for _, entries in reply or [] for i, f in entries]

    @staticmethod
    def _message(message_id: bytes, fields: dict[bytes, bytes]) -> Message:
        return Message(message_id.decode(), (fields or {}).get(b"data"))

    def reply(self, answers: list[tuple[str, dict]], dead: list[tuple[str, dict]]) -> int:
        args: list[Any] = [self.group]
        for kind, batch in (("a", answers), ("d", dead)):
            for message_id, payload in batch:
                args += [message_id, kind, json_text(payload)]
        if len(args) == 1:
            return 0
        return int(self._reply(keys=[self.name, self.output, self.dead_letter], args=args))

    def backlog(self) -> int:
        return int(self.redis.xlen(self.output))


# ---------------------------------------------------------------------- the database


def consumed_table(metadata):
    from sqlalchemy import JSON, BigInteger, Column, DateTime, Integer, String, Table
    from sqlalchemy import UniqueConstraint as Unique

    return Table(
        TABLE,
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("source", String(200), nullable=False),
        Column("message_id", String(100), nullable=False),
        Column("answer", JSON, nullable=False),  # what was sent (or the dead letter)
        Column("dead", Integer, nullable=False),
        Column("consumed_at", DateTime(timezone=True), nullable=False),
        Unique("source", "message_id", name="uq_consumed_source_message"),
    )


@dataclass
class Round:
    """What one round of messages produced, committed together."""

    answers: list[tuple[str, dict]] = field(default_factory=list)
    dead: list[tuple[str, dict]] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # live inputs


class Ledger:
    """The prediction-log database: which messages were answered (and how), their
    predictions and stored rows, written in one transaction per round."""

    def __init__(self, url: str, source: str) -> None:
        from sqlalchemy import MetaData, create_engine

        self.engine = create_engine(url, json_serializer=json_text, pool_pre_ping=True)
        metadata = MetaData()
        self.consumed = consumed_table(metadata)
        self.predictions = predictions_table(metadata)
        self.inputs = live_inputs_table(metadata)
        metadata.create_all(self.engine)
        upgrade_predictions(self.engine)
        self.source = source
        self.insert_rows = insert_once(self.inputs, self.engine.dialect.name)

    def answered(self, ids: list[str]) -> dict[str, tuple[dict, bool]]:
        """The messages among `ids` answered before: id → (answer, dead letter or not)."""
        from sqlalchemy import select

        t = self.consumed
        query = select(t.c.message_id, t.c.answer, t.c.dead).where(
            t.c.source == self.source, t.c.message_id.in_(ids)
        )
        with self.engine.connect() as connection:
            return {r.message_id: (r.answer, bool(r.dead)) for r in connection.execute(query)}

    def commit(self, done: Round) -> None:
        """Everything a round made, or nothing (a unique message id already there raises
        IntegrityError: another consumer answered it meanwhile)."""
        now = datetime.now(UTC)
        consumed = [
            {"source": self.source, "message_id": i, "answer": a, "dead": dead, "consumed_at": now}
            for dead, batch in ((0, done.answers), (1, done.dead))
            for i, a in batch
        ]
        with self.engine.begin() as connection:
            if consumed:
                connection.execute(self.consumed.insert(), consumed)
            if done.predictions:
                connection.execute(self.predictions.insert(), done.predictions)
            if done.rows:
                connection.execute(self.insert_rows, done.rows)

    def newest_rows(self, task: str, count: int) -> list[dict[str, Any]]:
        """The newest `count` stored rows of `task`, oldest first (to refill the state)."""
        from sqlalchemy import select

        t = self.inputs
        query = select(t.c.fields).where(t.c.task == task).order_by(t.c.id.desc()).limit(count)
        with self.engine.connect() as connection:
            rows = [r.fields for r in connection.execute(query)]
        return rows[::-1]

    def close(self) -> None:
        self.engine.dispose()


# ---------------------------------------------------------------------- the consumer


class Consumer:
    """Answers a source's messages with the served model, one round at a time."""

    def __init__(self, source: Source, ledger: Ledger, serving: Any, settings: Any) -> None:
        self.source, self.ledger, self.serving, self.settings = source, ledger, serving, settings
        self.model: Any = None
        self.state: Any = None
        self.counts = {"messages": 0, "answers": 0, "predictions": 0, "dead": 0, "replayed": 0}

    def use(self, model: Any) -> None:
        """Serve `model`: the first one opens the per-key state (refilled from the stored
        rows), a later one is followed by it (a hot swap)."""
        if self.state is None:
            self.model, self.state = model, self.serving.open_stream(model)
            self._refill()
        elif model is not self.model:
            self.model = model
            self.state.follow(model)

    def _refill(self) -> None:
        import pandas as pd

        task = self.serving.task
        rows = self.ledger.newest_rows(task.name, self.settings.warm_rows)
        if not rows or self.serving.StreamLine is None:
            return
        frame = pd.DataFrame.from_records(rows)
        if task.time_column in frame:
            frame = frame.sort_values(task.time_column, kind="stable")
        for item in self.serving.stream_lines(frame):
            self.state.push(0, item)  # what it made ready was answered before the restart

    def round_through_outages(self, max_wait_s: float = 30.0) -> int:
        """`wait_for_room` and `step`, riding out the broker being away (a Redis restart):
        retried with backoff, and once it answers the round starts over from this
        consumer's unacknowledged messages (what was committed is sent from the ledger)."""
        import redis

        wait = 0.5
        while True:
            try:
                self.wait_for_room()
                return self.step()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as error:
                log.warning("the broker is away (%s): retrying in %.1f s", error, wait)
            except redis.ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                log.warning("the consumer group is gone (a Redis restarted empty): recreating")
            time.sleep(wait)
            wait = min(wait * 2, max_wait_s)
            try:
                self.source.reconnected()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                continue

    def wait_for_room(self, sleep_s: float = 0.5) -> None:
        """Back-pressure: no reading while the output holds too many unread answers."""
        limit = self.settings.max_output_length
        while limit and self.source.backlog() > limit:
            log.warning("output stream over %d answers: pausing", limit)
            time.sleep(sleep_s)

    def step(self) -> int:
        """One round: read, answer, commit, reply. Returns the messages handled."""
        from sqlalchemy.exc import IntegrityError

        messages = self.source.read(self.settings.batch, self.settings.block_ms)
        if not messages:
            return 0
        before = self.ledger.answered([m.id for m in messages])
        fresh = [m for m in messages if m.id not in before]
        done = self.answer(fresh)
        try:
            self.ledger.commit(done)
        except IntegrityError:  # another consumer answered some meanwhile: send theirs
            done = Round()
            before = self.ledger.answered([m.id for m in messages])
        for message_id, (answer, dead) in before.items():
            (done.dead if dead else done.answers).append((message_id, answer))
        self.source.reply(done.answers, done.dead)
        self._count(len(messages), done, len(before))
        return len(messages)

    def _count(self, messages: int, done: Round, replayed: int) -> None:
        self.counts["messages"] += messages
        self.counts["answers"] += len(done.answers)
        self.counts["dead"] += len(done.dead)
        self.counts["predictions"] += len(done.predictions)
        self.counts["replayed"] += replayed

    def answer(self, messages: list[Message]) -> Round:
        """Each message's answer (its events and, once its key holds the rows the model
        reads, the model's answer), the predictions to log and the rows to store; malformed
        ones dead."""
        done, replies, ready = Round(), {}, []
        for n, message in enumerate(messages):
            try:
                item = self.serving.StreamLine.model_validate_json(message.payload or b"")
            except ValidationError as error:
                done.dead.append((message.id, {"error": describe_validation(error)}))
                continue
            items, events = self.state.push(n, item)
            reply = replies[n] = {"id": message.id}
            for event in events:
                reply.update(event)
            ready += items
        if ready:
            self._predict(messages, ready, replies, done)
        for n, reply in replies.items():
            done.answers.append(
                (messages[n].id, reply if len(reply) > 1 else {**reply, "buffered": True})
            )
        return done

    def _predict(self, messages, ready, replies, done: Round) -> None:

        model = self.model
        started = time.perf_counter()
        answers = answer_items([item for _, item in ready], self.serving.predict, model)
        per_item = (time.perf_counter() - started) * 1000 / max(1, len(answers))
        for (n, _), answer in zip(ready, answers, strict=True):
            replies[n].update(answer.response)
        logged = [a for a in answers if not a.error]
        done.predictions += [
            PredictionRecord.of(model, "consume", a, per_item, "champion").row() for a in logged
        ]
        if logged and self.serving.params.serve.store_inputs:
            rows = self.serving.input_rows(logged)
            task = self.serving.task
            done.rows += [
                r.row() for r in live_rows(task, rows, model.name, model.version, "consume")
            ]


# ---------------------------------------------------------------------- running it


@dataclass
class Champion:
    """The served model, following the alias as a service does (a new version is loaded,
    checked, then swapped in between rounds; one that fails to load is not)."""

    tracking_uri: str
    name: str
    alias: str
    cache: Any
    threads: int
    model: Any = None
    checked_at: float = 0.0

    def current(self, poll_interval_s: float) -> Any:

        if self.model is not None and time.monotonic() - self.checked_at < poll_interval_s:
            return self.model
        self.checked_at = time.monotonic()
        try:
            found = resolve_alias(self.tracking_uri, self.name, self.alias)
            if found is not None and (
                self.model is None or str(found.version) != str(self.model.version)
            ):
                self.model = load_version(
                    self.tracking_uri, found, self.alias, self.cache, self.threads
                )
                log.warning("consuming with %s v%s", self.name, self.model.version)
        except Exception as error:  # keep answering with what is loaded
            if self.model is None:
                raise
            log.warning("alias poll failed, still v%s: %s", self.model.version, error)
        return self.model


def open_consumer(params: Any, paths: Any, name: str) -> tuple[Consumer, Champion]:
    """The consumer `name` of the project's `consume:` stream, and its champion watch."""
    settings = params.consume
    source = RedisStreams(
        os.environ.get("LOOPLINE_CONSUME_URL") or settings.url,
        settings.stream,
        settings.group,
        name,
        settings.output or f"{settings.stream}:answers",
        settings.dead_letter or f"{settings.stream}:dead",
        int(settings.claim_idle_s * 1000),
    )
    ledger = Ledger(paths.prediction_log_url(params), f"redis:{settings.stream}:{settings.group}")
    task = params.plugin
    serving = task.Serving(task, params)
    if serving.StreamLine is None:
        raise ValueError(f"task {task.name} does not stream: there is no line to consume")
    serve = params.serve
    champion = Champion(
        paths.tracking_uri(),
        params.served_model,
        serve.alias,
        paths.state / "serving-cache",
        serve.threads or default_threads(1),
    )
    return Consumer(source, ledger, serving, settings), champion
