"""Tests for mindvideo-relay; integration tests get real services from ``tests.services``."""
