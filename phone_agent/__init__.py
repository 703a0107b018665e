"""phone-agent: a phone voice agent bridging Twilio Media Streams to the Gemini Live API."""

__version__ = "0.1.0"
