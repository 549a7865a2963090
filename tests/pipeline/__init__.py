"""Tests of relay/pipeline/."""
