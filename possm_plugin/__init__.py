"""possm-plugin: real-time neural decoding with POSSM."""
