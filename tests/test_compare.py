"""python -m pretrain.tools.compare: the self-contained HTML report (parsed here, and opened in headless Chromium
when one is installed), its PNGs, runs still being written and runs of older versions, the MPL curve, and the
W&B side (flattened config, summary metrics, the wandb_report spec against a fake API)."""
import json
import math
import os
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from pretrain.tools import compare

STEPS = 40


def write_run(root, name, *, optim=None, schedule=None, recipe="tiny", final, lr=1e-3, config=True, keys=None,
              partial=False):
    """A run directory as train.py writes it: config.yaml from the real config loader, metrics rows with the
    contract keys (or only `keys`), eval rows every 10 steps ending at `final`."""
    from omegaconf import OmegaConf

    from pretrain.config import load_config

    run_dir = os.path.join(root, name)
    os.makedirs(run_dir)
    if config:
        chosen = ([f"optim={optim}"] if optim else []) + ([f"schedule={schedule}"] if schedule else [])
        chosen += ["schedule.warmup_steps=0"] if recipe == "tiny" else []
        cfg = load_config(chosen + [f"recipe={recipe}", f"optim.lr={lr}", f"train.steps={STEPS}",
                                    f"run_dir={run_dir}"])
        OmegaConf.save(OmegaConf.create(cfg.to_dict()), os.path.join(run_dir, "config.yaml"))
    rows = []
    for s in range(1, STEPS + 1):
        lr_s = lr if s <= 20 else lr * 0.3  # a two-step schedule
        row = {"step": s, "tokens": s * 2048, "loss": final + 2.0 / s, "lr": lr_s, "grad_norm": 1.0 / s,
               "clip_threshold": 1.0, "clipped": False, "clip_fraction": 0.25 if s > 20 else 0.0,
               "tokens_per_s": 1000.0 + s, "mfu": None, "epoch": s / 100}
        rows.append({k: v for k, v in row.items() if keys is None or k in keys})
        if s % 10 == 0:
            rows.append({"step": s, "tokens": s * 2048, "kind": "eval", "val_loss": final + 1.0 / s,
                         "val_ppl": math.exp(final + 1.0 / s)})
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        if partial:
            f.write('{"step": 41, "tokens": 83968, "lo')  # a run still writing its next line
    return run_dir


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("runs"))
    runs = {
        "cos": write_run(root, "cos", optim="adamw", schedule="cosine", recipe="tiny", final=3.9),
        "lion_wsd": write_run(root, "lion_wsd", optim="lion", schedule="wsd", recipe="tiny", final=3.7, lr=3e-4),
        "sf": write_run(root, "sf", recipe="125m_cosine", final=4.1),  # its own optimizer and schedule
        "old": write_run(root, "old", optim="adamw", schedule="cosine", recipe="tiny", final=3.8,
                         keys={"step", "loss", "lr"}, config=True),
        "running": write_run(root, "running", optim="adopt", schedule="cosine", recipe="tiny", final=4.0,
                             config=False, partial=True),
    }
    os.makedirs(os.path.join(root, "empty"))
    params = {"L0": 3.0, "A": 0.5, "alpha": 0.5, "B": 300.0, "C": 2.0, "beta": 0.6, "gamma": 0.6}
    mpl_file = os.path.join(str(tmp_path_factory.mktemp("mpl")), "params.json")
    with open(mpl_file, "w") as f:
        json.dump(params, f)
    out = os.path.join(str(tmp_path_factory.mktemp("report")), "report.html")
    res = compare.build_report([os.path.join(root, "*")], out, mpl=[mpl_file])
    return {"root": root, "runs": runs, "res": res, "out": out, "params": params, "html": open(out).read()}


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.data_blob, self._in_data, self.rows = [], "", False, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        self._in_data = tag == "script" and a.get("id") == "report-data"
        if tag == "tr" and "data-run" in a:
            self.rows.append(a["data-run"])

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_data = False

    def handle_data(self, data):
        if self._in_data:
            self.data_blob += data


def parse(text):
    p = Tags()
    p.feed(text)
    return p, json.loads(p.data_blob)


def expected_order(runs):
    """Final validation loss written by write_run (final + 1/40), lowest first; the old run has no tokens but
    a val loss; all five have eval rows."""
    finals = {"cos": 3.9, "lion_wsd": 3.7, "sf": 4.1, "old": 3.8, "running": 4.0}
    return sorted(finals, key=finals.get)


