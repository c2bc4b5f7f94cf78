"""What ``export()`` returns: the summary, and the output read back as Arrow, pandas or DuckDB."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa


@dataclass
class ExportResult:
    """A finished (or partly finished) export in ``out``."""

    out: Path
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return int(self.summary.get("exit_code", 0))

    @property
    def types(self) -> list[str]:
        """Resource types with Parquet output."""
        folder = self.out / "parquet"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def table(self, resource_type: str) -> pa.Table:
        """Every row of ``parquet/<type>/`` as one Arrow table."""
        import pyarrow.dataset as ds

        folder = self.out / "parquet" / resource_type
        if not folder.is_dir():
            raise KeyError(
                f"the export has no {resource_type} output; it has: {', '.join(self.types)}"
            )
        return ds.dataset(folder, format="parquet").to_table()

    def to_pandas(self, resource_type: str) -> pd.DataFrame:
        """``table(type)`` as a pandas DataFrame."""
        return self.table(resource_type).to_pandas()

    def duckdb(self) -> Any:
        """An in-memory DuckDB connection with one view per type (``SELECT * FROM "Patient"``)."""
        import duckdb

        connection = duckdb.connect()
        for resource_type in self.types:
            if not resource_type.isalnum():
                continue  # not a resource type: never spliced into SQL
            pattern = str(self.out / "parquet" / resource_type / "*.parquet").replace("'", "''")
            connection.execute(
                f"CREATE VIEW \"{resource_type}\" AS SELECT * FROM read_parquet('{pattern}', union_by_name = true)"  # noqa: S608 (alphanumeric type, quoted path)
            )
        return connection
