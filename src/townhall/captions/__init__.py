"""Live captions: voice activity, speech recognition and translation for each speaker.

``pipeline`` is the contract with the captions worker (``Engine``, ``SpeakerPipeline``,
``Caption``); ``audio`` turns decoded frames into the engine's PCM. See docs/captions.md.
"""
