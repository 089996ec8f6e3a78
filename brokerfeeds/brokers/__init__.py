"""One package per broker: ``<broker>/protocol.py`` holds its sans-I/O protocol adapter,
``<broker>/feed.py`` its thin Feed subclass, and ``<broker>/__init__.py`` re-exports both
(IBKR's OAuth 1.0a signing stays the module ``ibkr_oauth.py``)."""
