"""Colours, markers and sizes of the report (Okabe–Ito: safe for colour-blind readers)."""

COLORS = {
    "detection": "#E69F00",  # orange
    "tp": "#56B4E9",  # sky blue
    "fp": "#D55E00",  # vermillion
    "fn": "#F0E442",  # yellow
    "pair": "#FFFFFF",
}
MARKERS = {"detection": "o", "tp": "o", "fp": "s", "fn": "^"}
LABELS = {
    "detection": "detection",
    "tp": "true positive (detection matched)",
    "fp": "false positive (detection, no match)",
    "fn": "miss (ground truth, no detection)",
}
#: track colours (Okabe–Ito, cycled)
TRACK_COLORS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#FFFFFF"]
#: at most this many frame rows in the HTML table (all frames are in summary.json)
MAX_TABLE_ROWS = 200
DPI = 110
