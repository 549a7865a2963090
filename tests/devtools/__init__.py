"""Tests of relay/devtools/."""
