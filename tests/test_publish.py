"""The model card and publishing: card metadata round trip, the folders a dry run builds, the Hub calls a
push makes (on an injected HfApi), retries, the token's absence from everything written, and the Space
folder importing on its own. No network: HF_HUB_OFFLINE=1 and a mock HfApi."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import fields
from pathlib import Path
from unittest.mock import create_autospec

import httpx2
import pytest
from huggingface_hub import HfApi, ModelCard, SpaceCard, metadata_load
from huggingface_hub.errors import HfHubHTTPError

from tests.conftest import HASH_ONLY
from trashnet_hf.core.errors import ConfigError, UserError
from trashnet_hf.hub import card, publish
from trashnet_hf.hub import client as hub
from trashnet_hf.hub.publish import PublishArgs

ROOT = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_FAKEtokenForTests0123456789abcdefXYZ"


@pytest.fixture
def run_dir(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of the session's tiny training output (the tests write publish/ into it)."""
    return Path(shutil.copytree(trained_run, tmp_path / "out", ignore=shutil.ignore_patterns("checkpoints")))


@pytest.fixture
def api() -> HfApi:
    mock = create_autospec(HfApi, instance=True)
    mock.whoami.return_value = {"name": "alice"}
    mock.create_repo.side_effect = lambda repo_id, **kw: f"https://huggingface.co/{repo_id}"
    return mock


@pytest.fixture
def can_push(monkeypatch: pytest.MonkeyPatch) -> None:
    """A (fake) token, and the Hub taken as reachable: only the injected HfApi is ever called."""
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(hub, "_unreachable_reason", lambda: None)
    monkeypatch.setattr(publish.time, "sleep", lambda s: None)


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _write_results(out: Path, results: dict) -> None:
    (out / "results.json").write_text(json.dumps(results))


# --- The card ----------------------------------------------------------------------------------------


def test_card_metadata_parses_back_to_the_results(run_dir: Path, tmp_path: Path) -> None:
    results = _results(run_dir)
    path = tmp_path / "README.md"
    card.render_card(run_dir, "alice/trashnet").save(path)

    meta = metadata_load(path)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-classification"
    assert meta["license"] == "mit" and set(meta["metrics"]) == {"accuracy", "f1"}
    assert "base_model" not in meta  # the fixture's backbone is randomly initialised
    loaded = ModelCard.load(path)
    values = {r.metric_type: r.metric_value for r in loaded.data.eval_results}
    test = results["metrics"]["test"]
    assert values == {"accuracy": test["accuracy"], "f1": test["macro_f1"]}
    assert all(
        r.dataset_split == "test" and r.task_type == "image-classification" for r in loaded.data.eval_results
    )
    assert loaded.data.model_name == "alice/trashnet"

    text = loaded.text
    assert "randomly initialised" in text
    for name, m in test["per_class"].items():  # the per-class table, from the results
        assert (
            f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |" in text
        )
    report = results["data_report"]
    assert f"{report['num_kept']} images kept" in text
    assert f"{report['grouping']['hash_pairs']} pairs" in text
    assert "![Confusion matrix on the test split](confusion_matrix.png)" in text
    assert 'pipeline("image-classification", model="alice/trashnet")' in text
    assert "trashnet-hf predict" in text and "trashnet-hf export" in text
    assert "Thung" in text and "{{" not in text and "{%" not in text


def test_card_reports_calibration_when_present_and_says_not_calibrated_otherwise(run_dir: Path) -> None:
    results = _results(run_dir)
    results["calibration"] = {
        "method": "temperature scaling: one T fitted on validation logits (NLL)", "temperature": 1.6180,
        "bins": 15,
        "val": {"nll_before": 0.91, "nll_after": 0.72, "ece_before": 0.1234, "ece_after": 0.0321},
        "test": {"nll_before": 0.88, "nll_after": 0.70, "ece_before": 0.1111, "ece_after": 0.0222},
    }  # fmt: skip
    _write_results(run_dir, results)
    (run_dir / "reliability.png").write_bytes((run_dir / "curves.png").read_bytes())
    text = card.render_card(run_dir).text
    assert "T = 1.618" in text and "| test | 0.1111 | 0.0222 | 0.8800 | 0.7000 |" in text
    assert "![Reliability diagram" in text

    del results["calibration"]
    _write_results(run_dir, results)
    (run_dir / "reliability.png").unlink()
    text = card.render_card(run_dir).text
    assert "Not calibrated" in text and "reliability.png" not in text


