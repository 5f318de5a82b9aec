"""The CLI's config file and error lines, as properties: any token round-trips, any error is one line."""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path

import grpc
from hypothesis import given
from hypothesis import strategies as st

from clients import config, errors
from clients.cli import one_line
from clients.cli_format import describe

TOKENS = st.text(st.characters(codec="utf-8"), min_size=1, max_size=80)


@given(token=TOKENS, target=st.text(st.characters(codec="utf-8"), max_size=30))
def test_any_token_round_trips_through_the_file(token: str, target: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sub" / "config.toml"
        if target:
            path.parent.mkdir(mode=0o700)
            path.write_text(f"llm_target = {config.toml_string(target)}\n", encoding="utf-8")
            path.chmod(0o600)
        config.save_token(path, token)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        values = config.read_file(path)
        assert values["token"] == token
        assert values.get("llm_target", "") == target  # other settings are kept
        loaded = config.load({"RMLLM_CONFIG": str(path)})
        assert loaded.token == token


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('token = "from-file"\nllm_target = "file:1"\nvault_target = "file:2"\ntls = true\n')
    path.chmod(0o600)
    env = {"RMLLM_CONFIG": str(path), "RMLLM_TARGET": "env:1"}
    settings = config.load(env, vault_target="flag:2")
    assert (settings.llm_target, settings.vault_target, settings.token) == ("env:1", "flag:2", "from-file")
    assert settings.tls and settings.tls_options() is not None
    assert "from-file" not in repr(settings)
    defaults = config.load({"RMLLM_CONFIG": str(tmp_path / "none.toml")})
    assert (defaults.llm_target, defaults.vault_target) == ("127.0.0.1:50051", "127.0.0.1:50052")
    assert defaults.tls_options() is None
    assert config.config_path({"XDG_CONFIG_HOME": "/x"}) == Path("/x/realmultillm/config.toml")


def test_broken_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("token = \n")
    path.chmod(0o600)
    try:
        config.read_file(path)
    except config.ConfigError as exc:
        assert "is not valid TOML" in str(exc) and "fix or delete it" in str(exc)
    else:
        raise AssertionError("a broken file was accepted")


CLASSES = [
    cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.RmllmClientError)
]


@given(
    cls=st.sampled_from(CLASSES),
    message=st.text(max_size=200),
    provider=st.one_of(st.none(), st.text(max_size=20)),
    retry=st.one_of(st.none(), st.floats(min_value=0, max_value=1e6)),
)
def test_every_error_is_one_printable_line(
    cls: type[errors.RmllmClientError], message: str, provider: str | None, retry: float | None
) -> None:
    error = cls(
        message,
        metadata={"provider": provider} if provider else {},
        retry_after=retry,
        service="LLM service",
        target="127.0.0.1:1",
    )
    line = one_line(describe(error, "openai"))
    assert line and "\n" not in line and "\r" not in line
    assert line.isprintable()


def test_unknown_code_still_describes() -> None:
    error = errors.RmllmClientError("odd", code=grpc.StatusCode.DATA_LOSS, reason="DATA_LOSS")
    assert describe(error) == "the service answered DATA_LOSS (DATA_LOSS): odd"
