"""The users example service (demo.v1.Users): an in-memory user directory."""
