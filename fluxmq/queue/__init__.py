"""Durable queues on a segment log (see docs/queues.md).

    manager      QueueManager: the broker's entry point (publish, subscribe, acks, admin)
    durable      DurableQueue: one queue, its partitions and groups, its counters
    log          PartitionLog: a partition's segment files, recent entries, reads
    group        consumer groups: cursors, pending deliveries, acks, redelivery, rebalancing
    partition    partition choice (partition-key) and assignment of partitions to consumers
    retention    segment age, retention by age and size, compaction
    dlq          dead letters
    state        QueueState: the one door through which durable state changes (the Raft seam)
    settings     queue settings from the configuration
    topics       topic and filter helpers

The domain only: no transport and no wire format. MQTT specifics (reason codes, user
properties) are values the protocol layer carries in and out.
"""
