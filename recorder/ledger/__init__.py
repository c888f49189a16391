"""The income ledger: archive Binance's income history, reconcile it, backfill the past."""
