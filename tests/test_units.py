import pytest

from warden.units import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("64M", 64 << 20),
        ("1.5G", 3 << 29),
        ("512k", 512 << 10),
        ("2GiB", 2 << 30),
        ("100", 100),
        (4096, 4096),
    ],
)
def test_parse(text: str | int, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["64X", "", "M", "-1M", "1.2.3G"])
def test_parse_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(bad)


def test_format() -> None:
    assert format_size(128 << 20) == "128M"
    assert format_size(1536 << 20) == "1.5G"
    assert format_size(10) == "10B"
