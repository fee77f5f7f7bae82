"""The stack's ports are kept out of the kernel's ephemeral ports (ip_local_reserved_ports)."""

from pathlib import Path

from infra.reserved_ports import format_ranges, parse_ranges, reserve_ports


def test_the_kernels_format_both_ways():
    assert parse_ranges("58073,59092-59094\n") == {58073, 59092, 59093, 59094}
    assert parse_ranges("\n") == set()
    assert format_ranges([59094, 58073, 59092, 59093]) == "58073,59092-59094"


def test_reserving_adds_to_what_is_reserved_and_never_removes(tmp_path: Path):
    path = tmp_path / "ip_local_reserved_ports"
    path.write_text("8080,9000-9001\n")
    assert reserve_ports([59092, 59093, 8080, 0], path)
    assert path.read_text() == "8080,9000-9001,59092-59093\n"


def test_without_the_file_or_the_right_to_write_it_nothing_fails(tmp_path: Path):
    assert reserve_ports([59092], tmp_path / "missing") is False
