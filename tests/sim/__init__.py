"""Unit tests of the MindVideo simulator (``relay.sim``); no external services."""