def test_card_states_the_not_sure_threshold_and_its_rule_when_the_run_has_one(run_dir: Path) -> None:
    results = _results(run_dir)
    low = results["calibration"]["low_confidence"]  # the tiny run's own block, values changed
    low.update(threshold=0.6234, rule="the rule under test, 400 validation photos")
    low["val_fit_set"]["flagged_share"] = 0.085
    _write_results(run_dir, results)
    text = card.render_card(run_dir).text
    assert '"Not sure" threshold: 0.623 on the top score (the rule under test, 400 validation photos)' in text
    assert "8.5% of the validation photos" in text and "`low_confidence_threshold`" in text

    del results["calibration"]["low_confidence"]  # a run from before thresholds were stored
    _write_results(run_dir, results)
    assert '"Not sure" threshold' not in card.render_card(run_dir).text


OOD_BLOCK = {
    "method": "mahalanobis", "layer": "blocks.4", "stride": 16, "width": 112, "threshold": 31.4159,
    "rule": "the rule under test, 95th percentile of 400 validation photos", "flag_rate": 0.05,
    "fitted_on": 1769, "bytes": 51_008, "val_flagged_share": 0.048, "test_flagged_share": 0.0472,
}  # fmt: skip


def test_card_explains_the_not_waste_score_or_says_the_model_has_none(run_dir: Path) -> None:
    results = _results(run_dir)
    results["ood"] = dict(OOD_BLOCK)
    _write_results(run_dir, results)
    text = " ".join(card.render_card(run_dir).text.split())
    assert "## Not waste: the out-of-distribution score" in text
    assert "Mahalanobis distance" in text and "Lee et al. 2018" in text
    assert "`blocks.4` stage (stride 16, 112 channels) to the nearest class mean" in text
    assert "fitted on the 1769 training photos" in text
    assert 'A photo is "not waste" when its score is over 31.416** (the rule under test, 95th' in text
    assert "set to flag 5.0% of the validation photos" in text and "--ood-flag-rate 0.05" in text
    assert "| val (sets the threshold) | 4.8% |" in text and "| test (held out) | 4.7% |" in text
    assert "single object on a white background" in text and "bins" in text and "intended caution" in text
    assert "`pipeline()` and timm give the plain class logits only" in text
    assert "`ood_score`" in text and "`Classifier`" in text and "`ood.safetensors` (51 kB)" in text
    assert "#not-waste-the-out-of-distribution-score" in text
    assert "carries no out-of-distribution score" not in text and "{{" not in text and "{%" not in text

    del results["ood"]  # --ood-flag-rate 0, or a run from before the score
    _write_results(run_dir, results)
    text = " ".join(card.render_card(run_dir).text.split())
    assert "## Not waste: the out-of-distribution score" in text
    assert "This model carries no out-of-distribution score" in text
    for absent in ("Mahalanobis", "intended caution", "ood.safetensors", "#not-waste-the"):
        assert absent not in text


def test_card_names_the_real_base_model_and_copes_with_older_reports(run_dir: Path, tmp_path: Path) -> None:
    results = _results(run_dir)
    results["config"] |= {"pretrained": True, "model_name": "timm/resnet18.a1_in1k"}
    results.pop("base_model", None)  # a results.json from before training recorded it
    for key in ("grouping", "groups"):  # a data report from before near-duplicate grouping
        results["data_report"].pop(key, None)
    _write_results(run_dir, results)
    rendered = card.render_card(run_dir)
    assert rendered.data.base_model == "timm/resnet18.a1_in1k"
    assert "predates near-duplicate grouping" in rendered.text

    # A local timm folder resolves to the Hub id its config.json records; without one, no base model.
    local = tmp_path / "tf_efficientnet_lite0.in1k"
    local.mkdir()
    (local / "config.json").write_text(
        json.dumps({"pretrained_cfg": {"hf_hub_id": "timm/tf_efficientnet_lite0.in1k"}})
    )
    assert card.base_model_of(str(local), pretrained=True) == "timm/tf_efficientnet_lite0.in1k"
    assert card.base_model_of(str(local), pretrained=False) is None
    (local / "config.json").write_text("{}")
    assert card.base_model_of(str(local), pretrained=True) is None
    assert card.base_model_of("/gone/folder", pretrained=True) is None


def test_card_of_a_reused_split_names_the_embedder_that_grouped_it(run_dir: Path) -> None:
    results = _results(run_dir)
    made_by = {"method": "perceptual hash + backbone embeddings", "hash_pairs": 19, "embedding_pairs": 207,
               "embedding_model": "pypi:tf_efficientnet_lite0", "embedding_input_size": 160,
               "near_duplicate_threshold": 0.83}  # fmt: skip
    reused = {"method": "reused from a split manifest", "split_manifest": "split_manifest.csv"}
    results["data_report"]["grouping"] = {**reused, "made_by": made_by, "dropped_by_embedding": None}
    _write_results(run_dir, results)
    text = " ".join(card.render_card(run_dir).text.split())
    assert "reused as it was (`train.py --split-manifest`) from the `split_manifest.csv`" in text
    assert "`pypi:tf_efficientnet_lite0` at 160 px, whatever the model trained" in text
    assert "207 pairs" in text and "not** grouped" not in text
    results["data_report"]["grouping"]["made_by"] = None  # the manifest came without its data report
    _write_results(run_dir, results)
    text = " ".join(card.render_card(run_dir).text.split())
    assert "how that run grouped is not recorded" in text and "predates" not in text and "207" not in text


