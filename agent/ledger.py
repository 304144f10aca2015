"""What the agent has sealed and sent: record hashes, sequences, patient keys and the outbox."""
