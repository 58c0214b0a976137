"""``honestface bench-honesty``: the honesty report's cost over the restore (tiny model here: wiring only; the
measured ratios at 512 px are in docs/honesty.md)."""

from __future__ import annotations

import json

from honestface_core.cli.main import main


def test_bench_honesty_writes_its_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench-honesty", "--size", "tiny", "--faces", "1", "--identity", "sface", "--repeats", "1",
                 "--warmup", "0", "--device", "cpu", "--json", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    assert run["encoder"] == "sface" and run["faces"] == 1 and report["landmarks"] == "dlib68"
    assert run["restore_crops"] > 0 and run["report"] > 0 and run["ratio"] == run["report"] / run["restore_crops"]
    assert set(run["parts"]) == {"consistency", "identity (3 crops per face)", "landmarks (2 crops per face)"}
    assert "report / restore" in printed.out and report["load_average"]["start"] is not None
    # a second run refuses to overwrite the JSON before any work
    assert main(["bench-honesty", "--size", "tiny", "--faces", "1", "--json", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_bench_honesty_refuses_bad_options(capsys):
    for args, name in ((["--faces", "0"], "--faces"), (["--identity", "vgg"], "--identity"), (["--threads", "-1"], "--threads")):
        assert main(["bench-honesty", "--size", "tiny", *args]) == 2
        assert name in capsys.readouterr().err
