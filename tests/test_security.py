"""Security review as tests: safe deserialisation, no shell, ids confined to their folder, the MLflow
UI on loopback, and no secret in a tracked run."""

from __future__ import annotations

import ast
import logging
import random
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch

from mmaudio import tracking
from mmaudio.config import ConfigError, load_params
from mmaudio.features import FeatureSet, FeatureSetError, feature_shapes, write_feature_set
from mmaudio.media_index import VIDEO_SUFFIXES, resolve_media
from mmaudio.partition import AUDIO_SUFFIXES
from mmaudio.tables import TableError, check_id
from mmaudio.tracking import StageRun, redact_credentials

REPO = Path(__file__).resolve().parents[1]


def python_files(*folders: str) -> Iterator[Path]:
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            if "__pycache__" not in path.parts:
                yield path


# -- torch.load only with weights_only=True ---------------------------------------------------------------


def _import_aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted module path, from every import in the file (``import torch as th``,
    ``from torch import load``, ``from torch.serialization import load as l``)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``th.serialization.load`` -> ``torch.serialization.load`` (None if not a plain name chain)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


TORCH_LOADS = {"torch.load", "torch.serialization.load"}


def unsafe_torch_loads(source: str, filename: str) -> list[str]:
    """Every torch.load call in ``source`` that does not pass ``weights_only=True`` literally."""
    tree = ast.parse(source, filename=filename)
    aliases = _import_aliases(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _dotted(node.func, aliases) in TORCH_LOADS:
            kw = {k.arg: k.value for k in node.keywords}
            value = kw.get("weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_torch_load_scanner_sees_calls_not_comments():
    # the sample source holds unsafe calls on purpose; it is a .txt so no scan of the repo's code sees it
    source = "\n" + (REPO / "tests" / "fixtures" / "security" / "torch_loads.txt").read_text()
    found = unsafe_torch_loads(source, "x.py")
    assert [f.split(":")[1] for f in found] == ["10", "11", "12", "13"], found


def test_every_torch_load_is_weights_only():
    files = list(python_files("mmaudio", "stages", "bench", "tests"))
    assert len(files) > 50 and REPO / "mmaudio" / "weights" / "io.py" in files
    unsafe = [hit for f in files for hit in unsafe_torch_loads(f.read_text(), str(f.relative_to(REPO)))]
    assert unsafe == []


# -- no shell ------------------------------------------------------------------------------------------


SHELL_ALWAYS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput", "asyncio.create_subprocess_shell"}
SUBPROCESS = {"subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output", "subprocess.Popen"}


def shell_calls(source: str, filename: str) -> list[str]:
    """Calls that run a shell: os.system & co, ``shell=`` anything but a literal False, or a
    command given as one string (a literal, f-string, concatenation, % or .format)."""
    tree = ast.parse(source, filename=filename)
    aliases = _import_aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        where = f"{filename}:{node.lineno}: {ast.unparse(node)}"
        if name in SHELL_ALWAYS:
            found.append(where)
        elif name in SUBPROCESS:
            kw = {k.arg: k.value for k in node.keywords}
            shell = kw.get("shell")
            cmd = node.args[0] if node.args else kw.get("args")
            string_cmd = isinstance(cmd, (ast.JoinedStr, ast.BinOp)) or (
                isinstance(cmd, ast.Constant) and isinstance(cmd.value, str)
            ) or (isinstance(cmd, ast.Call) and isinstance(cmd.func, ast.Attribute) and cmd.func.attr in ("format", "join"))
            if (shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False)) or string_cmd or None in kw:
                found.append(where)
    return found


def test_shell_scanner_flags_shell_strings():
    source = '''
import os, subprocess
from subprocess import run as go
subprocess.run(["git", "status"], check=False)
subprocess.run(["git", f"--work-tree={d}"])
subprocess.run("git status", shell=True)
subprocess.check_output(f"ls {folder}")
go("rm -rf " + path)
os.system("touch x")
subprocess.Popen(cmd, shell=flag)
subprocess.call(" ".join(parts))
'''
    found = shell_calls(source, "x.py")
    assert [f.split(":")[1] for f in found] == ["6", "7", "8", "9", "10", "11"], found


def test_no_shell_in_library_or_stages():
    files = list(python_files("mmaudio", "stages"))
    assert REPO / "mmaudio" / "tracking.py" in files  # the one module that runs a program (git)
    assert [hit for f in files for hit in shell_calls(f.read_text(), str(f.relative_to(REPO)))] == []


# -- ids never leave their folder -------------------------------------------------------------------------------


_PIECES = [
    "..", ".", "/", "\\", "\x00", "\n", "\t", " ", "~", "%2e%2e%2f", "\u2215", "\uff0f", "\u202e", "a", "b_1",
    ".flac", ".mp4", "C:", "$HOME", "`id`", "$(id)", "*", "?", "\u2026", "\x7f", "é",
]
_CLASSICS = [
    "../etc/passwd", "/etc/passwd", "..\\..\\windows\\win.ini", "a/../../b", "....//", "./.", "..\x00", "~root",
    "", " ", "..", ".", "a/", "/", "\\\\server\\share", "x\r", "\u2028",
]


def adversarial_ids(n: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    ids = list(_CLASSICS)
    for _ in range(n):
        ids.append("".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 5))))
    return ids


