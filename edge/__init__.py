"""The cabinet daemon: hardware access, weighing pipeline, door sessions, billing, store."""
