"""Reconciliation's comparison (``relay reconcile``): what the relay recorded about each task it
submitted, against what MindVideo says about it now; pure, so it is tested without services.

The relay's record of a task is its published result (status, ``cost_estimate``, ``cost_actual``),
or, for a task still in flight, its idempotency record (``cost_estimate``). MindVideo's word is
``GET /tasks/{id}`` (``None`` when it no longer knows the task). A task disagrees when its status
or a cost differs; the drift of a model is MindVideo's cost minus the relay's, in USD: actual
costs of ended tasks, estimates of tasks in flight.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from relay.models import TaskSnapshot
from relay.pipeline.results import FOLLOW_TIMEOUT_CODE, TASK_LOST_CODE
from relay.spend.drift import DriftReport

IN_FLIGHT = "in_flight"
USD_QUANTUM = 1e-6


@dataclass(frozen=True, slots=True)
class RelayTask:
    """What the relay's records say about one task it submitted."""

    task_id: str
    idempotency_key: str
    model: str
    status: str  # succeeded, failed, cancelled, or IN_FLIGHT
    cost_estimate: float | None
    cost_actual: float | None
    error_code: str | None = None


@dataclass(frozen=True, slots=True)
class Disagreement:
    task: RelayTask
    mindvideo: TaskSnapshot | None
    problems: tuple[str, ...]

    def line(self) -> str:
        theirs = "unknown to MindVideo"
        if self.mindvideo is not None:
            mv = self.mindvideo
            theirs = (
                f"{mv.status}, estimate {_usd(mv.cost_estimate)}, actual {_usd(mv.cost_actual)}"
            )
        t = self.task
        ours = f"{t.status}, estimate {_usd(t.cost_estimate)}, actual {_usd(t.cost_actual)}"
        return (
            f"{t.task_id} (key {t.idempotency_key!r}): relay {ours}; MindVideo {theirs}: "
            + "; ".join(self.problems)
        )


@dataclass
class ModelDrift:
    """One model's tally."""

    tasks: int = 0
    in_flight: int = 0
    mismatched: int = 0
    relay_estimate: float = 0.0
    mindvideo_estimate: float = 0.0
    relay_actual: float = 0.0  # of tasks whose result the relay published
    mindvideo_actual: float = 0.0  # of the same tasks
    in_flight_estimate_drift: float = 0.0  # MindVideo's estimates minus the relay's, in flight

    @property
    def drift_usd(self) -> float:
        """MindVideo's cost minus the relay's: actual costs of ended tasks, estimates of the
        tasks in flight (they have no actual cost yet)."""
        return _round(self.mindvideo_actual - self.relay_actual + self.in_flight_estimate_drift)


@dataclass
class Reconciliation:
    """Every task checked, by model; ``disagreements`` lists those that do not agree."""

    by_model: dict[str, ModelDrift] = field(default_factory=dict)
    disagreements: list[Disagreement] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not self.disagreements and all(
            abs(m.drift_usd) < USD_QUANTUM for m in self.by_model.values()
        )

    def report(self, at_s: float, since_s: float) -> DriftReport:
        return DriftReport(
            at_s=at_s,
            since_s=since_s,
            drift_usd={model: m.drift_usd for model, m in self.by_model.items()},
            mismatched={model: m.mismatched for model, m in self.by_model.items()},
        )


def compare(checked: Iterable[tuple[RelayTask, TaskSnapshot | None]]) -> Reconciliation:
    """Tally every (relay record, MindVideo snapshot) pair by model."""
    out = Reconciliation()
    for task, mv in checked:
        tally = out.by_model.setdefault(task.model, ModelDrift())
        tally.tasks += 1
        problems = _problems(task, mv)
        mv_estimate = (mv.cost_estimate or 0.0) if mv is not None else 0.0
        tally.relay_estimate += task.cost_estimate or 0.0
        tally.mindvideo_estimate += mv_estimate
        if task.status == IN_FLIGHT:
            tally.in_flight += 1
            tally.in_flight_estimate_drift += mv_estimate - (task.cost_estimate or 0.0)
        else:
            tally.relay_actual += task.cost_actual or 0.0
            tally.mindvideo_actual += (mv.cost_actual or 0.0) if mv is not None else 0.0
        if problems:
            tally.mismatched += 1
            out.disagreements.append(Disagreement(task, mv, tuple(problems)))
    return out


def _problems(task: RelayTask, mv: TaskSnapshot | None) -> list[str]:
    if mv is None:
        if task.error_code == TASK_LOST_CODE:
            return []  # the relay already reported it lost
        return ["MindVideo does not know the task"]
    problems = []
    if not _same(task.cost_estimate, mv.cost_estimate):
        problems.append("estimates differ")
    if task.status == IN_FLIGHT:
        return problems
    if task.status != mv.status:
        gave_up = task.error_code == FOLLOW_TIMEOUT_CODE
        problems.append("status differs" + (" (the relay gave up following it)" if gave_up else ""))
    if not _same(task.cost_actual or 0.0, mv.cost_actual or 0.0):
        problems.append("actual costs differ")
    return problems


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) < USD_QUANTUM


def _round(usd: float) -> float:
    return round(usd, 6) + 0.0  # no "-0.0"


def _usd(value: float | None) -> str:
    return "null" if value is None else f"{value:.4f}"


def format_table(result: Reconciliation) -> list[str]:
    """The per-model table ``relay reconcile`` prints."""
    width = max([len("model"), *(len(m) for m in result.by_model)])
    lines = [
        f"{'model':<{width}}  {'tasks':>6}  {'in flight':>9}  {'mismatched':>10}  "
        f"{'estimates relay/MindVideo USD':>30}  {'drift USD':>10}"
    ]
    for model, m in sorted(result.by_model.items()):
        estimates = f"{m.relay_estimate:.4f} / {m.mindvideo_estimate:.4f}"
        lines.append(
            f"{model:<{width}}  {m.tasks:>6}  {m.in_flight:>9}  {m.mismatched:>10}  "
            f"{estimates:>30}  {m.drift_usd:>10.4f}"
        )
    return lines
