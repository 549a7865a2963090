"""Webhook delivery: results topic in, signed POSTs with durable retries out (docs/webhooks.md)."""
