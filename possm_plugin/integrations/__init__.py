"""Thin layers that run POSSM inside host frameworks. Each wraps
:class:`possm_plugin.plugins.decoder_node.PossmDecoderNode` (itself a thin layer over the
:class:`~possm_plugin.realtime.streaming.StreamingDecoder`) and imports its framework only when imported:

- :mod:`possm_plugin.integrations.ezmsg`: ``PossmDecoderUnit``, an ezmsg transformer unit taking
  spike events or binned counts (e.g. from ezmsg-lsl's ``LSLInletUnit``) and publishing predictions;
- :mod:`possm_plugin.integrations.timeflux`: ``PossmDecoder``, a Timeflux node for YAML graphs.

Install the frameworks with ``pip install possm-plugin[ezmsg]``; for Timeflux,
``pip install --no-deps timeflux==0.17.2`` then ``pip install possm-plugin[timeflux]`` (docs/plugins.md).
"""

__all__: list[str] = []