def test_card_compares_runs_on_the_same_test_photos_and_refuses_others(run_dir: Path, tmp_path: Path) -> None:
    scratch = Path(shutil.copytree(run_dir, tmp_path / "scratch"))
    results = _results(scratch)
    results["metrics"]["test"] |= {"accuracy": 0.25, "accuracy_ci95": [0.125, 0.5], "macro_f1": 0.2}
    _write_results(scratch, results)
    text = card.render_card(run_dir, compare_with=[scratch]).text
    ours = _results(run_dir)["metrics"]["test"]
    rows = [line for line in text.splitlines() if line.startswith("| `test_resnet`, random init")]
    assert len(rows) == 2 and "(**this model**)" in rows[0] and f"{100 * ours['accuracy']:.1f}%" in rows[0]
    assert "25.0% (12.5%–50.0%)" in rows[1] and "| 0.200 |" in rows[1]
    assert "Beside other models" not in card.render_card(run_dir).text
    # Another split (here: one test photo moved) is another test set: refused, naming the folder.
    results["data_report"]["split_fingerprint"] = "0" * 64
    _write_results(scratch, results)
    with pytest.raises(UserError, match=r"--compare-with .*scratch: its test split is not this run's"):
        card.render_card(run_dir, compare_with=[scratch])
    with pytest.raises(ConfigError, match=r"--compare-with .*: no results\.json"):
        PublishArgs(str(run_dir), "alice/m", compare_with=[str(tmp_path)])


# --- Arguments ---------------------------------------------------------------------------------------


