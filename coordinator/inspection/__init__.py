"""What a running coordinator shows about itself: snapshots, inspection files, HTTP.

After every completed round (and whenever the agent count changes) the engine thread
publishes an immutable `Snapshot`: the run's progress plus the strategy's `inspect()`
matrices (KT-pFL's knowledge coefficients c). Two observers take it:

- `InspectionWriter` writes each round's matrices to `<out>/inspect/<name>_round_<NNN>.csv`
  (a header row of column labels, then one row per label) and redraws
  `<out>/<name>_heatmap.png` for the latest round, on a thread of its own so the engine
  never waits for matplotlib;
- `Board` keeps the latest snapshot for `InspectServer`, a read-only HTTP endpoint
  (stdlib http.server on a daemon thread) that reads nothing but snapshots:

  GET /status              run id, algorithm, last completed round, agents (JSON)
  GET /inspect             names of the matrices and the round they belong to
  GET /inspect/<name>      one matrix with its row and column labels (JSON)
  GET /inspect/<name>.png  its heatmap

Routes are a table of path -> function(snapshot) -> response, so another view (a
Prometheus /metrics) is one more entry. Modules: `snapshot` (Snapshot, Board), `files`
(InspectionWriter, CSV and PNG), `server` (InspectServer).
"""

from coordinator.inspection.files import (
    INSPECT_DIR,
    InspectionWriter,
    csv_path,
    heatmap_path,
    heatmap_png,
    read_csv,
    to_csv,
)
from coordinator.inspection.server import InspectServer, matrix_json
from coordinator.inspection.snapshot import NAME_PATTERN, Board, Snapshot

__all__ = [
    "INSPECT_DIR",
    "NAME_PATTERN",
    "Board",
    "InspectServer",
    "InspectionWriter",
    "Snapshot",
    "csv_path",
    "heatmap_path",
    "heatmap_png",
    "matrix_json",
    "read_csv",
    "to_csv",
]
