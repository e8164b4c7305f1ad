"""What the example services share: instance identity, typed errors and the server lifecycle."""
