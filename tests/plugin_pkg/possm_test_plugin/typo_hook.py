"""A plugin whose hook name has a typo: check_pending() must reject it, and it alone."""

from possm_plugin.plugins import hookimpl


@hookimpl
def possm_register_source(register):  # missing "s": no such hook
    register("typo-test", object)
