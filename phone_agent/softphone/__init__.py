"""Talk to your agent from a browser: a softphone page that speaks Twilio's Media Streams protocol.

`softphone_routes(settings, state)` gives the routes (none unless `PHONE_AGENT_SOFTPHONE_SECRET`
is set); `SoftphoneObserver` is the call observer that feeds the page's transcript and latency
(see `feed`). The page itself is plain JavaScript in `static/`: the microphone is resampled to
8 kHz and mu-law encoded in an AudioWorklet, 20 ms a frame, and the agent's audio is decoded and
played by another, which echoes each mark once the audio before it has played.
"""

from phone_agent.softphone.feed import SoftphoneFeed, SoftphoneObserver, softphone_feed
from phone_agent.softphone.routes import softphone_routes

__all__ = ["SoftphoneFeed", "SoftphoneObserver", "softphone_feed", "softphone_routes"]
