"""The real recordings bundled with possm-plugin (see README.md here and
:func:`possm_plugin.data.importers.bundled_sessions`)."""