def test_adversarial_ids_never_resolve_outside_the_folder(tmp_path):
    media = tmp_path / "media"
    (media / "sub").mkdir(parents=True)
    # Honeypots an escaping id could reach: one level up, at the root of tmp, and in a subfolder.
    for p in [tmp_path / "passwd.flac", tmp_path / "secret.mp4", media / "sub" / "x.flac", tmp_path / "a.flac"]:
        p.write_bytes(b"honeypot")
    (media / "a.flac").write_bytes(b"inside")
    accepted = refused = 0
    for mid in adversarial_ids():
        try:
            check_id(mid)
        except TableError:
            refused += 1
            for suffixes in (AUDIO_SUFFIXES, VIDEO_SUFFIXES):
                with pytest.raises(TableError):
                    resolve_media(media, mid, suffixes)
            continue
        accepted += 1
        # An accepted id is one path component: no separator, not '.' or '..', no control character.
        assert Path(mid).name == mid and mid not in (".", "..") and "/" not in mid and "\\" not in mid, repr(mid)
        assert (media / f"{mid}.flac").resolve().parent == media.resolve(), repr(mid)
        for suffixes in (AUDIO_SUFFIXES, VIDEO_SUFFIXES):
            try:
                found = resolve_media(media, mid, suffixes)
            except FileNotFoundError:
                continue
            assert found.resolve().parent == media.resolve(), repr(mid)
    assert accepted > 300 and refused > 1000, (accepted, refused)  # both sides are exercised
    assert resolve_media(media, "a", AUDIO_SUFFIXES) == media / "a.flac"


def test_feature_sets_write_nothing_named_after_ids(tmp_path):
    """Ids are stored as TSV cells, never used as paths: any id leaves the folder layout as is."""
    ids = adversarial_ids(n=60, seed=1)[:48]
    shapes = feature_shapes("16k", "audio")
    n = len(ids)
    tensors = {k: torch.zeros(n, *s) for k, s in shapes.items()}
    before = set(tmp_path.rglob("*"))
    out = write_feature_set(tmp_path / "sets" / "x", mode="16k", kind="audio", ids=ids, texts=["t"] * n, tensors=tensors)
    created = set(tmp_path.rglob("*")) - before
    assert all(out in p.parents or p in (out, out.parent) for p in created), sorted(map(str, created))
    names = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert names == {"td", "td/meta.json", *(f"td/{k}.memmap" for k in shapes), "samples.tsv", "rejects.tsv", "info.json"}
    # Reading refuses the unsafe ids by name instead of handing them on.
    with pytest.raises(FeatureSetError, match=r"samples\.tsv:\d+: .*id"):
        FeatureSet.open(out)
    safe = list(dict.fromkeys(i for i in adversarial_ids(n=400, seed=2) if _is_safe(i)))[:24]
    assert len(safe) == 24
    out2 = write_feature_set(
        tmp_path / "sets" / "y", mode="16k", kind="audio", ids=safe, texts=["t"] * len(safe),
        tensors={k: torch.zeros(len(safe), *s) for k, s in shapes.items()},
    )
    assert FeatureSet.open(out2).ids == safe


def _is_safe(mid: str) -> bool:
    try:
        check_id(mid)
    except TableError:
        return False
    return True


