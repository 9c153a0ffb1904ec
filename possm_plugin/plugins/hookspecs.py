"""Hook specifications of the ``possm_plugin`` project.

Every hook collects: it takes a ``register`` callback, which a plugin calls once per thing it
provides, ``register(name, factory, description="...")``. Names are unique per hook across all
installed plugins (a clash is an error naming both plugins); ``description`` is one line shown by
``possm plugins`` (default: the first line of the factory's docstring).

A plugin is a module (or a module-level object) named in the ``possm_plugin`` entry-point group,
whose functions are marked with :data:`possm_plugin.plugins.hookimpl`::

    # my_package/possm_ext.py
    from possm_plugin.plugins import hookimpl

    @hookimpl
    def possm_register_sources(register):
        register("my-source", MySource, description="spikes from my amplifier")

    # my_package's pyproject.toml
    [project.entry-points.possm_plugin]
    my_ext = "my_package.possm_ext"

The project name, the markers and the entry-point group are all ``possm_plugin``. See
docs/plugins.md for the full guide.
"""

from __future__ import annotations

from possm_plugin.plugins.markers import hookspec

__all__ = [
    "possm_register_backbones",
    "possm_register_decoder_nodes",
    "possm_register_sinks",
    "possm_register_sources",
]


@hookspec
def possm_register_backbones(register):
    """Register recurrent backbones.

    Call ``register(name, factory)`` where ``factory(*, d_input, **backbone_kwargs)`` returns a
    :class:`possm_plugin.model.backbones.Backbone` (``initial_state``, ``step``, ``forward``). A model whose
    config says ``backbone: name`` is then built with it, and its checkpoints load wherever the plugin
    is installed.

    Example::

        from possm_plugin.model.backbones import Backbone

        class LSTMBackbone(Backbone):
            def __init__(self, *, d_input, hidden=128): ...

        @hookimpl
        def possm_register_backbones(register):
            register("lstm", LSTMBackbone, description="stacked LSTM")
    """


@hookspec
def possm_register_sources(register):
    """Register spike sources.

    Call ``register(name, factory, description="...")`` where ``factory(**options)`` returns a
    :class:`possm_plugin.realtime.io.SpikeSource` (``connect``/``acquire``/``disconnect``). The options come
    from the command line (``possm-lsl --source NAME --source-opt key=value``: numbers, booleans and
    ``None`` are parsed, anything else stays a string).

    Example::

        @hookimpl
        def possm_register_sources(register):
            register("lsl", LSLSource, description="Lab Streaming Layer inlet")
    """


@hookspec
def possm_register_sinks(register):
    """Register prediction sinks.

    Call ``register(name, factory, description="...")`` where ``factory(**options)`` returns a
    :class:`possm_plugin.realtime.io.PredictionSink` (``connect``/``publish``/``disconnect``); options come
    from ``possm-lsl --sink NAME --sink-opt key=value``.

    Example::

        @hookimpl
        def possm_register_sinks(register):
            register("lsl", LSLSink, description="Lab Streaming Layer outlet")
    """


@hookspec
def possm_register_decoder_nodes(register):
    """Register decoder nodes, what a host instantiates to decode.

    Call ``register(name, factory, description="...")`` where ``factory(**params)`` returns a node
    with:

    - ``inputs`` and ``outputs``: lists of ports, each with the attributes ``name``, ``kind``
      (``"spike_events"``, ``"binned_counts"`` or ``"predictions"``), ``channels`` (labels, in channel
      order) and ``rate`` (Hz; None for an irregular stream), and ``to_dict()``;
    - ``process_events(channels, times, watermark=None)`` and ``process_binned(counts, bin_times)``,
      each returning a list of predictions (objects with ``values``, ``t_start``, ``t_end``);
    - ``reset()``, ``close()`` and ``stats`` (a dict of counters).

    The POSSM node (``"possm"``) is :class:`possm_plugin.plugins.decoder_node.PossmDecoderNode`.

    Example::

        @hookimpl
        def possm_register_decoder_nodes(register):
            register("possm", PossmDecoderNode, description="POSSM streaming decoder")
    """
