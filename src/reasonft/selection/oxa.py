"""OXA's full data recipe (METHODS.md §1a + §1b): promoted teacher data (ce) + suppressed self data (ul)."""

from __future__ import annotations

import logging
from typing import Any

import datasets

from reasonft.selection.base import EmptySelection, Selection, check_required_columns
from reasonft.selection.confident_incorrect import ConfidentIncorrectSelector
from reasonft.selection.gaussian import PPLGaussianSelector

log = logging.getLogger(__name__)


class OXASelector:
    """One selected set: `promote` (Gaussian PPL, loss ce) followed by `suppress` (confident incorrect, ul).

    Both parts read the same pool; each is configured by its own nested config (Hydra builds them
    first and hands the instances over). The report holds both parts' reports.
    """

    name = "oxa"

    def __init__(
        self,
        promote: PPLGaussianSelector | dict[str, Any],
        suppress: ConfidentIncorrectSelector | dict[str, Any],
    ) -> None:
        self.promote = (
            promote if isinstance(promote, PPLGaussianSelector) else PPLGaussianSelector(**promote)
        )
        self.suppress = (
            suppress
            if isinstance(suppress, ConfidentIncorrectSelector)
            else ConfidentIncorrectSelector(**suppress)
        )

    @property
    def loss_types(self) -> tuple[str, ...]:
        """The record kinds its selection yields: promote's, then suppress's."""
        return tuple(dict.fromkeys([*self.promote.loss_types, *self.suppress.loss_types]))

    @property
    def requires(self) -> frozenset[str]:
        """What both parts read (ppl and correct with the official settings)."""
        return self.promote.requires | self.suppress.requires

    @property
    def reads_self_samples(self) -> bool:
        return self.promote.reads_self_samples or self.suppress.reads_self_samples

    def __call__(self, ds: datasets.Dataset) -> Selection:
        check_required_columns(ds, self.requires, self.name)
        # One empty part is reported and warned about; only an empty whole stops the run.
        promoted, suppressed = self._part(self.promote, ds), self._part(self.suppress, ds)
        records = datasets.concatenate_datasets([promoted.records, suppressed.records])
        report = {
            "selector": self.name,
            "n_pool": len(ds),
            "n_selected": len(records),
            "n_by_loss_type": {"ce": len(promoted.records), "ul": len(suppressed.records)},
            "shortfall": promoted.report.get("shortfall", 0)
            + suppressed.report.get("shortfall", 0),
            "promote": promoted.report,
            "suppress": suppressed.report,
        }
        empty = [name for name, part in (("promote", promoted), ("suppress", suppressed)) if not len(part.records)]
        if empty:
            report["empty_parts"] = empty
        selection = Selection(records=records, report=report)
        if len(records) == 0:
            raise EmptySelection(selection)
        for name in empty:
            log.warning("select=oxa: the %s part selected no record (%s)", name, report[name].get("skipped"))
        return selection

    @staticmethod
    def _part(selector: Any, ds: datasets.Dataset) -> Selection:
        try:
            return selector(ds)
        except EmptySelection as empty:
            return empty.selection
