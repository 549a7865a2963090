"""Development tools: `relay dev`, `relay submit`, embedded services and the process harness.

Never imported by the service itself (`relay run`).
"""