# -- MLflow UI / server on loopback --------------------------------------------------------------------------


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def readme_commands() -> list[list[str]]:
    """Every command line in README.md's shell code blocks, split at && ; | and into words."""
    text = (REPO / "README.md").read_text()
    commands = []
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    for block in [body for lang, body in blocks if lang in ("", "bash", "sh", "shell", "console")]:
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;|\|", line.split(" #")[0]):
                words = shlex.split(part)
                if words:
                    commands.append(words)
    return commands


def _host_of(words: list[str]) -> str | None:
    for i, w in enumerate(words):
        if w in ("--host", "-h") and i + 1 < len(words):
            return words[i + 1]
        if w.startswith("--host="):
            return w.split("=", 1)[1]
    return None


def test_readme_mlflow_ui_and_server_bind_to_loopback():
    mlflow_cmds = [w for w in readme_commands() if w[:1] == ["mlflow"] and w[1:2] in (["ui"], ["server"])]
    assert any(w[1] == "ui" for w in mlflow_cmds), "README documents no `mlflow ui` command"
    for words in mlflow_cmds:
        assert _host_of(words) in LOOPBACK, f"README: `{' '.join(words)}` must bind to 127.0.0.1 explicitly"
    assert "0.0.0.0" not in (REPO / "README.md").read_text()


# -- no secret in a tracked run -----------------------------------------------------------------------------------


def test_redact_credentials():
    assert redact_credentials("http://alice:pw@127.0.0.1:5000/") == "http://alice:***@127.0.0.1:5000/"
    assert redact_credentials("postgresql://u:p%40ss@db:5432/mlflow") == "postgresql://u:***@db:5432/mlflow"
    assert redact_credentials("https://ghp_abc123@github.com/o/r.git") == "https://***@github.com/o/r.git"
    assert redact_credentials("http://u:p@ss@host/x") == "http://u:***@host/x"
    for plain in ["sqlite:////tmp/mlflow.db", "s3://bucket/key", "http://host:5000/a@b", "me@example.org", "null"]:
        assert redact_credentials(plain) == plain


def test_stage_run_logs_no_secret(tmp_path, monkeypatch, caplog):
    secrets = {
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY",
        "MLFLOW_TRACKING_PASSWORD": "hunter2-tracking-pw",
        "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLESESSION",
    }
    uri_password, token = "uri-pass-0xDEADBEEF", "ghp_tokenEXAMPLE123"
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # The configured server is unreachable, so the run goes to a local store; the configured URI
    # (with its password) is still what the params carry.
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setattr(tracking, "resolve_tracking_uri", lambda configured: (store, False))
    # a password in params.yaml's tracking.uri is refused outright (the file is committed and copied
    # into dvc.lock), and the error does not repeat it
    with pytest.raises(ConfigError, match=r"key 'tracking\.uri' \(http://alice:\*\*\*@127\.0\.0\.1:1/\) carries credentials") as e:
        load_params([f"tracking.uri='http://alice:{uri_password}@127.0.0.1:1/'"])
    assert uri_password not in str(e.value)
    params = load_params()
    try:
        with caplog.at_level(logging.DEBUG):
            with StageRun("s", params, extra_params={"data.remote": f"https://{token}@github.com/o/data.git"}) as run:
                run.log_params({"backend": f"postgresql://bob:{uri_password}@db:5432/mlflow"})
                run.set_tags({"remote": f"https://{token}@github.com/o/r"})
        r = mlflow.MlflowClient(tracking_uri=store).get_run(run.run_id)
    finally:
        mlflow.set_tracking_uri(None)
    logged = {**r.data.params, **r.data.tags}
    assert r.data.params["tracking.uri"] == "null"
    assert r.data.params["data.remote"] == "https://***@github.com/o/data.git"
    assert r.data.params["backend"] == "postgresql://bob:***@db:5432/mlflow"
    assert r.data.tags["remote"] == "https://***@github.com/o/r"
    everything = "\n".join(f"{k}={v}" for k, v in logged.items()) + "\n" + caplog.text
    for secret in [*secrets.values(), uri_password, token]:
        assert secret not in everything
    assert not [k for k in logged if k in secrets or k.startswith(("AWS_", "MLFLOW_TRACKING_"))]
