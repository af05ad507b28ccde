"""The core every wing shares: errors, the command-line runner, preprocessing, decoding, the model
and its config, the PyPI backbones, progress and file walking."""
