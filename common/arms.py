"""The arms of the fair trial (results/README.md "A fair trial"): what each trains with and what its search
tunes, and which arm a results row belongs to. Used by the search (common/search.py) and the trial's tables
(common/comparisons.py)."""
from __future__ import annotations

from .config import cell

# Each arm: (the loss it trains, the settings it fixes, the settings its search tunes: names of search.RANGES).
# Normalised softmax is ArcFace without a margin (m2 = 0): cosine logits times s, the control that tells the
# margin from the normalisation and scale.
ARMS = {"softmax": ("softmax", {}, ("lr", "label_smoothing")),
        "normsoftmax": ("arcface", {"m2": 0.0}, ("lr", "s")),
        "arcface": ("arcface", {}, ("lr", "s", "m2")),
        "cosface": ("cosface", {}, ("lr", "s", "m3")),
        "triplet": ("triplet", {"triplet_mining": "semihard"}, ("lr",))}
# Triplet mines semi-hard negatives: with batch-hard mining its first trial (lr 0.134) collapsed to one point
# (results/README.md "A fair trial", step 4). The fair trial's step 1 arms (what `python -m common.search`
# draws): every arm but triplet, searched on its own (`--arms triplet --trials 4`) as it trains on
# class-balanced batches.
TRIAL_ARMS = tuple(arm for arm, (loss, _, _) in ARMS.items() if loss != "triplet")


def arm_of(row: dict) -> str | None:
    """The arm a results row belongs to: the first of ARMS whose loss it trained with its fixed settings
    (normalised softmax, ArcFace with m2 = 0, comes before ArcFace); None for others."""
    for arm, (loss, fixed, _) in ARMS.items():
        if row.get("loss") == loss and all(cell(row.get(k)) == cell(v) for k, v in fixed.items()):
            return arm
    return None
