"""Tests for mindvideo-relay, mirroring the package; integration tests (marked ``integration``)
get real services from ``tests.support.services``."""
