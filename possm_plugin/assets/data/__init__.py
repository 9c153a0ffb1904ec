"""The real recordings bundled with possm-plugin (see README.md here and
:func:`possm_plugin.importers.bundled_sessions`)."""
