"""The claims a reproduction checks, in report order, and what is computed over all of them.

To add a claim: write a module with a :class:`.common.Section` named ``SECTION`` (see :mod:`.speed` for a
short one) and add it to :data:`SECTIONS`. The run, ``summary.json``, the plots, the report and its claims
table pick it up from here.
"""

from __future__ import annotations

from pathlib import Path

from . import ablations, datafree, finetune, preservation, repair_report, speed
from .common import Section
from .settings import TIE

__all__ = ["SECTIONS", "make_plots", "summarise"]

#: Sections in run and report order; a section may use what an earlier one left in the model context
#: (output preservation reads the data-free section's per-sample distances).
SECTIONS: list[Section] = [datafree.SECTION, preservation.SECTION, ablations.SECTION, finetune.SECTION,
                           speed.SECTION, repair_report.SECTION]


def summarise(tables: dict[str, list[dict]], infos: list[dict]) -> dict:
    """Every section's findings (wins/losses, gains, distances, fine-tuning, speed) and the paper's claims."""
    out: dict = {"tie_threshold": TIE}
    for section in SECTIONS:
        out.update(section.findings(tables, infos))
    out["claims"] = [c for section in SECTIONS for c in section.claims(out, tables, infos)]
    return out


def make_plots(out: Path, tables: dict[str, list[dict]], infos: list[dict]) -> list[str]:
    """Draw every PNG of a run into ``out``; returns their file names."""
    return [name for section in SECTIONS for name in section.plots(out, tables, infos)]
