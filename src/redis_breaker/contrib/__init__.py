"""Optional glue for third-party packages (imported only by those who use them)."""
