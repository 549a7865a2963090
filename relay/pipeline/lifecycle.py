"""The request lifecycle as a state machine: its stages, the errors each stage may raise, and the
one table that says what every (stage, error) pair leads to.

A record moves through the stages in order; each stage is one step (``relay.pipeline.steps``) and
returns the next stage::

    DECODE ─► REFUSE ───────────────────────────────────────────────────► DONE   (record-level)
       └────► CLAIM ─► RESERVE ─► SUBMIT ─► FOLLOW ─► PUBLISH ─► MARK ─► DONE
                 └───────────────────────────────────► PUBLISH           (conflict, stored result)

A claim resumes where the key's Redis state (``KeyState``) says the request stands: ``claimed`` →
RESERVE, ``submitted`` → FOLLOW, ``terminal`` → PUBLISH, ``published``/``rejected`` → DONE.
RESERVE takes room in the spend budgets (``relay.spend``); SUBMIT goes back to it when the
reservation lapsed while the request waited (an outage, the closed credentials gate).

When a step raises, the error's class is sorted into an ``ErrorKind`` and ``TABLE`` gives the
``Action``; the dispatcher (``relay.pipeline.processor``) carries it out. A kind a stage does not
declare is ``UNEXPECTED`` there: a bug or a record the relay cannot carry, tried again up to
``RELAY_RECORD_MAX_ATTEMPTS`` times in all, then dead-lettered with reason ``internal_error``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum

from relay.exceptions import BudgetHeld, FollowTimeout, OperatorError, RequestRejected
from relay.models import RequestRecord, ResultError, ResultRecord, TaskSnapshot
from relay.pipeline.consumer import SourceRecord
from relay.pipeline.decode import DeadLetter
from relay.pipeline.idempotency import IdempotencyRecord, KeyState
from relay.pipeline.results import FOLLOW_TIMEOUT_CODE, TASK_LOST_CODE
from relay.retry import is_outage
from relay.spend.ledger import Reservation

INTERNAL_ERROR_REASON = "internal_error"
KEY_IN_USE_REASON = "key_in_use"
# Kafka refused the result as too large even without its trace headers (final, not an outage).
RESULT_TOO_LARGE_REASON = "result_too_large"
# The Kafka client could not parse the record at all (e.g. a header key that is not UTF-8).
UNDECODABLE_RECORD_REASON = "undecodable_record"


class Stage(StrEnum):
    """Where one record stands in this process; each stage is one step."""

    DECODE = "decode"  # the record's bytes → a request, a rejection or a dead letter
    REFUSE = "refuse"  # publish a rejection decided from the record alone (or dead-letter it)
    CLAIM = "claim"  # claim the key in Redis, or learn where its request stands
    RESERVE = "reserve"  # reserve the expected cost in every spend budget that applies
    SUBMIT = "submit"  # create the task (Idempotency-Key) and record it, as one piece
    FOLLOW = "follow"  # follow the task to its end
    PUBLISH = "publish"  # store the result, win the key's publish, write it to the results topic
    MARK = "mark"  # record in Redis that the result is published
    DONE = "done"


class ErrorKind(StrEnum):
    """What an error means for the request, whatever raised it."""

    OUTAGE = "outage"  # MindVideo, Redis or Kafka unavailable: network, 5xx, 429, ...
    CREDENTIALS = "credentials"  # MindVideo refuses the operator's key or credit: 401/402/403
    REFUSED = "refused"  # MindVideo's final 4xx, a budget in reject mode, a deadline passed
    HELD = "held"  # a spend budget has no room yet (BudgetHeld)
    TIMED_OUT = "timed_out"  # the task is not terminal RELAY_TASK_TIMEOUT_S after its submit
    UNEXPECTED = "unexpected"  # anything else


class Action(Enum):
    """What the dispatcher does next."""

    RETRY = "retry"  # back off (jittered, counted) and run the step again, for as long as it lasts
    CLOSE_GATE = "close gate"  # close the credentials gate, wait until it opens, run the step again
    REJECT = "reject"  # publish request.rejected with the error's code (nothing was charged)
    HOLD = "hold"  # wait, parked and counted as held, until the budget may have room; run again
    FAIL = "fail"  # publish task.failed with the outcome's code
    DEAD_LETTER = "dead-letter"  # retry (bounded), then dead-letter the record as internal_error


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    code: str | None = None  # the result's error.code for FAIL


RETRY = Outcome(Action.RETRY)
CLOSE_GATE = Outcome(Action.CLOSE_GATE)
DEAD_LETTER = Outcome(Action.DEAD_LETTER)

# The one table. A stage's row lists the error kinds its step declares; anything else is
# UNEXPECTED there (→ DEAD_LETTER).
TABLE: dict[Stage, dict[ErrorKind, Outcome]] = {
    Stage.DECODE: {},
    Stage.REFUSE: {ErrorKind.OUTAGE: RETRY},
    Stage.CLAIM: {ErrorKind.OUTAGE: RETRY},
    Stage.RESERVE: {
        ErrorKind.OUTAGE: RETRY,
        # RELAY_BUDGET_MODE=reject (budget_exceeded), or expires_at passed (expired).
        ErrorKind.REFUSED: Outcome(Action.REJECT),
        ErrorKind.HELD: Outcome(Action.HOLD),
    },
    Stage.SUBMIT: {
        ErrorKind.OUTAGE: RETRY,
        ErrorKind.CREDENTIALS: CLOSE_GATE,
        # MindVideo's final 4xx, or expires_at passed before anything may have been created.
        ErrorKind.REFUSED: Outcome(Action.REJECT),
    },
    Stage.FOLLOW: {
        ErrorKind.OUTAGE: RETRY,
        ErrorKind.CREDENTIALS: CLOSE_GATE,
        # MindVideo answers 404 (or another final 4xx) for the task it created: purged, or the
        # key was rotated to another account. It will never end; following it again is futile.
        ErrorKind.REFUSED: Outcome(Action.FAIL, TASK_LOST_CODE),
        ErrorKind.TIMED_OUT: Outcome(Action.FAIL, FOLLOW_TIMEOUT_CODE),
    },
    Stage.PUBLISH: {ErrorKind.OUTAGE: RETRY},
    Stage.MARK: {ErrorKind.OUTAGE: RETRY},
    Stage.DONE: {},
}

# Stages that talk to MindVideo wait while the credentials gate is closed.
NEEDS_MINDVIDEO = frozenset({Stage.SUBMIT, Stage.FOLLOW})
# Stages where a request past its expires_at is rejected (it has not been submitted yet), and
# whose waits (outages, the gate, a budget) end at that moment.
BEFORE_SUBMIT = frozenset({Stage.RESERVE, Stage.SUBMIT})


def classify(exc: BaseException) -> ErrorKind:
    """The kind of an error, by its class (``relay.exceptions`` and the clients' own)."""
    if isinstance(exc, OperatorError):
        return ErrorKind.CREDENTIALS
    if isinstance(exc, RequestRejected):
        return ErrorKind.REFUSED
    if isinstance(exc, FollowTimeout):
        return ErrorKind.TIMED_OUT
    if isinstance(exc, BudgetHeld):
        return ErrorKind.HELD
    if is_outage(exc):
        return ErrorKind.OUTAGE
    return ErrorKind.UNEXPECTED


def outcome_for(stage: Stage, exc: BaseException) -> Outcome:
    """What ``exc`` raised by ``stage``'s step leads to."""
    return TABLE[stage].get(classify(exc), DEAD_LETTER)


@dataclass(slots=True)
class Work:
    """One record on its way through the stages."""

    source: SourceRecord  # where it came from (its bytes taken out into ``raw``)
    raw: bytes | None  # the record's bytes, kept only until they are decoded into a request
    key: str | None = None
    request: RequestRecord | None = None
    fingerprint: str | None = None  # the request's payload fingerprint, once claimed
    webhook_url: str | None = None
    refusal: ResultRecord | None = None  # a rejection decided from the record alone
    undecodable: DeadLetter | None = None  # why the record cannot be decoded at all
    known: IdempotencyRecord | None = None  # the task, once submitted
    last_event_id: str | None = None
    decided: ResultError | None = None  # a REJECT or FAIL outcome, made into a result at PUBLISH
    result: ResultRecord | None = None
    body: bytes | None = None  # the result as stored in Redis, published byte for byte
    marker: str | None = None  # remembered once published, so a replay does not publish again
    publish_token: str | None = None  # this process's claim on the key's publish lease
    mark: KeyState | None = None  # the key's state once the result is published
    submit_started_s: float | None = None
    resumed_claim: bool = False  # the key was claimed before: an earlier submit may have run
    reservation: Reservation | None = None  # room held in the budgets until the task is created
    held_since_s: float | None = None  # when a budget first held the request (unix seconds)
    held_by: tuple[str, str] | None = None  # (budget, window) counting it as held meanwhile
    # A submit may have reached MindVideo (a timeout, a 5xx): expires_at no longer applies, the
    # request is followed through with its Idempotency-Key instead of claimed to cost nothing.
    maybe_submitted: bool = False
    # MindVideo's answer to the submit until Redis records it (a retry writes, not submits, again)
    answer: TaskSnapshot | None = None
    foreign_task: bool = False  # that answer replays a task an earlier claim of the key counted
    recorded: bool = False  # this process wrote the submit to Redis (a retry does not submit)
    snapshot: TaskSnapshot | None = None  # MindVideo's answer to the submit, until charged
    counts_cost: bool = False  # this process counts the task's estimate (first to record it)
    charged: bool = False  # the estimate is counted (metrics, budgets): done with the submit
    failures: int = 0  # unexpected errors so far (bounded by RELAY_RECORD_MAX_ATTEMPTS)
    outages: int = 0  # outage retries of the current step (the backoff grows with them)

    def expirable(self) -> bool:
        """Whether ``expires_at`` still applies: set, and nothing may have been submitted."""
        return (
            self.request is not None
            and self.request.expires_at is not None
            and not self.maybe_submitted
            and not self.recorded
        )

    def reject(self, code: str, message: str) -> None:
        """MindVideo refused the request for good: publish ``request.rejected``."""
        self.decided, self.mark = ResultError(code=code, message=message), KeyState.REJECTED

    def fail(self, code: str, message: str) -> None:
        """The submitted task will not end by itself: publish ``task.failed``."""
        self.decided, self.mark = ResultError(code=code, message=message), KeyState.PUBLISHED
