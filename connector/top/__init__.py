"""The top side: the consumer group loop (batches, coalescing, commits) and its rate limiter."""
