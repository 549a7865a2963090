"""Shared test harness: real local services, the pipeline of real processes, a webhook receiver."""
