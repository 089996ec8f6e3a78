"""One module per broker: its sans-I/O protocol adapter and its thin Feed subclass."""
