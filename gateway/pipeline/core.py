"""The path of one message, top-down:

1. ``accept``: a channel hands in inbound messages; they are journaled (committed, deduped by a
   keyed hash of channel + account + external id) before the channel acknowledges them.
2. ``_answer``: one lane per conversation takes its oldest pending journal entry, asks the
   channel's agent, and commits the reply to the outbox together with closing the entry.
3. ``_deliver``: one lane per conversation sends its outbox rows in order, within the channel's
   rate limits, marking each row 'sending' before the send so a crash never causes a resend.

On start, pending journal entries and outbox rows are picked up again (crash recovery).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping, Sequence

import trio

from gateway.errors import SendError, StoreError
from gateway.logs import log_context
from gateway.messages import Inbound, Outbound
from gateway.metrics import Metrics
from gateway.pipeline.agent import Agent
from gateway.pipeline.commands import CommandCall, Commands
from gateway.pipeline.consent import Keywords
from gateway.pipeline.lanes import LAST, Lanes, Progress
from gateway.pipeline.ratelimit import DEFAULT_SEND_CONCURRENCY, SendLimiter
from gateway.plugin import Accepted, Channel, ChannelConfig
from gateway.store import Store
from gateway.store.journal import (
    Intake,
    PendingWork,
    accept_txn,
    close_without_reply_txn,
    commit_reply_txn,
    handoff_txn,
    next_pending_txn,
    pending_conversations_txn,
    sender_of_conversation_txn,
)
from gateway.store.outbox import (
    OutboxItem,
    commit_reply_and_next_txn,
    mark_sending_txn,
    next_outbox_txn,
    open_conversations_txn,
    queue_human_reply_txn,
    queue_notification_txn,
    record_attempt_txn,
    recover_outbox_txn,
)
from gateway.store.records import consent_changed_by_txn

log = logging.getLogger("gateway.pipeline")

MAX_SEND_ATTEMPTS = 5
MAX_RATE_LIMITED_WAITS = 20


class ShuttingDown(StoreError):
    """Raised by ``accept`` once shutdown began: the channel must not acknowledge."""


@dataclasses.dataclass
class ChannelSlot:
    name: str
    config: ChannelConfig
    plugin: Channel | None = None
    limiter: SendLimiter | None = None
    keywords: Keywords = dataclasses.field(default_factory=Keywords)


class Pipeline:
    def __init__(
        self,
        store: Store,
        agents: Mapping[str, Agent],
        dedupe_key: bytes,
        *,
        max_concurrent_answers: int = 64,
        send_backoff: float = 1.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.agents = agents
        self.channels: dict[str, ChannelSlot] = {}
        self._dedupe_key = dedupe_key
        self._answer_limiter = trio.CapacityLimiter(max_concurrent_answers)
        self._send_backoff = send_backoff
        self.answers = Lanes("answer", self._answer)
        self.deliveries = Lanes("deliver", self._deliver)
        self._next_rows: dict[int, OutboxItem] = {}
        """Per conversation, the next outbox row as "commit reply" read it, for the delivery
        lane it notifies (taken at that lane's next step: bounded by the lanes notified)."""
        self.accepting = True
        self.commands = Commands()
        """Chat commands answered by gateway features (gateway.pipeline.commands)."""
        self.metrics = metrics if metrics is not None else Metrics()
        self.counters = {
            "accepted": 0,
            "duplicates": 0,
            "replies": 0,
            "fallbacks": 0,
            "sent": 0,
            "send_failed": 0,
            "send_unknown": 0,
            "send_retries": 0,
            "handoffs": 0,
            "silent": 0,
        }

    def add_channel(self, name: str, config: ChannelConfig, plugin: Channel) -> None:
        self.channels[name] = ChannelSlot(
            name,
            config,
            plugin,
            SendLimiter(
                config.send_rate,
                config.send_rate_per_chat,
                config.send_burst_per_chat,
                getattr(plugin, "send_concurrency", DEFAULT_SEND_CONCURRENCY),
            ),
            config.consent_keywords(),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.answers.run)
            await nursery.start(self.deliveries.run)
            interrupted = await self.store.write("recover outbox", recover_outbox_txn)
            if interrupted:
                self.counters["send_unknown"] += len(interrupted)
                self.metrics.sends_interrupted.inc(len(interrupted))
                log.warning(
                    "%d replies were being sent when the gateway stopped; they are marked "
                    "'unknown' and not resent (at-most-once): outbox ids %s",
                    len(interrupted),
                    interrupted[:20],
                )
            for conversation_id in await self.store.read(
                "pending journal", pending_conversations_txn
            ):
                self.answers.notify(conversation_id)
            for conversation_id in await self.store.read("open outbox", open_conversations_txn):
                self.deliveries.notify(conversation_id)
            task_status.started()
            await trio.sleep_forever()

    async def wait_idle(self) -> None:
        """Return once nothing is being answered or sent (used to drain on shutdown)."""
        while self.answers.active or self.deliveries.active:
            await self.answers.wait_idle()
            await self.deliveries.wait_idle()

    # 1. intake -------------------------------------------------------------------------------

    def dedupe_key(self, channel: str, inbound: Inbound) -> str:
        material = "\0".join((channel, inbound.account, inbound.external_id)).encode()
        return hmac.new(self._dedupe_key, material, hashlib.sha256).hexdigest()

    async def accept(self, channel: str, inbounds: Sequence[Inbound]) -> list[Accepted]:
        if not self.accepting:
            raise ShuttingDown("the gateway is shutting down; the platform should retry")
        slot = self.channels.get(channel)
        if slot is None:
            # A request already in flight when a reload removed its channel: no 500, a retry.
            raise ShuttingDown(f"channel {channel!r} is not running; the platform should retry")
        for inbound in inbounds:
            if not (
                inbound.account and inbound.external_id and inbound.thread_key and inbound.sender_id
            ):
                raise ValueError(
                    f"channel {channel!r} produced an Inbound without account/external_id/"
                    "thread_key/sender_id (a plugin bug)"
                )
        items = [
            Intake(
                self.dedupe_key(channel, m),
                channel,
                slot.config.agent,
                m,
                slot.keywords.match(m.text),
            )
            for m in inbounds
        ]
        accepted: list[Accepted] = await self.store.write(
            "accept inbound", accept_txn, items, self.store.sealer
        )
        for result in accepted:
            self.metrics.received(channel, duplicate=result.duplicate)
            if result.duplicate:
                self.counters["duplicates"] += 1
            else:
                self.counters["accepted"] += 1
                self.answers.notify(result.conversation_id)
        return accepted

    # 2. answer -------------------------------------------------------------------------------

    async def _answer(self, conversation_id: int) -> Progress:
        async with self._answer_limiter:
            # The history window is the largest any agent wants; each agent trims its own.
            window = max((a.config.history_turns for a in self.agents.values()), default=20)
            # Read through the writer, not a reader thread: the writer batches it with the
            # other jobs in flight, where one thread hop per read made the GIL ping-pong
            # between threads the largest cost per message (bench: 123 -> 160 replies/s).
            work = await self.store.write(
                "next pending message",
                next_pending_txn,
                conversation_id,
                window,
                self.store.sealer,
            )
            if work is None:
                return False
            log_context(channel=work.channel, conversation=conversation_id, journal=work.journal_id)
            slot = self.channels.get(work.channel)
            agent = self.agents.get(slot.config.agent if slot else work.agent)
            if agent is None:
                log.error(
                    "no agent for channel %r (conversation %d); leaving message pending",
                    work.channel,
                    conversation_id,
                )
                return False
            last = work.history[-1].text if work.history else ""
            if await self._command(work, last):
                return _done(work.more)
            if slot is not None and await self._consent_keyword(slot, work, last):
                return _done(work.more)
            if work.restricted:
                # Restricted processing (GDPR Art. 18): kept for people to read, no analysis,
                # no suggestions, no model.
                await self.store.write("close without reply", close_without_reply_txn, work)
                self.counters["silent"] += 1
                self.metrics.left_to_people(work.channel)
                return _done(work.more)
            analysis = agent.analyze(work)
            labels = analysis.to_json()
            if work.status != "open" or not work.ai_allowed:
                # A person has the conversation, or AI is off for it or its contact: the
                # message stays stored for people to read (with replies they might send) and
                # the AI says nothing.
                suggested = (
                    json.dumps(agent.suggestions(analysis, last), ensure_ascii=False)
                    if work.status == "handoff"
                    else None
                )
                await self.store.write(
                    "close without reply",
                    close_without_reply_txn,
                    work,
                    analysis=labels,
                    suggestions=suggested,
                )
                self.counters["silent"] += 1
                self.metrics.left_to_people(work.channel)
                return _done(work.more)
            reason = agent.handoff_reason(analysis)
            if reason is not None:
                text = agent.handoff_text(dt.datetime.now(dt.UTC))
                suggested = json.dumps(agent.suggestions(analysis, last), ensure_ascii=False)
                outbox_id = await self.store.write(
                    "hand off",
                    handoff_txn,
                    work,
                    text,
                    self.store.sealer,
                    reason=reason,
                    analysis=labels,
                    suggestions=suggested,
                )
                self.counters["handoffs"] += 1
                if outbox_id is not None:
                    self.metrics.replied(work.channel, "handoff")
                    self.deliveries.notify(conversation_id)
                return _done(work.more)
            text, author = await agent.answer(
                work, slot.config.residency if slot is not None else None
            )
        outbox_id, next_row = await self.store.write(
            "commit reply",
            commit_reply_and_next_txn,
            work,
            text,
            author,
            self.store.sealer,
            analysis=labels,
        )
        if outbox_id is not None:
            self.metrics.replied(work.channel, author)
            self.counters["replies"] += 1
            if author == "fallback":
                self.counters["fallbacks"] += 1
            if next_row is not None:
                self._next_rows[conversation_id] = next_row
            self.deliveries.notify(conversation_id)
        return _done(work.more)

    async def _command(self, work: PendingWork, text: str) -> bool:
        """A chat command of a gateway feature (/mydata...) gets that feature's answer."""
        matched = self.commands.match(text)
        if matched is None:
            return False
        handler, name, args = matched
        contact_id, identity_id = await self.store.write(
            "command sender", sender_of_conversation_txn, work.conversation_id
        )
        reply = await handler(
            CommandCall(
                command=name,
                args=args,
                channel=work.channel,
                account=work.account,
                thread_key=work.thread_key,
                conversation_id=work.conversation_id,
                contact_id=contact_id,
                identity_id=identity_id,
                journal_id=work.journal_id,
                message_id=work.message_id,
            )
        )
        if reply is None:
            return False
        if not reply:
            await self.store.write("close without reply", close_without_reply_txn, work)
            return True
        outbox_id = await self.store.write(
            "command reply",
            commit_reply_txn,
            work,
            reply,
            "notice",
            self.store.sealer,
            purpose="transactional",
        )
        if outbox_id is not None:
            self.deliveries.notify(work.conversation_id)
        return True

    async def _consent_keyword(self, slot: ChannelSlot, work: PendingWork, text: str) -> bool:
        """An opt-out or re-subscribe message gets its confirmation, not an AI answer.

        accept_txn already recorded it in the consent ledger. Returns True if handled.
        """
        kind = slot.keywords.match(text)
        if kind is None:
            return False
        if kind == "granted":
            changed = await self.store.write(
                "consent of message", consent_changed_by_txn, work.message_id
            )
            if changed != "granted":
                return False  # a first /start: no consent event, the agent answers as usual
        reply = slot.config.opt_out_reply if kind == "withdrawn" else slot.config.opt_in_reply
        self.metrics.consent(work.channel, kind)
        if not reply:
            await self.store.write("close without reply", close_without_reply_txn, work)
            return True
        outbox_id = await self.store.write(
            "consent confirmation",
            commit_reply_txn,
            work,
            reply,
            "notice",
            self.store.sealer,
            purpose="transactional",
        )
        if outbox_id is not None:
            self.deliveries.notify(work.conversation_id)
        return True

    async def send_notification(
        self, channel: str, account: str, thread_key: str, text: str, *, key: str
    ) -> int:
        """Queue a message we initiate (an operator's or a developer's notification) to an
        existing thread. Raises OptedOut if the contact unsubscribed, LookupError if there is
        no such thread. ``key`` makes a retried request harmless. Returns the outbox id."""
        outbox_id, conversation_id, _again = await self.store.write(
            "queue notification",
            queue_notification_txn,
            channel,
            account,
            thread_key,
            text,
            key,
            self.store.sealer,
        )
        self.deliveries.notify(conversation_id)
        return outbox_id

    async def reply_as_human(
        self,
        conversation_id: int,
        text: str,
        *,
        actor: str,
        key: str,
        audit_detail: dict[str, object] | None = None,
    ) -> int:
        """Queue a person's reply to a conversation (the admin UI's "reply", the CLI). ``actor``
        says who (``admin:<email>``); ``key`` makes a double submit one reply. Returns the
        outbox id; LookupError for an unknown conversation, ValueError for an empty text.
        ``audit_detail`` (e.g. ``{"chars": 12}``): audit it as ``conversation.reply`` in the
        reply's own transaction."""
        if not text.strip():
            raise ValueError("a reply needs some text")
        outbox_id, _again = await self.store.write(
            "queue human reply",
            queue_human_reply_txn,
            conversation_id,
            text,
            actor,
            key,
            self.store.sealer,
            audit_detail,
        )
        self.deliveries.notify(conversation_id)
        return outbox_id

    # 3. deliver ------------------------------------------------------------------------------

    async def _deliver(self, conversation_id: int) -> Progress:
        # The row "commit reply" read in its own transaction, if it left one; else through the
        # writer for the same reason as "next pending message" above. A row taken meanwhile
        # (a lane already running here claimed it) is refused by "claim outbox row" below and
        # read again.
        item: OutboxItem | None = self._next_rows.pop(conversation_id, None)
        if item is None:
            item = await self.store.write(
                "next outbox row", next_outbox_txn, conversation_id, self.store.sealer
            )
        if item is None:
            return False
        log_context(
            channel=item.channel,
            conversation=conversation_id,
            journal=_journal_id(item.idempotency_key),
            outbox=item.id,
        )
        slot = self.channels.get(item.channel)
        if slot is None or slot.plugin is None or slot.limiter is None:
            log.warning("channel %r is not running; outbox %d waits", item.channel, item.id)
            return False
        if item.opted_out:
            await self.store.write(
                "record delivery",
                record_attempt_txn,
                item.id,
                item.attempts + 1,
                "failed",
                detail=f"not sent: {item.refusal or 'the contact unsubscribed'} (after it was "
                "queued)",
            )
            self.metrics.send(item.channel, "failed")
            return _done(item.more)
        outbound = Outbound(
            outbox_id=item.id,
            idempotency_key=item.idempotency_key,
            account=item.account,
            thread_key=item.thread_key,
            text=item.text,
            reply_to_external_id=item.reply_to_external_id,
            message_id=item.message_id,
            author=item.author,
            purpose=item.purpose,  # type: ignore[arg-type]
            last_inbound_at=dt.datetime.fromisoformat(item.last_inbound_at)
            if item.last_inbound_at
            else None,
        )
        rate_limited = 0
        while True:
            # Looked up again for every attempt: a reload may have replaced the channel.
            current = self.channels.get(item.channel)
            plugin = current.plugin if current is not None else None
            limiter = current.limiter if current is not None else None
            if plugin is None or limiter is None:
                log.warning("channel %r stopped; outbox %d waits", item.channel, item.id)
                return False
            await limiter.wait(item.thread_key)
            # Claimed only once a send slot is free: a row marked 'sending' is one whose
            # request may be out (recovery treats it so), never one still waiting here.
            async with limiter.in_flight:
                attempt = await self.store.write("claim outbox row", mark_sending_txn, item.id)
                if attempt == 0:
                    return True  # no longer pending (handled elsewhere): look again
                failure: Exception | None = None
                try:
                    result = await plugin.send(outbound)
                except Exception as error:
                    failure = error
            if isinstance(failure, SendError):
                outcome, wait = self._classify(failure, attempt, rate_limited)
                if failure.retry_after is not None:
                    rate_limited += 1
                await self._record_attempt(item.id, attempt, outcome, detail=str(failure))
                log.log(
                    logging.WARNING if outcome != "retry" else logging.INFO,
                    "send channel=%s outbox=%d attempt=%d outcome=%s: %s",
                    item.channel,
                    item.id,
                    attempt,
                    outcome,
                    failure,
                    extra={"attempt": attempt, "outcome": outcome},
                )
                self.metrics.send(item.channel, outcome)
                if outcome != "retry":
                    self.counters["send_failed" if outcome == "failed" else "send_unknown"] += 1
                    return _done(item.more)
                self.counters["send_retries"] += 1
                await trio.sleep(wait)
                continue
            if failure is not None:
                # Not a SendError: a plugin bug. The request may have gone out, so no resend.
                log.error(
                    "channel %s send raised %s; outbox %d marked failed",
                    item.channel,
                    type(failure).__name__,
                    item.id,
                    exc_info=failure,
                )
                await self._record_attempt(
                    item.id, attempt, "failed", detail=f"plugin error {type(failure).__name__}"
                )
                self.counters["send_failed"] += 1
                self.metrics.send(item.channel, "failed")
                return _done(item.more)
            await self._record_attempt(item.id, attempt, "sent", external_id=result.external_id)
            self.counters["sent"] += 1
            self.metrics.send(item.channel, "sent")
            log.info(
                "send channel=%s outbox=%d attempt=%d outcome=sent",
                item.channel,
                item.id,
                attempt,
                extra={"attempt": attempt, "outcome": "sent"},
            )
            return _done(item.more)

    async def _record_attempt(
        self,
        outbox_id: int,
        attempt: int,
        outcome: str,
        *,
        detail: str | None = None,
        external_id: str | None = None,
    ) -> None:
        """Record a claimed row's send outcome, retrying until it commits. Only this task knows
        the outcome: given up on (the disk full, the database locked), the row would stay
        'sending' and turn 'unknown' at the next start, for a reply that may well have arrived,
        and the lane's retry would not find it (it looks for pending rows)."""
        delay = 0.5
        while True:
            try:
                await self.store.write(
                    "record delivery",
                    record_attempt_txn,
                    outbox_id,
                    attempt,
                    outcome,
                    detail=detail,
                    external_id=external_id,
                )
                return
            except StoreError as exc:
                log.error(
                    "outbox %d: cannot record send outcome %r yet (%s); retrying in %.1fs",
                    outbox_id,
                    outcome,
                    exc,
                    delay,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _classify(self, exc: SendError, attempt: int, rate_limited: int) -> tuple[str, float]:
        if exc.uncertain:
            return "unknown", 0.0
        if exc.permanent:
            return "failed", 0.0
        if exc.retry_after is not None:
            # Flood control is the platform telling us when; it does not use up attempts.
            if rate_limited >= MAX_RATE_LIMITED_WAITS:
                return "failed", 0.0
            return "retry", float(exc.retry_after)
        if attempt - rate_limited >= MAX_SEND_ATTEMPTS:
            return "failed", 0.0
        return "retry", min(self._send_backoff * 2 ** (attempt - rate_limited - 1), 60.0)


def _done(more: bool) -> Progress:
    """A lane step's outcome once it handled its item: look again only if more was pending."""
    return True if more else LAST


def _journal_id(idempotency_key: str) -> int | None:
    """The journal id a reply answers (its key is "reply:<journal id>", commit_reply_txn)."""
    tail = idempotency_key.removeprefix("reply:")
    return int(tail) if tail != idempotency_key and tail.isdigit() else None
