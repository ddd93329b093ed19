"""``joyforge push``: Parquet shards and a dataset card go to a stand-in of the Hub, and come back with ``datasets``.

The stand-in (``tests/hub_standin``) implements the Hub endpoints ``huggingface_hub`` calls; the pushes here
run the real ``joyforge`` command in a child process pointed at it with ``HF_ENDPOINT`` and ``HF_TOKEN``, and
the checks read the result back the way a user would: ``datasets.load_dataset(REPO_ID)`` in another child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.hub_standin.fixtures import *  # noqa: F403  (hub_standin, hub_env)
from tests.hub_standin.fixtures import HubEnv
from tests.hub_standin.server import DEFAULT_TOKEN, start_hub_standin
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import read_jsonl, run_records

SEED = [
    ("咳嗽有痰可以喝什么药", "医疗问诊"),
    ("布洛芬一天吃几次", "合理用药"),
    ("这个药多少钱一盒", "商品咨询"),
    ("How long can I take ibuprofen?", "合理用药"),
    ("咳嗽有痰可以喝什么药？", "医疗问诊"),
    ("维生素AD滴剂怎么用", "合理用药"),
]
STEPS = [
    {"label": {"model": "m", "prompt": "zh/label", "options": {"labels": ["合理用药", "医疗问诊", "商品咨询"]}}},
    {"generate": {"model": "m", "prompt": "zh/answer", "output_field": "target"}},
]


def make_run(tmp_path: Path, name: str = "run", seed: list[tuple[str, str]] = SEED) -> Path:
    """A real run folder (data.jsonl, ledger, summary.json, run.json) made by the engine with a scripted model."""
    work = tmp_path / name
    work.mkdir()
    records = [{"id": f"{name}-{i}", "input": text, "tag": tag} for i, (text, tag) in enumerate(seed)]
    result = run_records(work, records, STEPS, {"m": ScriptedBackend()})
    assert result.summary.totals["ok"] == len(seed)
    return result.out


def joyforge(env: dict[str, str], *args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "joydataforge", *map(str, args)], env=env, capture_output=True, text=True, timeout=240
    )


def joyforge_here(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str]:
    """``joyforge ARGV`` through the real entry point, in this process: (exit status, stderr)."""
    from joydataforge.cli import main

    monkeypatch.setattr(sys, "argv", ["joyforge", *map(str, argv)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def load_dataset(env: dict[str, str], *args: str, **kwargs: Any) -> dict[str, list[dict[str, Any]]]:
    """``datasets.load_dataset(*args, **kwargs)`` in a child process (datasets reads HF_ENDPOINT when imported):
    every split's rows."""
    code = (
        "import json, sys, datasets\n"
        "args, kwargs = json.loads(sys.argv[1])\n"
        "loaded = datasets.load_dataset(*args, **kwargs)\n"
        "print(json.dumps({name: split.to_list() for name, split in loaded.items()}, ensure_ascii=False, default=str))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps([args, kwargs])], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A record as Parquet gives it back: absent struct keys come back as None, so compare the kept fields."""
    return {k: v for k, v in record.items() if k != "_meta"}


# --- end to end -------------------------------------------------------------------------------------------


def test_push_run_folder_then_load_dataset(tmp_path: Path, hub_env: HubEnv) -> None:
    run = make_run(tmp_path)
    done = joyforge(hub_env.env, "push", run, "me/pharmacy", "--embedder", "none", "--license", "apache-2.0")
    assert done.returncode == 0, done.stderr
    assert "pushed 6 records (default/train) in 1 shard(s)" in done.stderr
    assert 'datasets.load_dataset("me/pharmacy", split="train")' in done.stderr

    loaded = load_dataset(hub_env.env, "me/pharmacy")
    assert list(loaded) == ["train"]
    expected = [comparable(r) for r in read_jsonl(run / "data.jsonl")]
    assert [comparable(r) for r in loaded["train"]] == expected
    assert json.loads(loaded["train"][0]["_meta"])["pipeline"] == "pipeline"  # provenance travels with the data

    hub = hub_env.hub
    assert sorted(hub.files("me/pharmacy")) == [".gitattributes", "README.md", "data/train-00000-of-00001.parquet"]
    assert hub.files("me/pharmacy")["data/train-00000-of-00001.parquet"].lfs  # Parquet goes as LFS, like on the Hub
    # what upload_folder called, in order: create, validate the card, preupload, LFS batch + PUT + verify, commit
    calls = [
        (r.method, r.path.split("/me/pharmacy")[-1]) for r in hub.log if r.status < 400 and "resolve" not in r.path
    ]
    assert ("POST", "/api/repos/create") in calls and ("POST", "/api/validate-yaml") in calls
    for wanted in ["/preupload/main", ".git/info/lfs/objects/batch", "/commit/main"]:
        assert any(path.endswith(wanted) for _, path in calls), (wanted, calls)
    assert any(method == "PUT" and path.startswith("/lfs-upload/") for method, path in calls)
    assert all(r.authorized for r in hub.requests("POST") if "/lfs-upload/" not in r.path)

    # the token is used, never shown nor stored
    assert DEFAULT_TOKEN not in done.stdout + done.stderr
    checkout = hub.checkout("me/pharmacy")
    assert all(DEFAULT_TOKEN.encode() not in p.read_bytes() for p in checkout.rglob("*") if p.is_file())
    # the stand-in's stored files are a dataset folder too
    assert [comparable(r) for r in load_dataset(hub_env.env, str(checkout))["train"]] == expected


def test_push_through_the_default_xet_pipeline(tmp_path: Path) -> None:
    """With hf_xet installed upload_folder takes its streamed pipeline; a Hub that wants every file regular
    (no LFS) lets it run without Xet storage, which the stand-in does not implement."""
    run = make_run(tmp_path)
    server = start_hub_standin(tmp_path / "hub", regular_only=True)
    try:
        env = {**os.environ, "HF_ENDPOINT": server.url, "HF_TOKEN": DEFAULT_TOKEN, "HF_HOME": str(tmp_path / "hf")}
        env.pop("HF_HUB_DISABLE_XET", None)
        done = joyforge(env, "push", run, "me/regular", "--no-eval")
        assert done.returncode == 0, done.stderr
        assert not server.hub.requests(contains="lfs")
        assert not server.hub.files("me/regular")["data/train-00000-of-00001.parquet"].lfs
        assert len(load_dataset(env, "me/regular")["train"]) == 6
    finally:
        server.close()


def test_second_split_and_config_keep_the_first(tmp_path: Path, hub_env: HubEnv, monkeypatch, capsys) -> None:
    train, test = make_run(tmp_path, "train"), make_run(tmp_path, "test", SEED[:2])
    for args in ([train, "me/ds"], [test, "me/ds", "--split", "test"], [test, "me/ds", "--config", "small"]):
        code, err = joyforge_here(monkeypatch, capsys, "push", *args, "--embedder", "none")
        assert code == 0, err
    files = sorted(hub_env.hub.files("me/ds"))
    assert files == [
        ".gitattributes",
        "README.md",
        "data/test-00000-of-00001.parquet",
        "data/train-00000-of-00001.parquet",
        "small/train-00000-of-00001.parquet",
    ]
    default = load_dataset(hub_env.env, "me/ds")
    assert {name: len(rows) for name, rows in default.items()} == {"train": 6, "test": 2}
    assert len(load_dataset(hub_env.env, "me/ds", "small")["train"]) == 2
    card = (hub_env.hub.checkout("me/ds") / "README.md").read_text("utf-8")
    assert card.count("<!-- joyforge:begin ") == 3
    assert "size_categories:\n- n<1K" in card
    assert 'load_dataset("me/ds", split="test")' in card and 'load_dataset("me/ds", "small", split="train")' in card


def test_a_smaller_push_deletes_the_old_shards(tmp_path: Path, hub_env: HubEnv, monkeypatch, capsys) -> None:
    run = make_run(tmp_path)
    code, err = joyforge_here(monkeypatch, capsys, "push", run, "me/shards", "--no-eval", "--max-shard-size", "1B")
    assert code == 0, err
    first = sorted(p for p in hub_env.hub.files("me/shards") if p.startswith("data/"))
    assert first == [f"data/train-{i:05d}-of-00006.parquet" for i in range(6)]  # one 1,000-row batch per shard
    small = make_run(tmp_path, "small", SEED[:3])
    code, err = joyforge_here(monkeypatch, capsys, "push", small, "me/shards", "--no-eval")
    assert code == 0, err
    assert sorted(p for p in hub_env.hub.files("me/shards") if p.startswith("data/")) == [
        "data/train-00000-of-00001.parquet"
    ]
    assert [r["id"] for r in load_dataset(hub_env.env, "me/shards")["train"]] == ["small-0", "small-1", "small-2"]


def test_private_push_needs_the_token_to_read(tmp_path: Path, hub_env: HubEnv, monkeypatch, capsys) -> None:
    run = make_run(tmp_path)
    code, err = joyforge_here(monkeypatch, capsys, "push", run, "me/secret", "--private", "--no-eval")
    assert code == 0, err
    assert hub_env.hub.repos[("dataset", "me/secret")].private
    anonymous = {k: v for k, v in hub_env.env.items() if k != "HF_TOKEN"}
    refused = joyforge(anonymous, "eval", "hf://datasets/me/secret", "--embedder", "none")
    assert refused.returncode == 2 and "no such dataset on the Hub, or a private one" in refused.stderr
    allowed = joyforge(hub_env.env, "eval", "hf://datasets/me/secret", "--embedder", "none")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["records"] == 6


# --- tokens and refusals: one line, exit 2 --------------------------------------------------------------


def test_no_token_stops_before_any_work(tmp_path: Path, hub_env: HubEnv, monkeypatch, capsys) -> None:
    run = make_run(tmp_path)
    monkeypatch.delenv("HF_TOKEN")
    code, err = joyforge_here(monkeypatch, capsys, "push", run, "me/x", "--no-eval")
    assert code == 2
    assert err.strip().splitlines() == [
        "error: no Hugging Face token: set HF_TOKEN (a token with write access) or run `hf auth login`; "
        "joyforge never takes a token on the command line"
    ]
    assert not hub_env.hub.log


def test_a_refused_token_is_one_line_and_not_shown(tmp_path: Path, hub_env: HubEnv, monkeypatch, capsys) -> None:
    run = make_run(tmp_path)
    wrong = "hf_not_the_right_token_123"
    monkeypatch.setenv("HF_TOKEN", wrong)
    code, err = joyforge_here(monkeypatch, capsys, "push", run, "me/x", "--no-eval")
    assert code == 2
    lines = err.strip().splitlines()
    assert (
        lines[-1].startswith("error: the Hub answered 401 while checking the token") and "check HF_TOKEN" in lines[-1]
    )
    assert "Traceback" not in err and wrong not in err


def test_an_unreachable_hub_is_one_line(tmp_path: Path, hub_env: HubEnv, monkeypatch, capsys) -> None:
    from huggingface_hub import constants

    run = make_run(tmp_path)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    code, err = joyforge_here(monkeypatch, capsys, "push", run, "me/x", "--no-eval")
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: could not reach the Hub while ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "train-2"], "--split 'train-2': a split name is letters, digits and '_'"),
        (["--config", "data"], "--config 'data': letters, digits"),
        (["--max-shard-size", "big"], "--max-shard-size 'big': write a size like 500MB"),
        (["--repo", "just-a-name"], "REPO_ID 'just-a-name': write OWNER/NAME"),
    ],
)
def test_bad_options_are_one_line(tmp_path: Path, hub_env: HubEnv, monkeypatch, capsys, args, message) -> None:
    repo = args[1] if args[0] == "--repo" else "me/x"
    args = [] if args[0] == "--repo" else args
    code, err = joyforge_here(monkeypatch, capsys, "push", tmp_path, repo, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_folder_that_is_not_a_run(tmp_path: Path, hub_env: HubEnv, monkeypatch, capsys) -> None:
    code, err = joyforge_here(monkeypatch, capsys, "push", tmp_path, "me/x")
    assert code == 2
    assert (
        err.strip()
        == f"error: {tmp_path}: not a run folder (no data.jsonl); give a run folder or a .jsonl/.parquet file"
    )
