"""Result sets: find them in the bucket, bring them to the PC verified, then (and only then) delete them.

  listing.py    what is in the bucket: objects grouped into sets (`classify`), and the plan of a pull
  transfers.py  the transfer engine: parallel ranged downloads checksummed while writing, batched deletes
  extract.py    inflating a result zip safely (size, ratio and disk-space limits)
  oneset.py     pulling one set: the order of a set's life that keeps results safe
  pulling.py    one pull (every set) and watch mode
  verifying.py  re-checking pulled sets (bin/verify)

Callers use the names below (`results.pull`, `results.list_sets`, ...).
"""

from lib.results.listing import SETTLE_S, Listing, Obj, Plan, ResultSet, classify, decide, list_sets, make_plan
from lib.results.oneset import PARTIAL, Outcome
from lib.results.pulling import Report, folder_for, pull, watch
from lib.results.transfers import SetFailed, Transfers, check_file
from lib.results.verifying import Verified, verify

__all__ = ["PARTIAL", "SETTLE_S", "Listing", "Obj", "Outcome", "Plan", "Report", "ResultSet", "SetFailed",
           "Transfers", "Verified", "check_file", "classify", "decide", "folder_for", "list_sets", "make_plan", "pull", "verify", "watch"]
