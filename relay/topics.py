"""Create the relay's topics when the operator asks for it (``RELAY_KAFKA_CREATE_TOPICS``)."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)


async def ensure_topics(bootstrap_servers: str, names: list[str], partitions: int) -> None:
    """Create each missing topic with ``partitions`` partitions; existing topics are left alone."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in dict.fromkeys(names) if name not in existing]
        if not missing:
            return
        try:
            await admin.create_topics(
                [
                    NewTopic(name, num_partitions=partitions, replication_factor=1)
                    for name in missing
                ]
            )
        except TopicAlreadyExistsError:
            log.info("topics were created concurrently", extra={"topics": missing})
        log.info("topics created", extra={"topics": missing, "partitions": partitions})
    finally:
        await admin.close()
