"""Local simulators of each broker, for examples, the demo and tests (yours and ours).

They are real WebSocket (and REST) servers on 127.0.0.1, started on background
threads, scriptable from synchronous code and able to inject faults. They need the
``sim`` extra: ``pip install 'brokerfeeds[sim]'``.
"""

from ._server import SimulatorBase
from .clearstreet import ClearStreetSimulator
from .firstock import FirstockSimulator
from .ibkr import IbkrSimulator
from .upstox import UpstoxSimulator

__all__ = ["SimulatorBase", "IbkrSimulator", "UpstoxSimulator", "FirstockSimulator",
           "ClearStreetSimulator"]
