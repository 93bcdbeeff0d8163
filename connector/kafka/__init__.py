"""Thin wrappers that own confluent-kafka: topics (admin), producer, consumer.

Code outside this package speaks in our records and never configures librdkafka itself.
"""
