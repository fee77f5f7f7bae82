import orjson

from loadtest import charts

PNG = b"\x89PNG\r\n\x1a\n"


def run(name: str) -> dict:
    return {
        "name": name,
        "rate": 100,
        "duration_s": 3,
        "probes": [(0.1, 40.0), (1.1, 55.0), (2.1, 120.0), (2.9, 45.0)],
        "throughput": [(0.0, 0, 0), (1.0, 90, 100), (2.0, 190, 200), (4.0, 390, 400)],
    }


def test_rates_are_per_second_between_samples_at_the_middle():
    assert charts.rates(run("a")["throughput"]) == [(0.5, 90.0, 100.0), (1.5, 100.0, 100.0), (3.0, 100.0, 100.0)]
    assert charts.rates([(1.0, 5, 5)]) == []


def test_cdf_is_sorted_with_the_share_at_or_below():
    assert charts.cdf([30.0, 10.0, 20.0, 40.0]) == ([10.0, 20.0, 30.0, 40.0], [0.25, 0.5, 0.75, 1.0])


def test_draw_writes_a_timeline_per_run_and_one_cdf_as_png(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    for name in ("one", "two"):
        (series / f"{name}.json").write_bytes(orjson.dumps(run(name)))
    written = charts.draw(series, tmp_path / "img")
    assert [p.name for p in written] == ["one-timeline.png", "two-timeline.png", "latency-cdf.png"]
    for path in written:
        assert path.read_bytes()[:8] == PNG
    # 9 x 6 inches at 100 dpi: the PNG header's width and height.
    header = written[0].read_bytes()[16:24]
    assert (int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")) == (900, 600)


def test_no_series_is_an_error_not_an_empty_chart(tmp_path, capsys):
    assert charts.main(["--series", str(tmp_path), "--out", str(tmp_path / "img")]) == 1
    assert "run `make bench-pipeline` first" in capsys.readouterr().err
