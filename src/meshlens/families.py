"""Metric families that keep each series as its label values and numbers, and
write their own exposition text.

prometheus_client's families make a Sample, with a dict of every label, for
every number they hold: one series of istio_request_duration_milliseconds is
22 Samples (20 buckets, count, sum) of ~25 labels each, on every scrape.
These keep one tuple of label values per series; the renderer
(exposition.Renderer) formats each distinct tuple once and keeps the text.
They are prometheus_client Metrics all the same: `samples` gives the Samples
prometheus_client's own families would hold, for its registry and its
exposition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

Values = tuple[str, ...]
Buckets = Sequence[tuple[str, float]]
T = TypeVar("T")


class LabelText:
    """Each label set's text, made once per (label names, values) and kept."""

    def __init__(self) -> None:
        # names -> values -> text: names are one tuple per family, so a lookup
        # hashes the values only
        self._whole: dict[Values, dict[Values, str]] = {}
        self._around: dict[Values, dict[Values, tuple[str, str]]] = {}
        self.size = 0

    def whole(self, names: Values, values: Values) -> str:
        """'{a="x",b="y"}' (names sorted, as prometheus_client writes them), or ''."""
        try:
            return self._whole[names][values]
        except KeyError:
            return self._make(self._whole, names, values, _whole)

    def around(self, names: Values, values: Values) -> tuple[str, str]:
        """The text before and after label le in a set that also holds it:
        '{' + before + 'le="…"' + after + '}'."""
        try:
            return self._around[names][values]
        except KeyError:
            return self._make(self._around, names, values, _around_le)

    def _make(
        self,
        table: dict[Values, dict[Values, T]],
        names: Values,
        values: Values,
        make: Callable[[list[str], list[str]], T],
    ) -> T:
        items = sorted(zip(names, values, strict=False))
        pairs = [f'{k}="{escape_value(str(v))}"' for k, v in items]
        text = table.setdefault(names, {})[values] = make([k for k, _ in items], pairs)
        self.size += 1
        return text

    def clear(self) -> None:
        self._whole.clear()
        self._around.clear()
        self.size = 0


def _whole(keys: list[str], pairs: list[str]) -> str:
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _around_le(keys: list[str], pairs: list[str]) -> tuple[str, str]:
    i = sum(1 for k in keys if k < "le")  # where le sorts among the keys
    before = ",".join(pairs[:i]) + ("," if i else "")
    after = ("," if i < len(pairs) else "") + ",".join(pairs[i:])
    return before, after


def escape_value(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


Formatter = Callable[[Any], str]


class Family(Metric):
    """A family whose series are rows: (label values, numbers...)."""

    def __init__(self, name: str, documentation: str, typ: str, labels: Sequence[str]) -> None:
        self.rows: list[tuple[Any, ...]] = []
        super().__init__(name, documentation, typ)
        self.labelnames: Values = tuple(labels)

    # prometheus_client's Metric assigns an empty list to `samples`; ours are
    # made from the rows when asked for
    @property
    def samples(self) -> list[Sample]:
        return self._samples()

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        if value:
            raise TypeError(f"{self.name}: add series with add_metric()")

    def _labels(self, values: Values) -> dict[str, str]:
        return dict(zip(self.labelnames, values, strict=False))

    def _samples(self) -> list[Sample]:
        raise NotImplementedError

    def write(self, out: list[str], text: LabelText, fmt: Formatter) -> int:
        """Append this family's sample lines to out; returns how many."""
        raise NotImplementedError


class CounterFamily(Family):
    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        # prometheus_client's convention: the family is named without _total
        super().__init__(name.removesuffix("_total"), documentation, "counter", labels)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.rows.append((tuple(labels), value))

    def _samples(self) -> list[Sample]:
        return [Sample(self.name + "_total", self._labels(v), n) for v, n in self.rows]

    def write(self, out: list[str], text: LabelText, fmt: Formatter) -> int:
        head, names = self.name + "_total", self.labelnames
        for values, n in self.rows:
            out.append(f"{head}{text.whole(names, values)} {fmt(n)}\n")
        return len(self.rows)


class GaugeFamily(Family):
    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, "gauge", labels)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.rows.append((tuple(labels), value))

    def _samples(self) -> list[Sample]:
        return [Sample(self.name, self._labels(v), n) for v, n in self.rows]

    def write(self, out: list[str], text: LabelText, fmt: Formatter) -> int:
        head, names = self.name, self.labelnames
        for values, n in self.rows:
            out.append(f"{head}{text.whole(names, values)} {fmt(n)}\n")
        return len(self.rows)


class HistogramFamily(Family):
    """Buckets are (le text, cumulative count) pairs ending with +Inf; _count and
    _sum are written when sum_value is given and no bound is negative (as
    prometheus_client does)."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, "histogram", labels)

    def add_metric(self, labels: Sequence[str], buckets: Buckets, sum_value: float | None) -> None:
        self.rows.append((tuple(labels), buckets, sum_value))

    @staticmethod
    def _totals(buckets: Buckets, sum_value: float | None) -> bool:
        return sum_value is not None and float(buckets[0][0]) >= 0

    def _samples(self) -> list[Sample]:
        out = []
        for values, buckets, sum_value in self.rows:
            labels = self._labels(values)
            for le, n in buckets:
                out.append(Sample(self.name + "_bucket", {**labels, "le": le}, n))
            if self._totals(buckets, sum_value):
                out.append(Sample(self.name + "_count", dict(labels), buckets[-1][1]))
                out.append(Sample(self.name + "_sum", dict(labels), sum_value))
        return out

    def write(self, out: list[str], text: LabelText, fmt: Formatter) -> int:
        name, names = self.name, self.labelnames
        bucket, written = name + "_bucket{", 0
        for values, buckets, sum_value in self.rows:
            before, after = text.around(names, values)
            for le, n in buckets:
                out.append(f'{bucket}{before}le="{le}"{after}}} {fmt(n)}\n')
            written += len(buckets)
            if self._totals(buckets, sum_value):
                labels = text.whole(names, values)
                out.append(f"{name}_count{labels} {fmt(buckets[-1][1])}\n")
                out.append(f"{name}_sum{labels} {fmt(sum_value)}\n")
                written += 2
        return written