def test_html_is_self_contained_and_ordered(report):
    tags, data = parse(report["html"])
    for tag, a in tags.tags:  # nothing fetched from the network: no src / href to another host
        assert not (tag == "script" and a.get("src")), a
        assert not (tag == "link" and str(a.get("href", "")).startswith(("http:", "https:", "//"))), a
        assert not (tag in ("img", "iframe") and str(a.get("src", "")).startswith(("http", "//"))), a
    assert "Plotly.newPlot" in report["html"] and "plotly.js v" in report["html"]  # the library is inlined
    order = expected_order(report["runs"])
    assert data["order"] == order
    assert tags.rows == order  # the table, in val-loss order
    assert report["res"]["runs"] == order
    assert [s.split(":")[0] for s in data["skipped"]] == [os.path.join(report["root"], "empty")]


def test_each_runs_data_is_in_the_report(report):
    _, data = parse(report["html"])
    figs = {f["id"]: f for f in data["figures"]}
    assert {"val_loss", "loss", "lr", "grad_norm", "clip_fraction", "tokens_per_s", "mpl"} <= set(figs)
    val = {t["name"]: t for t in figs["val_loss"]["data"]}
    assert set(val) == set(expected_order(report["runs"]))
    for name, trace in val.items():
        final = {"cos": 3.9, "lion_wsd": 3.7, "sf": 4.1, "old": 3.8, "running": 4.0}[name]
        assert trace["y"] == pytest.approx([final + 1.0 / s for s in (10, 20, 30, 40)])
    # the old run logged no tokens: they come from its config (16 x 128 per step); the running run has no
    # config and no tokens -> it is in the val-loss plot with the tokens its rows carry
    assert val["old"]["x"] == [s * 16 * 128 for s in (10, 20, 30, 40)]
    assert val["sf"]["x"] == [s * 2048 for s in (10, 20, 30, 40)]
    grad = {t["name"] for t in figs["grad_norm"]["data"]}
    assert grad == set(expected_order(report["runs"])) - {"old"}  # missing key: left out, not crashed on
    summary = {r["name"]: r for r in data["runs"]}
    assert summary["cos"]["summary"]["final_val_loss"] == pytest.approx(3.9 + 1 / 40)
    assert summary["cos"]["summary"]["best_val_loss"] == pytest.approx(3.9 + 1 / 40)
    assert summary["cos"]["summary"]["tokens_per_s"] == pytest.approx(np.median([1000.0 + s for s in range(2, 41)]))
    assert summary["cos"]["summary"]["clip_fraction"] == 0.25
    assert summary["cos"]["summary"]["final_train_loss"] == pytest.approx(np.mean([3.9 + 2 / s for s in range(31, 41)]))
    assert any("not logged: tokens, grad_norm, tokens_per_s" in n for n in summary["old"]["notes"])
    assert any("unreadable line" in n for n in summary["running"]["notes"])
    assert any("no config.yaml" in n for n in summary["running"]["notes"])


def test_differing_config_keys_are_highlighted(report):
    tags, data = parse(report["html"])
    diff = data["differing_keys"]
    assert {"optim.name", "schedule.name", "recipe", "optim.lr"} <= set(diff)
    assert "run_dir" not in diff and "train.steps" not in diff  # always different / the same everywhere
    headers = [a.get("class") for t, a in tags.tags if t == "th"]
    assert headers.count("differs") == len(diff)
    by_name = {r["name"]: r["config"] for r in data["runs"]}
    assert by_name["lion_wsd"]["optim.name"] == "lion" and by_name["running"]["optim.name"] is None


def test_pngs_next_to_the_report(report):
    pngs = report["res"]["pngs"]
    names = {os.path.basename(p) for p in pngs}
    assert {"val_loss.png", "loss.png", "lr.png", "grad_norm.png", "clip_fraction.png", "tokens_per_s.png",
            "mpl.png"} <= names
    for p in pngs:
        assert os.path.dirname(p) == os.path.splitext(report["out"])[0] + "_png"
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def mpl_numpy(p, lrs, t):
    """The Multi-Power Law at index t with no warmup (Luo et al. 2025, eq. in pretrain.schedules.mpl.law's
    docstring), written out as plain loops."""
    s1 = sum(lrs[:t + 1])
    ld = 0.0
    for k in range(1, t + 1):
        s_k = sum(lrs[k:t + 1])
        ld += (lrs[k - 1] - lrs[k]) * (1 - (p["C"] * lrs[k] ** (-p["gamma"]) * s_k + 1) ** (-p["beta"]))
    return p["L0"] + p["A"] * s1 ** (-p["alpha"]) - p["B"] * ld


