"""A plugin that imports fine but whose hook raises while registering."""

from possm_plugin.plugins import hookimpl


@hookimpl
def possm_register_sinks(register):
    raise RuntimeError("possm-test-plugin: broken_hook raises in possm_register_sinks on purpose")
