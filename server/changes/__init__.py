"""The change engine: the outbox tail and sequencer, and the consumers fed by it."""
