"""Operations: logging, metrics and health serving, and the local development broker."""
