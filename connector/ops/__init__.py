"""Operations every command needs at run time: logging, the metrics and health server, stop
signals, cleanup that keeps the first error, and heap tuning."""
