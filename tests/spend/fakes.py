"""An in-memory budget ledger with the Redis ledger's contract, for unit tests of the guard and the
lifecycle (the scripts themselves are tested on a real Redis in ``test_ledger.py``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from relay.spend.ledger import BudgetLedger, Reservation, ReserveReply, RuleUsage
from relay.spend.rules import BudgetRule, window_at


@dataclass
class FakeReservation:
    state: str  # h, l, c, s
    amount: int
    entries: list[str]
    estimate: int = 0
    probe: str | None = None


@dataclass
class FakeLedger(BudgetLedger):
    """Budget windows and reservations in dicts; ``calls`` lists what was asked, in order."""

    clock: object = None
    spent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    reserved: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    reservations: dict[str, FakeReservation] = field(default_factory=dict)
    probes: dict[str, str] = field(default_factory=dict)
    learned: dict[str, float] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def _raise(self) -> None:
        if self.errors:
            raise self.errors.pop(0)

    async def reserve(self, reservation: Reservation) -> ReserveReply:
        self.calls.append("reserve")
        self._raise()
        known = self.reservations.get(reservation.id)
        if known is not None and known.state == "h":
            return ReserveReply("held")
        if known is not None and known.state in ("c", "s"):
            return ReserveReply("charged")
        amount = reservation.quote.amount_micro
        probe = reservation.quote.price_field if amount is None else None
        if probe is not None and reservation.budgets:
            holder = self.probes.get(probe)
            if holder is not None and holder != reservation.id:
                return ReserveReply("probing", probe_left_s=5.0)
        for budget in reservation.budgets:
            used = self.spent[budget.entry] + self.reserved[budget.entry]
            limit = round(budget.rule.limit_usd * 1_000_000)
            if used + (amount or 0) > limit or (amount is None and used >= limit):
                return ReserveReply("full", full=budget)
        entries = [b.entry for b in reservation.budgets]
        for entry in entries:
            self.reserved[entry] += amount or 0
        if probe is not None and reservation.budgets:
            self.probes[probe] = reservation.id
        self.reservations[reservation.id] = FakeReservation("h", amount or 0, entries, probe=probe)
        return ReserveReply("ok")

    def _unprobe(self, rid: str, res: FakeReservation) -> None:
        if res.probe is not None and self.probes.get(res.probe) == rid:
            del self.probes[res.probe]

    async def refresh(self, reservation_id_: str) -> bool:
        self.calls.append("refresh")
        res = self.reservations.get(reservation_id_)
        return res is not None and res.state == "h"

    def lapse(self, reservation_id_: str) -> None:
        """What the sweep does to a reservation whose holder stopped refreshing it."""
        res = self.reservations[reservation_id_]
        for entry in res.entries:
            self.reserved[entry] -= res.amount
        self._unprobe(reservation_id_, res)
        res.state = "l"

    async def confirm(
        self,
        reservation_id_: str,
        *,
        estimate_micro: int | None,
        learn: tuple[str, float] | None,
        charge_if_missing: bool,
        entries: str = "",
    ) -> bool:
        self.calls.append("confirm")
        self._raise()
        res = self.reservations.get(reservation_id_)
        if res is not None and res.state in ("c", "s"):
            return False
        if res is None and not charge_if_missing:
            return False
        if res is None:
            res = FakeReservation("l", 0, entries.split())
        estimate = res.amount if estimate_micro is None else estimate_micro
        for entry in res.entries:
            if res.state == "h":
                self.reserved[entry] -= res.amount
            self.spent[entry] += estimate
        self._unprobe(reservation_id_, res)
        if learn is not None:
            self.learned[learn[0]] = learn[1]
        res.state, res.estimate = "c", estimate
        self.reservations[reservation_id_] = res
        return True

    async def settle(self, reservation_id_: str, actual_micro: int | None) -> bool:
        self.calls.append("settle")
        res = self.reservations.get(reservation_id_)
        if res is None or res.state != "c":
            return False
        if actual_micro is not None:
            for entry in res.entries:
                self.spent[entry] = max(0, self.spent[entry] + actual_micro - res.estimate)
        res.state = "s"
        return True

    async def release(self, reservation_id_: str) -> bool:
        self.calls.append("release")
        res = self.reservations.get(reservation_id_)
        if res is None or res.state not in ("h", "l"):
            return False
        if res.state == "h":
            for entry in res.entries:
                self.reserved[entry] -= res.amount
            self._unprobe(reservation_id_, res)
        del self.reservations[reservation_id_]
        return True

    async def sweep(self) -> int:
        return 0

    async def usage(self, rules: Sequence[BudgetRule]) -> list[RuleUsage]:
        now_s = self.clock() if callable(self.clock) else 0.0
        out = []
        for rule in rules:
            window = window_at(rule.window, now_s)
            prefix = f"{rule.name}:{window.id}:"
            entries = {e for e in [*self.spent, *self.reserved] if e.startswith(prefix)}
            fullest = max(entries, key=lambda e: self.spent[e] + self.reserved[e], default=None)
            spent = self.spent[fullest] if fullest else 0
            reserved = self.reserved[fullest] if fullest else 0
            out.append(RuleUsage(rule, window.end_s, len(entries), spent, reserved))
        return out

    async def spend_by_minute(self, minutes: int = 60) -> list[tuple[float, int]]:
        return []

    async def learned_prices(self) -> dict[str, float]:
        return dict(self.learned)

    def total_spent(self, rule: str) -> int:
        return sum(v for k, v in self.spent.items() if k.startswith(f"{rule}:"))

    def total_reserved(self, rule: str) -> int:
        return sum(v for k, v in self.reserved.items() if k.startswith(f"{rule}:"))
