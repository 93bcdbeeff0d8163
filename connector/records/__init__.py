"""What crosses Kafka: the status record type, its Avro schemas, and the codec."""