def test_mpl_curve_beside_the_measured_one(report):
    _, data = parse(report["html"])
    fig = next(f for f in data["figures"] if f["id"] == "mpl")
    traces = {t["name"]: t for t in fig["data"]}
    pred = traces["cos MPL"]
    # the logged lr of row s is lrs[s] (row 1's also at index 0), as `pretrain.tools.mpl fit` reads a run
    logged = [1e-3 if s <= 20 else 3e-4 for s in range(1, STEPS + 1)]
    lrs = [logged[0]] + logged
    for t, y in zip(pred["x"], pred["y"]):
        assert y == pytest.approx(mpl_numpy(report["params"], lrs, t), rel=1e-9)
    assert pred["line"]["dash"] == "dash"
    assert traces["cos measured"]["y"] == pytest.approx([3.9 + 1.0 / s for s in (10, 20, 30, 40)])


def test_cli_glob_and_no_runs(tmp_path, capsys):
    write_run(str(tmp_path), "a", optim="adamw", schedule="cosine", recipe="tiny", final=3.9)
    write_run(str(tmp_path), "b", optim="lion", schedule="cosine", recipe="tiny", final=3.5)
    out = tmp_path / "r.html"
    assert compare.main([str(tmp_path / "*"), "--out", str(out), "--no-png", "--target", "3.6"]) == 0
    assert "2 runs: b, a" in capsys.readouterr().out
    _, data = parse(out.read_text())
    steps = {r["name"]: r["summary"]["steps_to_target"] for r in data["runs"]}
    assert steps == {"b": 10, "a": None}  # b: 3.5 + 1/10 <= 3.6 at step 10; a never
    with pytest.raises(SystemExit, match="no run to compare"):
        compare.main([str(tmp_path / "nothing_*"), "--out", str(tmp_path / "x.html")])


def test_a_real_run_directory(tmp_path):
    """The keys train.py really writes are the ones the report reads."""
    from helpers import train_inprocess

    run_dir = str(tmp_path / "real")
    train_inprocess(["train.steps=6", "train.eval_every=3", f"run_dir={run_dir}"])
    res = compare.build_report([run_dir], str(tmp_path / "r.html"), pngs=False)
    _, data = parse(open(res["html"]).read())
    run = data["runs"][0]
    assert run["notes"] == [] and run["summary"]["steps"] == 6
    assert {"val_loss", "loss", "lr", "grad_norm", "clip_fraction", "tokens_per_s"} <= {f["id"] for f in data["figures"]}


# --- headless Chromium: the report renders with the network off -------------------------------------------------

def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                # the network off: every host name fails to resolve and every connection goes to a dead proxy
                "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
                "--proxy-bypass-list=<-loopback>", "--virtual-time-budget=20000"]


