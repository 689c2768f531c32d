"""One campaign's figures and the table that `make reliability` prints of them all."""

from dataclasses import dataclass, field


@dataclass
class CampaignResult:
    """What one campaign did and found: `violations` are the broken invariants, in words."""

    name: str
    operations: int = 0
    faults: int = 0
    violations: list[str] = field(default_factory=list)
    # Figures beyond the table's columns (latencies, RSS, ...), printed under it.
    notes: list[str] = field(default_factory=list)


def render_table(results: list[CampaignResult]) -> str:
    """The campaign table, fixed-width, then each campaign's notes and violations."""
    header = ("campaign", "operations", "faults injected", "invariant violations")
    rows = [(r.name, str(r.operations), str(r.faults), str(len(r.violations))) for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, tuple("-" * w for w in widths), *rows]
    ]
    for result in results:
        lines += [f"{result.name}: {note}" for note in result.notes]
        lines += [f"{result.name}: VIOLATION {text}" for text in result.violations]
    return "\n".join(lines)
