"""Exact balance history of Binance USD-M futures accounts."""
