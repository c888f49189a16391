"""Everything that turns recorded history into something to read or hand on.

- `render`: query results as an aligned table, CSV or JSON on a stream (the read commands).
"""
