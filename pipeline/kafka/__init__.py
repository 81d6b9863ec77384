"""Scaling out over Kafka: node sidecars publish access events, aggregators audit them.

Data flow::

    sidecar (auditor run --kafka-bootstrap ...)          one per node, tails its Traefik log
      parse (same envelope decoder and parser as run)
      -> one message per partition per batch, events keyed by client address    (events.py)
      -> events topic (N partitions), acks=all; file checkpoint advances after the ack
                                                                                 (producer.py)
    aggregator (auditor aggregate ...)                   two or more, one consumer group
      own some events partitions; fold them, dropping duplicates by line id      (consumer.py)
      -> one state snapshot per partition -> totals topic; commit offsets after the ack
      read the whole totals topic -> cluster view = latest snapshot of every partition
                                                                                 (totals.py)
      engine (decisions straight from the CrowdSec LAPI) on the cluster view
      -> findings it owns -> findings topic (findings.py) and JSONL; metrics
                                                         (pipeline/live/aggregator.py)

Why this split: an aggregator owning a few partitions still needs cluster-wide numbers (the
blast radius denominator, the masked-client share of an entrypoint whose internal hops hash to
other partitions, per-file parse statistics). Each partition's owner publishes that partition's
windowed tallies as a replace-only snapshot; everyone merges the latest snapshots, so every
aggregator holds the same cluster-wide view, numerators and denominators alike. Snapshots carry
their events offset, so they double as the restore point of a new owner (no lost or double
counted events across rebalances and crashes), and their epoch fences a deposed owner.

Who raises a finding: every aggregator evaluates every finding on the same view, but only the
owner of ``partition(finding target)`` emits it (for an internal-IP ban that is the partition of
that client's own events). When a partition changes hands the new owner re-announces that
partition's active findings (and recent clears); consumers treat findings by key, idempotently.

Metrics: every aggregator exports the same cluster-wide numbers (lines, requests, findings);
aggregate them with ``max`` across aggregators, not ``sum``. The Kafka counters (consumed,
duplicates dropped) are per aggregator and add up.
"""
