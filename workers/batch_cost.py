"""t(B, W, context): what one batched verification forward of B rows padded to width W costs.

A start-up calibration measures the *shape* t(B, W) at one context length for row counts 1, 2, 4, ...
and a ladder of widths. Online, every forward's time is compared with that shape at its (B, W), and the
ratio (an exponential moving average per context band and row count) scales the whole curve. One
measured width thus moves the level of every width, never the shape: a table filled from single online
points goes flat (every width costs the same), and a batch then verifies the widest trees it holds,
which on a CPU at 16 rows cost 5-8x a root-only step.
"""

from __future__ import annotations

from workers.cost_model import VerifyCost, interpolate


class BatchCost:
    def __init__(self, max_width: int, smoothing: float = 0.2) -> None:
        self.max_width = max_width
        self.smoothing = smoothing
        self.shape: dict[int, dict[int, float]] = {}  # rows -> {width: seconds} at the calibration context
        self.ratios: dict[tuple[int, int], float] = {}  # (context band, rows) -> measured / shape
        self.is_calibrated = False
        self._curves: dict[int, list[float]] = {}  # rows -> shape_curve(rows), until the shape changes

    @property
    def is_known(self) -> bool:
        return bool(self.shape)

    def calibrate(self, rows: int, width: int, seconds: float) -> None:
        """One point of the shape (start-up measurements at one context length)."""
        self.shape.setdefault(rows, {})[width] = seconds
        self.is_calibrated = True
        self._curves.clear()

    def observe(self, rows: int, width: int, context: int, seconds: float) -> None:
        """A measured forward: it moves the level of its (context band, rows) curve."""
        if not self.is_calibrated:  # nothing calibrated: the measurements are the shape
            cells = self.shape.setdefault(rows, {})
            old = cells.get(width)
            cells[width] = seconds if old is None else old + self.smoothing * (seconds - old)
            self._curves.clear()
            return
        predicted = self.shape_curve(rows)[width - 1]
        if predicted <= 0:
            return
        key = (VerifyCost.band(context), rows)
        ratio = seconds / predicted
        old = self.ratios.get(key)
        self.ratios[key] = ratio if old is None else old + self.smoothing * (ratio - old)

    def table(self, rows: int, context: int) -> list[float]:
        """[t(rows, 1), ..., t(rows, max_width)] in seconds at this context length."""
        if not self.shape:
            return [1.0] * self.max_width
        ratio = self._ratio(rows, VerifyCost.band(context))
        return [t * ratio for t in self.shape_curve(rows)]

    def shape_curve(self, rows: int) -> list[float]:
        """The calibrated t(rows, W) for W = 1 .. max_width: linear in W between measured widths, and in
        rows between the two nearest measured row counts (extended linearly past the largest)."""
        if rows not in self._curves:
            self._curves[rows] = self._shape_curve(rows)
        return self._curves[rows]

    def _shape_curve(self, rows: int) -> list[float]:
        curves = {r: interpolate(points, self.max_width)[1:] for r, points in self.shape.items()}
        if rows in curves:
            return curves[rows]
        below = sorted(r for r in curves if r < rows)
        above = sorted(r for r in curves if r > rows)
        if below and above:
            r0, r1 = below[-1], above[0]
        elif len(below) >= 2:
            r0, r1 = below[-2:]
        else:
            return curves[min(curves, key=lambda r: abs(r - rows))]
        weight = (rows - r0) / (r1 - r0)
        return [max(a + weight * (b - a), 0.0) for a, b in zip(curves[r0], curves[r1], strict=True)]

    def _ratio(self, rows: int, band: int) -> float:
        """The measured level for (band, rows): this band's nearest row count, else the nearest band's."""
        if not self.ratios:
            return 1.0
        bands = {b for b, _ in self.ratios}
        nearest_band = min(bands, key=lambda b: (abs(b - band), -b))
        row_counts = [r for b, r in self.ratios if b == nearest_band]
        nearest_rows = min(row_counts, key=lambda r: (abs(r - rows), -r))
        return self.ratios[(nearest_band, nearest_rows)]
