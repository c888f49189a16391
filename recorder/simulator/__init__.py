"""The built-in Binance-compatible exchange for the demo and the tests; exchange.py holds all of it for now."""

from __future__ import annotations

from .exchange import FAULTS, ExchangeSimulator, RequestRecord, ServedSnapshot

__all__ = ["FAULTS", "ExchangeSimulator", "RequestRecord", "ServedSnapshot"]
