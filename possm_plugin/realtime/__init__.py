"""Real-time decoding: the streaming decoder, its runner, sources/sinks contracts, calibration, the demo."""