class Rendered(HTMLParser):
    """Plot divs and the non-empty SVG line paths inside each, and the table's row order, of a dumped DOM."""

    def __init__(self):
        super().__init__()
        self.stack, self.paths, self.rows, self.canvases = [], {}, [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        plot = a.get("id", "") if a.get("id", "").startswith("plot-") else None
        if tag == "div":
            self.stack.append(plot)
        current = next((p for p in reversed(self.stack) if p), None)
        if tag == "path" and current and "js-line" in (a.get("class") or "") and len(a.get("d") or "") > 10:
            self.paths[current] = self.paths.get(current, 0) + 1
        if tag == "canvas":
            self.canvases += 1
        if tag == "tr" and "data-run" in a:
            self.rows.append(a["data-run"])

    def handle_endtag(self, tag):
        if tag == "div" and self.stack:
            self.stack.pop()


@pytest.mark.skipif(chromium() is None, reason="no chromium binary (Debian: apt-get install chromium); the report "
                    "is still checked structurally by the other tests")
def test_report_renders_in_headless_chromium(report, tmp_path):
    url = "file://" + os.path.abspath(report["out"])
    dom = subprocess.run([chromium(), *CHROME_FLAGS, "--dump-dom", url], capture_output=True, text=True,
                         timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = Rendered()
    page.feed(dom.stdout)
    _, data = parse(report["html"])
    for fig in data["figures"]:  # every plot drew a line for each of its traces with lines
        lines = sum(1 for t in fig["data"] if "lines" in t["mode"])
        assert page.paths.get(f"plot-{fig['id']}", 0) >= lines > 0, (fig["id"], page.paths)
    assert page.rows == expected_order(report["runs"])
    shot = tmp_path / "report.png"
    run = subprocess.run([chromium(), *CHROME_FLAGS, "--window-size=1400,2400", f"--screenshot={shot}", url],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 1400
    keep = os.environ.get("PRETRAIN_REPORT_SCREENSHOT")  # where to keep it (e.g. for a README)
    if keep:
        shutil.copy(shot, keep)


# --- W&B: flat config keys, job type, summary metrics, the report spec (a fake Reports API) ---------------------

class Recorder:
    """A stand-in for wandb_workspaces.reports.v2: every class records its keyword arguments."""

    def __init__(self):
        self.saved = []

    def __getattr__(self, cls_name):
        outer = self

        class Obj:
            def __init__(self, *args, **kw):
                self.cls, self.args, self.kw = cls_name, args, kw

            def save(self):
                outer.saved.append(self)

        return Obj


def test_wandb_report_spec_uses_logged_keys(tmp_path, capsys):
    from helpers import train_inprocess

    from pretrain.config import load_config
    from pretrain.tools import wandb_report
    from pretrain.tracking import read_metrics, run_summary, wandb_config

    run_dir = str(tmp_path / "real")
    train_inprocess(["train.steps=4", "train.eval_every=2", f"run_dir={run_dir}"])
    rows = read_metrics(run_dir)
    logged = {k for r in rows for k in r} | {"Step"}  # W&B's own step axis
    flat = wandb_config(load_config(["optim=lion", "model.d_model=96", "train.global_batch_size=32"]))
    assert (flat["optimizer"], flat["width"], flat["depth"], flat["batch"]) == ("lion", 96, 4, 32)
    assert flat["batch_tokens"] == 32 * 128 and flat["lr"] == 3e-3 and flat["parametrization"] == "sp"

    wr = Recorder()
    spec = wandb_report.report_spec("proj", entity="team")
    report = wandb_report.create_report(spec, wr)
    assert wr.saved == [report] and report.kw["project"] == "proj" and report.kw["entity"] == "team"
    grid = report.kw["blocks"][-1]
    runset = grid.kw["runsets"][0]
    assert runset.kw["groupby"] == ["group"] and runset.kw["order"][0].kw["ascending"] is True
    lines = [p for p in grid.kw["panels"] if p.cls == "LinePlot"]
    assert {p.kw["y"][0] for p in lines} >= {"val_loss", "loss", "lr", "grad_norm", "clip_fraction", "tokens_per_s"}
    for p in lines:  # every plotted metric is a key train.py logs (mfu: null on CPU, logged on GPUs)
        assert p.kw["x"] in logged and p.kw["y"][0] in logged, p.kw
    summary_keys = set(run_summary(rows))
    bar = next(p for p in grid.kw["panels"] if p.cls == "BarPlot")
    assert {m.args[0] for m in bar.kw["metrics"]} <= summary_keys
    par = next(p for p in grid.kw["panels"] if p.cls == "ParallelCoordinatesPlot")
    assert {c.kw["metric"].args[0] for c in par.kw["columns"]} <= summary_keys | set(flat)
    assert any(p.cls == "RunComparer" and p.kw["diff_only"] == "split" for p in grid.kw["panels"])
    assert wandb_report.main(["proj", "--dry-run"]) == 0
    out = capsys.readouterr().out  # DeepSpeed prints a line to stdout when it is first imported in a process
    assert json.loads(out[out.index("\n{") + 1 if not out.startswith("{") else 0:])["runset"]["groupby"] == ["group"]


def test_init_wandb_and_summary_through_accelerate(tmp_path, monkeypatch):
    from pretrain.config import load_config
    from pretrain.errors import ConfigError
    from pretrain.tracking import init_wandb, wandb_summary

    class Acc:
        is_main_process = True

        def __init__(self):
            self.summary = {}

        def init_trackers(self, project, config, init_kwargs):
            self.project, self.config, self.kw = project, config, init_kwargs["wandb"]

        def get_tracker(self, name, unwrap=False):
            assert name == "wandb" and unwrap
            return self

    cfg = load_config(["optim=adopt", "schedule=wsd", f"run_dir={tmp_path}"])
    acc = Acc()
    monkeypatch.setenv("PRETRAIN_JOB_TYPE", "sweep")
    init_wandb(acc, cfg, str(tmp_path))
    assert acc.kw["group"] == "tiny" and acc.kw["job_type"] == "sweep" and "optim:adopt" in acc.kw["tags"]
    assert acc.config["optimizer"] == "adopt" and acc.config["schedule_name"] == "wsd"
    assert acc.config["optim"]["name"] == "adopt"  # the nested config stays
    monkeypatch.setenv("PRETRAIN_JOB_TYPE", "nonsense")
    with pytest.raises(ConfigError, match="log.job_type"):
        init_wandb(acc, cfg, str(tmp_path))
    write_run(str(tmp_path), "r", final=3.0)
    got = wandb_summary(acc, str(tmp_path / "r"), target=3.2)
    assert acc.summary == got and got["final_val_loss"] == pytest.approx(3.025) and got["steps_to_target"] == 10
    assert got["tokens"] == STEPS * 2048 and "mfu" not in got  # None (CPU) is left out
