"""A test plugin for possm-plugin (see the README)."""