def test_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        publish.main(["--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    for f in fields(PublishArgs):
        flag = f.name.upper() if f.metadata.get("positional") else "--" + f.name.replace("_", "-")
        assert flag in help_text and f.metadata.get("help"), f.name
    assert "OUTPUT_DIR" in help_text.split("\n\n")[0]  # the usage: positional, publish OUT ...


def test_publish_args_are_checked_up_front(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--model-repo"):
        PublishArgs(str(run_dir), "not a repo")
    with pytest.raises(ConfigError, match="--space-repo"):
        PublishArgs(str(run_dir), "alice/m", space_repo="alice")
    with pytest.raises(ConfigError, match=r"lacks results\.json, model/config\.json"):
        PublishArgs(str(tmp_path / "empty"), "alice/m")
    with pytest.raises(ConfigError, match=r"--space-only.*--space-repo"):
        PublishArgs(str(tmp_path), "alice/m", space_only=True)
    # The CLI: a bad flag is one line and exit 2, before any work.
    assert publish.main([str(tmp_path / "empty"), "--model-repo", "alice/m", "--dry-run"]) == 2
    assert not (tmp_path / "empty").exists()


def test_train_config_checks_the_hub_flags() -> None:
    from trashnet_hf.core.config import TrainConfig

    base = {"data_dir": str(ROOT / "trashnet_hf" / "sample"), "report_to": "none"}
    with pytest.raises(ConfigError, match="--push-to-hub needs --hub-model-id"):
        TrainConfig(**base, push_to_hub=True)
    with pytest.raises(ConfigError, match="only apply with --push-to-hub"):
        TrainConfig(**base, hub_model_id="alice/m")
    with pytest.raises(ConfigError, match="--hub-space-id"):
        TrainConfig(**base, push_to_hub=True, hub_model_id="alice/m", hub_space_id="a/b/c")


# --- The dry run --------------------------------------------------------------------------------------


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_dry_run_builds_both_folders(run_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    built = publish.publish(PublishArgs(str(run_dir), "alice/trashnet", "alice/trashnet-demo", dry_run=True))
    assert built.model == run_dir / "publish" / "model" and built.space == run_dir / "publish" / "space"

    model_files = _files(built.model)
    assert {
        "model.safetensors",
        "config.json",
        "README.md",
        "results.json",
        "confusion_matrix.png",
        "curves.png",
    } <= model_files
    assert ("reliability.png" in model_files) == (run_dir / "reliability.png").is_file()
    assert (built.model / "model.safetensors").read_bytes() == (
        run_dir / "model" / "model.safetensors"
    ).read_bytes()

    space = built.space
    classes = sorted(p.name for p in (ROOT / "trashnet_hf" / "sample").iterdir() if p.is_dir())
    assert {"app.py", "requirements.txt", "README.md", "model_id.txt", "trashnet_hf/__init__.py"} <= _files(
        space
    )
    assert sorted(p.stem for p in (space / "examples").glob("*.jpg")) == classes
    assert not (space / "trashnet_hf" / "sample").exists() and not list(space.rglob("__pycache__"))
    assert (space / "app.py").read_bytes() == (ROOT / "app.py").read_bytes()
    assert (space / "model_id.txt").read_text().strip() == "alice/trashnet/model.onnx"  # served without torch
    pins = dict(
        line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line
    )
    space_pins = dict(line.split("==") for line in (space / "requirements.txt").read_text().splitlines())
    assert space_pins and all(pins[name] == version for name, version in space_pins.items())
    front = SpaceCard.load(space / "README.md").data
    assert (front.sdk, front.sdk_version, front.app_file) == ("gradio", pins["gradio"], "app.py")
    assert front.models == ["alice/trashnet"] and front.title and front.emoji
    assert "PRO" in (space / "README.md").read_text()

    log = caplog.text
    assert "PRO" in log and "Dry run: nothing uploaded" in log
    assert "model.safetensors" in log and "examples/glass.jpg" in log  # the file lists


def test_rebuild_replaces_only_an_unchanged_previous_build(run_dir: Path) -> None:
    args = PublishArgs(str(run_dir), "alice/trashnet", "alice/demo", dry_run=True)
    publish.publish(args)
    publish.publish(args)  # our own, unchanged: replaced
    readme = run_dir / "publish" / "model" / "README.md"
    readme.write_text(readme.read_text() + "\nA hand-written note.\n")
    with pytest.raises(UserError, match=r"added or edited since the last build \(model/README\.md\)"):
        publish.publish(args)
    assert "hand-written" in readme.read_text()

    shutil.rmtree(run_dir / "publish")
    (run_dir / "publish").mkdir()
    (run_dir / "publish" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"not built by trashnet_hf\.publish"):
        publish.publish(args)
    assert (run_dir / "publish" / "notes.txt").read_text() == "mine"


def test_pipeline_loads_the_dry_run_folder_like_the_run_s_model(run_dir: Path) -> None:
    from PIL import Image
    from transformers import pipeline

    built = publish.publish(PublishArgs(str(run_dir), "alice/trashnet", dry_run=True))
    images = [Image.open(p) for p in sorted((ROOT / "trashnet_hf" / "sample").glob("*/*1.jpg"))]
    published = pipeline("image-classification", model=str(built.model))(images)
    original = pipeline("image-classification", model=str(run_dir / "model"))(images)
    assert [r[0]["label"] for r in published] == [r[0]["label"] for r in original]
    assert [r[0]["score"] for r in published] == pytest.approx([r[0]["score"] for r in original], abs=1e-6)


def _space_import_probe() -> str:
    """Code run inside the Space folder: import app.py, then report where the package came from, sys.path,
    and the files of the project modules now loaded (app.py's own imports)."""
    return (
        "import json, sys\n"
        "import app\n"
        "import trashnet_hf\n"
        "files = [m.__file__ for k, m in sys.modules.items() if k == 'app' or k.startswith('trashnet_hf.')]\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'transformers', 'timm') if m in sys.modules)\n"
        "found = {'package': trashnet_hf.__file__, 'path': sys.path, 'files': files, 'heavy': heavy}\n"
        "print(json.dumps(found))\n"
    )


def _third_party_imports(files: list[str]) -> set[str]:
    """Distributions that the module-level imports of ``files`` need (imports inside functions run only
    when called; optional integrations of other libraries are their business)."""
    from importlib import metadata

    tops = set()
    for file in files:
        for node in ast.parse(Path(file).read_text()).body:
            if isinstance(node, ast.Import):
                tops |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops.add(node.module.split(".")[0])
    tops -= {*sys.stdlib_module_names, "trashnet_hf", "__future__"}
    dists = metadata.packages_distributions()
    return {d for t in tops for d in dists.get(t, [t])}


def _closure(requirements: list[str]) -> set[str]:
    """The distributions ``requirements`` install, with their dependencies (no extras), normalised."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [Requirement(r).name for r in requirements]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in map(Requirement, requires):
            if spec.marker is None or spec.marker.evaluate({"extra": ""}):
                todo.append(spec.name)
    return seen


@pytest.mark.slow  # imports torch, transformers and gradio in a fresh interpreter
def test_space_folder_imports_on_its_own(run_dir: Path) -> None:
    from packaging.utils import canonicalize_name

    space = publish.publish(PublishArgs(str(run_dir), "alice/trashnet", "alice/demo", dry_run=True)).space
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"}
    # cwd = the Space folder: `python -c` puts it first on sys.path, as running app.py there would.
    proc = subprocess.run(
        [sys.executable, "-c", _space_import_probe()], cwd=space, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).resolve().is_relative_to(space.resolve())
    assert all(Path(f).resolve().is_relative_to(space.resolve()) for f in found["files"])
    assert not [p for p in found["path"] if p and Path(p).resolve() == ROOT]
    # Every distribution app.py and the package modules it loads import is installed by the Space's
    # requirements (with their dependencies) or is gradio (the Space's SDK).
    wanted = [*(space / "requirements.txt").read_text().split(), "gradio"]
    needed = {canonicalize_name(d) for d in _third_party_imports(found["files"])}
    missing = needed - _closure(wanted)
    assert not missing, f"app.py imports packages the Space does not install: {sorted(missing)}"
    # The Space serves model.onnx: importing the app loads no deep-learning stack, and the one package
    # the ONNX model needs at load time (imported there, so not seen above) is installed.
    assert found["heavy"] == [], found["heavy"]
    assert "onnxruntime" in {canonicalize_name(r.split("==")[0]) for r in wanted}


def test_space_only_builds_without_a_run_or_torch(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom trashnet_hf.hub import publish\n"
        f"rc = publish.main([{str(tmp_path / 'build')!r}, '--space-only', '--model-repo', 'alice/m', "
        "'--space-repo', 'alice/demo', '--dry-run'])\n"
        "assert rc == 0, rc\nassert 'torch' not in sys.modules, 'publish imported torch'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "build" / "publish" / "space" / "app.py").is_file()
    assert not (tmp_path / "build" / "publish" / "model").exists()


# --- The push ---------------------------------------------------------------------------------------


def test_push_creates_each_repo_and_uploads_each_folder_in_one_commit(run_dir: Path, api, can_push) -> None:
    args = PublishArgs(str(run_dir), "alice/trashnet", "alice/demo", private=True)
    built = publish.publish(args, api)
    assert api.create_repo.call_count == 2 and api.upload_folder.call_count == 2
    model_call, space_call = api.create_repo.call_args_list
    assert model_call.args == ("alice/trashnet",)
    assert model_call.kwargs == {"repo_type": "model", "private": True, "exist_ok": True}
    assert space_call.args == ("alice/demo",)
    assert space_call.kwargs == {
        "repo_type": "space",
        "private": True,
        "exist_ok": True,
        "space_sdk": "gradio",
    }
    model_upload, space_upload = (c.kwargs for c in api.upload_folder.call_args_list)
    assert (model_upload["repo_id"], model_upload["folder_path"], model_upload["repo_type"]) == (
        "alice/trashnet", built.model, "model",
    )  # fmt: skip
    assert (space_upload["repo_id"], space_upload["folder_path"], space_upload["repo_type"]) == (
        "alice/demo", built.space, "space",
    )  # fmt: skip
    assert model_upload["commit_message"] and space_upload["commit_message"]


def test_push_without_a_token_fails_before_building(
    run_dir: Path, api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(publish, "get_token", lambda: None)  # no saved login either
    with pytest.raises(UserError, match=r"hf auth login.*HF_TOKEN.*--dry-run"):
        publish.publish(PublishArgs(str(run_dir), "alice/trashnet"), api)
    assert not (run_dir / "publish").exists() and not api.method_calls
    # Offline with a token: the same, in seconds, naming what to do.
    monkeypatch.setattr(publish, "get_token", lambda: FAKE_TOKEN)
    with pytest.raises(hub.HubUnavailableError, match="--dry-run"):
        publish.publish(PublishArgs(str(run_dir), "alice/trashnet"), api)


def _http_error(status: int) -> HfHubHTTPError:
    request = httpx2.Request("POST", "https://huggingface.co/api/models/alice/trashnet/commit/main")
    return HfHubHTTPError(f"{status} error", response=httpx2.Response(status, request=request))


def test_a_failed_upload_is_retried_then_reported(run_dir: Path, api, can_push) -> None:
    api.upload_folder.side_effect = [_http_error(503), None]
    publish.publish(PublishArgs(str(run_dir), "alice/trashnet"), api)
    assert api.upload_folder.call_count == 2

    api.upload_folder.reset_mock()
    api.upload_folder.side_effect = _http_error(502)
    with pytest.raises(
        UserError, match=r"Uploading .* to model repo alice/trashnet failed after 3 attempt.*stay in"
    ):
        publish.publish(PublishArgs(str(run_dir), "alice/trashnet"), api)
    assert api.upload_folder.call_count == publish.UPLOAD_TRIES
    assert (run_dir / "publish" / "model" / "model.safetensors").is_file()  # the build stays on disk

    api.upload_folder.reset_mock()
    api.upload_folder.side_effect = _http_error(403)  # a refusal is not retried
    with pytest.raises(UserError, match="after 1 attempt"):
        publish.publish(PublishArgs(str(run_dir), "alice/trashnet"), api)
    assert api.upload_folder.call_count == 1


def _assert_token_nowhere(folder: Path, log: str) -> None:
    assert FAKE_TOKEN not in log
    leaks = [p for p in folder.rglob("*") if p.is_file() and FAKE_TOKEN.encode() in p.read_bytes()]
    assert not leaks, f"the token was written to {leaks}"


def test_the_token_is_never_written_or_logged(
    run_dir: Path, api, can_push, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    publish.publish(PublishArgs(str(run_dir), "alice/trashnet", "alice/demo"), api)
    _assert_token_nowhere(run_dir, caplog.text + "".join(capfd.readouterr()))
    assert all(FAKE_TOKEN not in repr(c) for c in api.method_calls)  # HfApi finds the token itself


@pytest.mark.slow
def test_train_push_to_hub_checks_first_and_publishes_after(
    tmp_path: Path, api, can_push, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capfd
) -> None:
    from tests.conftest import make_learnable_folder
    from tests.test_cli import train_main

    monkeypatch.setattr(publish, "HfApi", lambda: api)
    out = tmp_path / "out"
    argv = [
        *HASH_ONLY, "--data-dir", str(make_learnable_folder(tmp_path / "data", per_class=8)),
        "--output-dir", str(out),
        "--cache-dir", str(tmp_path / "cache"), "--model-name", "test_resnet", "--pretrained", "false",
        "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--report-to", "wandb",
        "--push-to-hub", "--hub-model-id", "alice/trashnet", "--hub-space-id", "alice/demo",
    ]  # fmt: skip
    caplog.set_level("DEBUG")
    assert train_main()(argv) == 0
    assert [c.args[0] for c in api.create_repo.call_args_list] == ["alice/trashnet", "alice/demo"]
    assert (out / "publish" / "model" / "README.md").is_file()
    _assert_token_nowhere(tmp_path, caplog.text + "".join(capfd.readouterr()))  # results, card, W&B files

    # No token: refused in seconds, before any training output exists.
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(publish, "get_token", lambda: None)
    i = argv.index("--output-dir") + 1
    assert train_main()([*argv[:i], str(tmp_path / "out2"), *argv[i + 1 :]]) == 1
    assert not (tmp_path / "out2").exists()


# --- Nothing local or secret is published (issue 16, case 4) ------------------------------------------


PLANTED = {
    "HF_TOKEN": "hf_plantedHF0123456789abcdefTOKEN",
    "WANDB_API_KEY": "plantedWANDB0123456789abcdefKEY",
}


def _hits(folder: Path, needles: list[str]) -> list[str]:
    """``file: needle`` for every file under ``folder`` (read as bytes) holding a needle."""
    return [
        f"{p.relative_to(folder)}: {n}"
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        for n in needles
        if n.encode() in p.read_bytes()
    ]


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _plant_paths(run_dir: Path) -> Path:
    """Fill results.json with every kind of path a real data report holds, under the run's own folders;
    return the data folder."""
    results = _results(run_dir)
    data, out = Path(results["config"]["data_dir"]), Path(results["config"]["output_dir"])
    report = results["data_report"]
    report["bad_files"] = [{"path": str(data / "beta" / "broken.jpg"), "reason": "cannot identify image"}]
    report["skipped_files"] = [str(data / "alpha" / "notes.txt")]
    report["label_conflicts"] = [[str(data / "alpha" / "alpha0.jpg"), str(data / "beta" / "beta3.jpg")]]
    members = [str(data / "gamma" / f"gamma{i}.jpg") for i in (1, 2)]
    report["groups"] = [{"group": 0, "size": 2, "split": "train", "paths": members}]
    report["warnings"] = [f"1 file(s) were skipped (e.g. {data / 'alpha' / 'notes.txt'}); see skipped_files."]
    results["config"]["resume_from_checkpoint"] = str(out / "checkpoints" / "step-4")
    results["a_field_added_later"] = {"log": str(out / "later.log")}  # no rule knows this key
    _write_results(run_dir, results)
    return data


def test_published_files_hold_no_local_path_or_secret(
    run_dir: Path, trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    data = _plant_paths(run_dir)
    built = publish.publish(PublishArgs(str(run_dir), "alice/trashnet", "alice/demo", dry_run=True))

    # The session's training run sits under its own temporary folder; this copy under tmp_path.
    local = {str(trained_run.parent), str(trained_run.parent.resolve()), str(run_dir), str(Path.home())}
    assert not _hits(run_dir / "publish", [*local, *PLANTED.values()])
    published = json.loads((built.model / "results.json").read_text())
    assert not [s for s in _strings(published) if s.startswith("/")]
    # Paths are kept relative to the data folder, folders by name only: nothing was simply dropped.
    config, report = published["config"], published["data_report"]
    assert (config["data_dir"], config["output_dir"], report["source"]) == ("data", "out", "data")
    assert config["resume_from_checkpoint"] == "step-4"  # a folder the config names: by its name
    assert report["bad_files"] == [{"path": "beta/broken.jpg", "reason": "cannot identify image"}]
    assert report["skipped_files"] == ["alpha/notes.txt"]
    assert report["label_conflicts"] == [["alpha/alpha0.jpg", "beta/beta3.jpg"]]
    assert report["groups"][0]["paths"] == ["gamma/gamma1.jpg", "gamma/gamma2.jpg"]
    assert report["warnings"] == ["1 file(s) were skipped (e.g. alpha/notes.txt); see skipped_files."]
    assert published["a_field_added_later"] == {"log": "later.log"}
    assert published["metrics"] == _results(run_dir)["metrics"]
    assert data.name == "data"
    assert "`alpha/alpha0.jpg` = `beta/beta3.jpg`" in (built.model / "README.md").read_text()


def test_a_path_or_secret_that_cannot_be_made_relative_is_refused(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = PublishArgs(str(run_dir), "alice/trashnet", "alice/demo", dry_run=True)
    publish.publish(args)
    before = _snapshot(run_dir / "publish")
    results = _results(run_dir)
    results["data_report"]["new_field"] = [{"file": "/opt/elsewhere/photo.jpg"}]
    _write_results(run_dir, results)
    refused = (
        r"model/results\.json: data_report\.new_field\[0\]\.file would publish the absolute path "
        r"/opt/elsewhere/photo\.jpg; nothing was published"
    )
    with pytest.raises(UserError, match=refused):
        publish.publish(args)
    assert _snapshot(run_dir / "publish") == before  # the previous build stands
    assert not list(run_dir.glob(".publish-*"))

    monkeypatch.setenv("HF_TOKEN", PLANTED["HF_TOKEN"])
    results["data_report"]["new_field"] = []
    results["config"]["run_name"] = f"run {PLANTED['HF_TOKEN']}"
    _write_results(run_dir, results)
    capsys.readouterr()
    assert publish.main([str(run_dir), "--model-repo", "alice/trashnet", "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert "config.run_name would publish the value of $HF_TOKEN" in err and len(err.splitlines()) == 1
    assert PLANTED["HF_TOKEN"] not in err
    assert _snapshot(run_dir / "publish") == before


@pytest.mark.slow  # trains a tiny model
def test_a_real_run_under_a_secret_path_publishes_none_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data, extra data, output and cache folders all under one unique folder, the tokens set while
    training and publishing: no published file, binary or text, holds the folder or a token."""
    from tests.conftest import make_learnable_folder, photo
    from trashnet_hf.core.config import TrainConfig
    from trashnet_hf.training.loop import train

    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    secret = tmp_path / f"zz-secret-path-{uuid.uuid4().hex}"
    data = make_learnable_folder(secret / "data", per_class=10)
    (data / "alpha" / "notes.txt").write_text("not an image")  # skipped, with a warning
    (data / "beta" / "broken.jpg").write_bytes(b"not a jpeg")  # a bad file
    shutil.copy(data / "alpha" / "alpha0.jpg", data / "beta" / "copy_of_alpha0.jpg")  # a label conflict
    shutil.copy(data / "gamma" / "gamma1.jpg", data / "gamma" / "gamma1_again.jpg")  # a group
    (secret / "extra" / "alpha").mkdir(parents=True)
    photo(777, (64, 48)).save(secret / "extra" / "alpha" / "new.jpg")
    cfg = TrainConfig(
        data_dir=str(data), extra_data_dir=str(secret / "extra"), output_dir=str(secret / "out"),
        cache_dir=str(secret / "cache"), model_name="test_resnet", pretrained=False, image_size=32, epochs=1,
        batch_size=8, eval_batch_size=16, warmup_ratio=0.0, patience=0, report_to="none",
        near_duplicate_threshold=0,  # HASH_ONLY
    )  # fmt: skip
    assert train(cfg).status == "completed"
    raw = (secret / "out" / "results.json").read_text()
    assert raw.count(str(secret)) >= 8  # the run really records its paths: bad, skipped, conflicts, ...

    publish.publish(PublishArgs(str(secret / "out"), "alice/trashnet", "alice/demo", dry_run=True))
    assert not _hits(secret / "out" / "publish", [secret.name, *PLANTED.values()])
    report = json.loads((secret / "out" / "publish" / "model" / "results.json").read_text())["data_report"]
    assert report["skipped_files"] == ["alpha/notes.txt"] and report["extra_data"]["dir"] == "extra"
    assert report["bad_files"][0]["path"] == "beta/broken.jpg"
    assert sorted(report["label_conflicts"][0]) == ["alpha/alpha0.jpg", "beta/copy_of_alpha0.jpg"]


# --- Publish builds aside and swaps in (issue 16, cases 5d, 5e and 7d) --------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_files_a_user_put_under_pycache_are_refused_never_deleted(run_dir: Path) -> None:
    args = PublishArgs(str(run_dir), "alice/trashnet", "alice/demo", dry_run=True)
    space = publish.publish(args).space
    # Byte code Python wrote for a module of the build (running app.py there): regenerated, so replaced.
    (space / "__pycache__").mkdir()
    (space / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"byte code")
    publish.publish(args)
    assert not (space / "__pycache__").exists()

    mine = space / "trashnet_hf" / "__pycache__" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("my notes")
    (mine.parent / "elsewhere.cpython-311.pyc").write_bytes(b"not from a module of the build")
    with pytest.raises(
        UserError,
        match=r"2 file\(s\) added or edited since the last build \(space/trashnet_hf/__pycache__/"
        r"elsewhere\.cpython-311\.pyc, space/trashnet_hf/__pycache__/notes\.txt\)",
    ):
        publish.publish(args)
    assert mine.read_text() == "my notes" and (mine.parent / "elsewhere.cpython-311.pyc").is_file()


def test_a_build_that_fails_halfway_leaves_the_previous_one(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = PublishArgs(str(run_dir), "alice/trashnet", "alice/demo", dry_run=True)
    publish.publish(args)
    before = _snapshot(run_dir / "publish")
    results = _results(run_dir)
    results["config"]["seed"] = 7  # so that the next build differs from the previous one
    _write_results(run_dir, results)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(publish, "write_examples", disk_full)  # the model folder is built by then
    with pytest.raises(OSError, match="No space left"):
        publish.publish(args)
    assert _snapshot(run_dir / "publish") == before
    assert not list(run_dir.glob(".publish-*"))  # the half-built folder is gone

    monkeypatch.undo()
    built = publish.publish(args)  # and the next run works
    assert json.loads((built.model / "results.json").read_text())["config"]["seed"] == 7
    assert (built.space / "examples" / "CREDITS.md").is_file()
    assert not list(run_dir.glob(".publish-*"))


@pytest.mark.parametrize(
    "marker",
    [b"{not json", b"\xff\xfe", b"[]", b"{}", b'{"built_by": "trashnet_hf.publish"}',
     b'{"built_by": "trashnet_hf.publish", "files": ["model/README.md"]}'],
)  # fmt: skip
def test_a_damaged_build_marker_is_one_line(
    run_dir: Path, marker: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(run_dir), "--model-repo", "alice/trashnet", "--dry-run"]
    assert publish.main(args) == 0
    path = run_dir / "publish" / publish.MARKER
    path.write_bytes(marker)
    before = _snapshot(run_dir / "publish")
    capsys.readouterr()
    assert publish.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{path}: damaged build marker" in err and "delete the folder, then run again" in err
    assert _snapshot(run_dir / "publish") == before


# --- Requirement pins and retries by the libraries' rules (issue 17) ----------------------------------


def test_requirement_pins_are_read_with_packaging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publish, "PROJECT", tmp_path)
    (tmp_path / "requirements.txt").write_text(
        "# pins\n--index-url https://example.org/simple\n-r dev.txt\n"
        "Pillow == 12.3.0  # spaced, and PyPI's spelling\n"
        "huggingface-hub==2.4.0\n"
        "numpy>=2,<3\n"
        "torch==2.14.1+cpu ; sys_platform == 'linux'\n"
    )
    assert publish._pins(("pillow", "huggingface_hub", "torch")) == {
        "pillow": "12.3.0", "huggingface_hub": "2.4.0", "torch": "2.14.1+cpu",
    }  # fmt: skip
    with pytest.raises(UserError, match=r"pins no version of numpy"):  # a range is not a pin
        publish._pins(("numpy",))
    (tmp_path / "requirements.txt").write_text("pillow==12.3.0\nnot a requirement ==\n")
    with pytest.raises(UserError, match=r"requirements\.txt:2: not a requirement"):
        publish._pins(("pillow",))


def test_retries_follow_huggingface_hub_backoff_rules(run_dir: Path, api, can_push) -> None:
    from huggingface_hub.utils import _http

    assert set(_http._DEFAULT_RETRY_ON_STATUS_CODES) == publish.TRANSIENT_STATUS
    assert set(publish.TRANSIENT_ERRORS) == set(_http._DEFAULT_RETRY_ON_EXCEPTIONS)
    api.upload_folder.side_effect = [_http_error(408), None]  # a timeout answer: tried again
    publish.publish(PublishArgs(str(run_dir), "alice/trashnet"), api)
    assert api.upload_folder.call_count == 2
    api.upload_folder.reset_mock()
    api.upload_folder.side_effect = httpx2.UnsupportedProtocol("Request URL has an unsupported protocol")
    with pytest.raises(UserError, match="after 1 attempt"):  # a misconfiguration, not a hiccup
        publish.publish(PublishArgs(str(run_dir), "alice/trashnet"), api)
