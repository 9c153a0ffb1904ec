"""Sessions on disk: the session format, its identity, training windows, and importers of other formats."""
