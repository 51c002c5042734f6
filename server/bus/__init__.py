"""The message bus: the outbox relay to NATS JetStream and the inbox consuming from it.

* connection.py: settings → a nats-py connection; the streams this service owns;
* embedded_nats.py: the nats-server `serve` starts when PLATFORM_ADMIN_NATS_URL is unset;
* wakeup.py: the one coupling to the change engine (what wakes the relay);
* relay.py: sequenced outbox rows → JetStream, in seq order, one leader at a time;
* publisher.py: pipelined JetStream publishes with a future per PubAck or error;
* inbox.py: JetStream → this service (tenant deletions, heartbeats), once per message;
* bus.py: runs the three for one process and reports the connection's health.
"""
