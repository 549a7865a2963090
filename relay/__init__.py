"""mindvideo-relay: drive MindVideo generation tasks from Kafka, exactly once in effect."""

__version__ = "0.1.0"
