"""Where the top consumer applies changes: one small interface, SQL and HTTP implementations."""
