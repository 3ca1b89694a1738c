"""The report escapes model text; the plots are written as PNG files."""

from posttrain.evaluation.frontier import plot_frontier, plot_overoptimization
from posttrain.evaluation.report import Report, Samples, Table, fmt, write_report

EVIL = '<script>alert("x")</script> | a & b'


def test_report_escapes_model_text(tmp_path):
    rep = Report(
        title="t <b>",
        paragraphs=["p & q"],
        tables=[Table("metrics", ["system", "gold"], [["ppo", 0.51234], ["ref", (0.1, 0.2)]])],
        images=[("frontier", "frontier.png")],
        samples=[
            Samples("samples", ["reference", "policy"], [(EVIL, [(EVIL, 0.5), ("ok", None)])])
        ],
    )
    md, page = write_report(rep, tmp_path)
    text = page.read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text and "a &amp; b" in text
    assert '<img src="frontier.png"' in text and "0.512" in text and "[0.100, 0.200]" in text
    mdt = md.read_text()
    assert "<script>" not in mdt and "\\|" in mdt and "![frontier](frontier.png)" in mdt
    # every markdown table row has the same number of unescaped cell separators
    rows = [line for line in mdt.splitlines() if line.startswith("| ") and EVIL[:5] not in line]
    assert rows


def test_fmt():
    assert fmt(None) == "–" and fmt(float("nan")) == "–" and fmt(3) == "3"
    assert fmt(0.12345) == "0.123" and fmt((0.1, 0.25)) == "[0.100, 0.250]"


def _points():
    pts = [{"run": "reference", "step": 0, "kl": 0.0, "gold_reward": 0.0, "proxy_reward": 0.0}]
    for s in range(1, 4):
        pts.append(
            {
                "run": "ppo",
                "step": s,
                "kl": s * 1.0,
                "kl_se": 0.1,
                "gold_reward": 0.2 * s,
                "gold_reward_se": 0.05,
                "proxy_reward": 0.5 * s,
            }
        )
    return pts


def test_plots_are_png(tmp_path):
    f = plot_frontier(_points(), tmp_path / "f.png")
    o = plot_overoptimization(_points(), tmp_path / "o.png")
    for path in (f, o):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overoptimization_needs_proxy_scores(tmp_path):
    pts = [dict(p, proxy_reward=None) for p in _points()]
    assert plot_overoptimization(pts, tmp_path / "o.png") is None
    assert not (tmp_path / "o.png").exists()


def test_control_characters_are_made_visible(tmp_path):
    rep = Report(title="t", samples=[Samples("s", ["policy"], [("p", [("a\x06b\x7f", None)])])])
    md, page = write_report(rep, tmp_path)
    for text in (md.read_text(), page.read_text()):
        assert "\x06" not in text and "\x7f" not in text and "a\ufffdb\ufffd" in text
