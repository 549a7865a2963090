"""``python -m bench``: the relay measured end to end on this machine (issue #6).

Starts a broker, Redis, the MindVideo simulator, a webhook receiver and relay processes on
loopback, drives them, and writes ``bench/results/latest.{json,md}``. See ``bench/README.md``.
"""
