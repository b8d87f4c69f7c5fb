"""Result sets: find them in the bucket, bring them to the PC verified, then (and only then) delete them.

  listing.py    what is in the bucket: objects grouped into sets (`classify`), and the plan of a pull
  transfers.py  the transfer engine: parallel ranged downloads checksummed while writing, batched deletes
  extract.py    inflating a result zip safely
  pulling.py    one pull and watch mode; the order of a set's life that keeps results safe
  verifying.py  re-checking pulled sets (bin/verify)

Callers use the names below (`results.pull`, `results.list_sets`, ...).
"""

from lib.results.listing import SETTLE_S, Listing, Obj, Plan, ResultSet, classify, list_sets, make_plan
from lib.results.pulling import PARTIAL, Outcome, Report, pull, watch
from lib.results.transfers import SetFailed, Transfers, check_file
from lib.results.verifying import Verified, verify

__all__ = ["PARTIAL", "SETTLE_S", "Listing", "Obj", "Outcome", "Plan", "Report", "ResultSet", "SetFailed",
           "Transfers", "Verified", "check_file", "classify", "list_sets", "make_plan", "pull", "verify", "watch"]
