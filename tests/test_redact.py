"""redact.py: local paths in what publishing writes become relative to the folder they came from, and what
cannot be made relative (an unknown absolute path, a secret) is refused with one line naming the key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trashnet_hf.hub.redact import SECRET_NAME, LeakError, Redactor, Root, known_roots, secret_values

SECRET = "hf_redactTestSecret0123456789"


@pytest.fixture
def redactor() -> Redactor:
    return Redactor(
        [
            Root("/srv/alice/data", "data"),
            Root("/srv/alice/runs/out", "out"),
            Root("../shared/trashnet", "trashnet"),
            Root("/home/alice", "~", "~/"),
        ],
        {"$HF_TOKEN": SECRET},
    )


def test_paths_become_relative_and_roots_their_names(redactor: Redactor) -> None:
    text = redactor.text
    assert text("/srv/alice/data") == "data"
    assert text("/srv/alice/data/") == "data/"
    assert text("/srv/alice/data/glass/glass1.jpg") == "glass/glass1.jpg"
    assert text("/srv/alice/runs/out/checkpoints/step-4") == "checkpoints/step-4"
    assert text("../shared/trashnet/paper/p 1.jpg") == "paper/p 1.jpg"  # a relative spelling too
    assert text("/home/alice/.cache/hf/x.zip") == "~/.cache/hf/x.zip"  # HOME's own rule
    # Inside sentences: after a space, bracket or quote, up to the end of the path.
    assert text("skipped (e.g. /srv/alice/data/alpha/notes.txt); see skipped_files.") == (
        "skipped (e.g. alpha/notes.txt); see skipped_files."
    )
    assert text("the list is in /srv/alice/runs/out.") == "the list is in out."
    # A longer folder name is another folder: left alone here, and refused by the check below.
    assert text("/srv/alice/data2/x.jpg") == "/srv/alice/data2/x.jpg"
    assert text("a metadata note") == "a metadata note"


def test_what_cannot_be_made_relative_is_refused_naming_the_key(redactor: Redactor) -> None:
    results = {
        "config": {"data_dir": "/srv/alice/data"},
        "data_report": {"groups": [{"paths": ["/srv/alice/data/a/1.jpg", "/opt/other/2.jpg"]}]},
    }
    redacted = redactor.data(results)
    assert redacted["config"]["data_dir"] == "data"
    with pytest.raises(LeakError) as info:
        redactor.check_data(redacted, "model/results.json")
    message = str(info.value)
    assert message.startswith("model/results.json: data_report.groups[0].paths[1] would publish")
    assert "/opt/other/2.jpg" in message and "nothing was published" in message and "\n" not in message

    # A root spelled inside another token (a file:// URL) is not rewritten, so the check catches it.
    with pytest.raises(LeakError, match=r"x\.json: link would publish the local path /srv/alice/data"):
        redactor.check_data(redactor.data({"link": "file:///srv/alice/data/a.jpg"}), "x.json")
    with pytest.raises(LeakError, match=r"the key /tmp/k would publish"):
        redactor.check_data({"/tmp/k": 1}, "x.json")
    with pytest.raises(LeakError, match=r"C:\\Users"):
        redactor.check_data({"k": [r"C:\Users\alice\data"]}, "x.json")
    for fine in ("hf://datasets/garythung/trashnet", "https://huggingface.co/a/b", "1/3 of glass/x.jpg"):
        redactor.check_data({"k": fine}, "x.json")


def test_a_secret_is_refused_by_its_source_never_shown(redactor: Redactor, tmp_path: Path) -> None:
    with pytest.raises(LeakError) as info:
        redactor.check_data({"config": {"run_name": f"run-{SECRET}"}}, "model/results.json")
    assert "config.run_name would publish the value of $HF_TOKEN" in str(info.value)
    assert SECRET not in str(info.value)
    with pytest.raises(LeakError, match=r"line 2 would publish the value of \$HF_TOKEN"):
        redactor.write_text(tmp_path / "README.md", f"# card\ntoken: {SECRET}\n", "README.md")
    assert not (tmp_path / "README.md").exists()


def test_audit_reads_every_file_as_bytes(tmp_path: Path) -> None:
    root = "/srv/zoë/data"  # JSON writes it escaped: zo\u00eb
    redactor = Redactor([Root(root, "data"), Root("/tmp", "tmp")], {"$WANDB_API_KEY": SECRET})
    build = tmp_path / "build"
    (build / "model").mkdir(parents=True)
    weights = build / "model" / "model.safetensors"
    weights.write_bytes(b"\0\x01/tmp\x02" * 100)  # a short root by chance in binary data: not a leak
    (build / "model" / "empty.txt").write_bytes(b"")
    redactor.audit(build)

    (build / "model" / "results.json").write_text(json.dumps({"source": root + "/a.jpg"}))
    with pytest.raises(LeakError, match=r"model/results\.json would publish the local path /srv/zo"):
        redactor.audit(build)
    (build / "model" / "results.json").unlink()
    weights.write_bytes(b"\0\x01" + SECRET.encode() + b"\x02")
    with pytest.raises(LeakError, match=r"model\.safetensors would publish the value of \$WANDB_API_KEY"):
        redactor.audit(build)


def test_roots_come_from_the_config_whatever_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "images")
    config = {
        "data_dir": "link",  # relative and through a symlink: its spellings and the resolved folder
        "a_folder_flag_added_later": "/mnt/nas/backbones/lite0",
        "dataset": "garythung/trashnet",  # a Hub id, not here: not a root
        "report_to": "none",
    }
    roots = {r.path: r for r in known_roots(config, [tmp_path / "out"])}
    assert roots["link"].name == "link" and roots[str(tmp_path / "images")].name == "images"
    assert roots["/mnt/nas/backbones/lite0"].name == "lite0"
    assert roots[str(tmp_path / "out")].name == "out"
    assert roots[str(Path.home())] == Root(str(Path.home()), "~", "~/")
    assert "garythung/trashnet" not in roots and "none" not in roots
    paths = [r.path for r in known_roots(config, [tmp_path / "out"])]
    assert paths == sorted(paths, key=len, reverse=True)  # the most specific root is tried first


def test_secret_values_are_the_environment_s_tokens_and_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if SECRET_NAME.search(n)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "a" * 30)
    monkeypatch.setenv("WANDB_API_KEY", "b" * 40)
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_" + "c" * 30)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # not a secret, and too short to be one
    monkeypatch.setenv("HF_TOKEN_PATH", "/nowhere/token")  # names a file, not a token
    assert secret_values() == {
        "$HF_TOKEN": "hf_" + "a" * 30,
        "$WANDB_API_KEY": "b" * 40,
        "$GITHUB_TOKEN": "ghp_" + "c" * 30,
    }
