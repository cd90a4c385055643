"""Loading the ClickHouse migrations: order, statement splitting and checksums (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from undertow.services.warehouse import WarehouseError
from undertow.services.warehouse.migrations import checksum, load_migrations, split_statements

TWO_STATEMENTS = """\
-- A leading comment; with a semicolon at its end;
CREATE TABLE a
(
    x UInt8 -- inline comments stay
)
ENGINE = Memory;

-- between statements
CREATE VIEW b AS
SELECT x
FROM a;
"""


def _write(directory: Path, files: dict[str, str]) -> Path:
    """Migration files in ``directory``, which is returned."""
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def test_files_load_in_version_order(tmp_path: Path) -> None:
    directory = _write(
        tmp_path,
        {
            "010_ten.sql": "SELECT 10;",
            "002_two.sql": "SELECT 2;",
            "001_one.sql": TWO_STATEMENTS,
            "README.md": "not a migration",
        },
    )
    migrations = load_migrations(directory)
    assert [(m.version, m.name) for m in migrations] == [(1, "one"), (2, "two"), (10, "ten")]
    assert migrations[0].sql == TWO_STATEMENTS


def test_statements_split_on_a_semicolon_at_line_end() -> None:
    assert split_statements(TWO_STATEMENTS) == [
        "CREATE TABLE a\n(\n    x UInt8 -- inline comments stay\n)\nENGINE = Memory",
        "CREATE VIEW b AS\nSELECT x\nFROM a",
    ]
    assert split_statements("SELECT 1") == ["SELECT 1"]  # a last statement may omit the ;
    assert split_statements("-- only a comment;\n\n") == []


def test_checksum_is_stable_and_ignores_comments_and_blank_lines() -> None:
    assert checksum(TWO_STATEMENTS) == checksum(TWO_STATEMENTS)
    reworded = TWO_STATEMENTS.replace("-- between statements", "-- reworded\n\n")
    assert checksum(reworded) == checksum(TWO_STATEMENTS)
    assert checksum(TWO_STATEMENTS.replace("UInt8", "UInt16")) != checksum(TWO_STATEMENTS)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"one.sql": "SELECT 1;"}, "named like"),
        ({"001_a.sql": "SELECT 1;", "1_b.sql": "SELECT 2;"}, "two migrations have version 1"),
    ],
)
def test_bad_names_and_duplicate_versions_are_refused(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    with pytest.raises(WarehouseError, match=message):
        load_migrations(_write(tmp_path, files))


def test_shipped_migrations_are_numbered_from_one_without_gaps() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert len(migrations) >= 9
    for migration in migrations:
        assert migration.statements, migration.name
        for statement in migration.statements:
            assert "undertow." not in statement, "tables are unqualified: the runner picks the db"
