"""A plugin that fails on import, as a plugin with a missing dependency would."""

raise RuntimeError("possm-test-plugin: broken_import fails on import on purpose")
