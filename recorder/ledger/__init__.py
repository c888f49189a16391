"""The income ledger: archive Binance's income entries, reconcile them against the balance states,
backfill the past from them, import the files users download, export them for tax tools.

    types       the income types we know and the roll-forward group of each
    sync        GET /fapi/v1/income into income_entries, window by window, with its log (ledger_syncs)
    reconcile   per asset, each change of the wallet balance against the entries in between
    backfill    the wallet balance before the first observation, derived from the entries
    imports     Binance's downloaded transaction-history files into the archive
    taxformats  the ledger as Koinly, CoinTracking and Binance's own futures CSV
"""
