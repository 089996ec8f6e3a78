"""One module per broker: its sans-I/O protocol adapter and its thin Feed subclass (Clear
Street's is a package, the two in ``clearstreet/protocol.py`` and ``clearstreet/feed.py``)."""
