"""Everything that turns recorded history into something to read or hand on.

- `render`: query results as an aligned table, CSV or JSON on a stream (the read commands).
- `statement`: the period statement (`build_statement` -> `Statement`) and its table/CSV/JSON.
- `html`: the self-contained HTML report of a statement, with charts (static/: template, uPlot).
"""
