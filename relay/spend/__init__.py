"""Spend control (DESIGN §9): budgets that reserve before a submit, price learning, the hold that
waits for room, and reconciliation against MindVideo.

``rules`` (what an operator configures, calendar windows), ``prices`` (expected cost of a
request), ``ledger`` (the Redis side, one Lua script per transition), ``guard`` (what the request
lifecycle calls), ``monitor`` (gauges and the status page), ``reconcile`` (``relay reconcile``).
"""
